"""/v1/customers — owners and installers, with their relationship level."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session

from app.api import subjects
from app.api import schemas as s
from app.api.deps import Context, ContextDep, Reader, Writer
from app.api.problems import AUTHENTICATED, REF_WITH_LINE_BREAK, problem_responses, with_headers
from app.api.etags import IfMatch, IfNoneMatch, Precondition, etag, parse_if_match
from app.api.gate import Gated
from app.api.present import Json, answer
from app.api.threads import run_read
from app.db import models as m
from app.domain.rulebook import MAX_LEVEL
from app.services import customers as svc
from app.services.records import read_alone

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=Gated, responses=AUTHENTICATED)
CustomerIfMatch = Annotated[Precondition, Header(description="the ETag you read; 412 if the customer changed since")]


async def _read(ctx: Context, column: str, value: int | str) -> tuple[Any, Json]:
    """The customer whose `column` is `value`, and its answer: made of its own row."""
    row = await read_alone(ctx.db, m.Customer, column, value)
    return row, ctx.presenter.customer(row)


async def read_by_id(ctx: Context, customer_id: int) -> Response:
    """The answer to a GET of the customer with this id: the route's, and the direct reads'
    (app/api/direct.py)."""
    return await subjects.read_row(ctx, "customer", partial(_read, ctx, "id", customer_id))


@router.post("", status_code=201, response_model=s.CustomerOut, responses={201: with_headers("ETag", "Location"), **problem_responses(400, 409, 413)})
def create_customer(body: s.CustomerIn, ctx: ContextDep, caller: Writer) -> Response:
    """Create an owner (项目甲方) or installer (安装公司). It starts ungraded (level 0)."""

    def write(session: Session) -> Response:
        fields = body.model_dump(exclude_none=True)
        customer = svc.create_customer(session, ctx.rulebook, fields, now=ctx.clock())
        headers = {"ETag": etag("customer", customer.id, customer.version), "Location": f"/v1/customers/{customer.id}"}
        return answer(ctx.presenter.customer(customer), status_code=201, headers=headers)

    return ctx.db.transaction(write)


@router.get("", response_model=s.CustomerPage)
async def list_customers(
    ctx: ContextDep,
    caller: Reader,
    kind: Literal["owner", "installer"] | None = None,
    level: Annotated[int | None, Query(ge=0, le=MAX_LEVEL), s.WholeInDigits] = None,
    rep: Annotated[s.QueryText | None, Query(max_length=100)] = None,
    region: Annotated[s.QueryText | None, Query(max_length=100)] = None,
    q: Annotated[s.QueryText | None, Query(max_length=100, description="part of the name or external_ref")] = None,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """List customers, filtered, oldest first; follow `next_cursor` for more."""

    def read() -> Response:
        with ctx.db.session(write=False) as session:
            rows, next_cursor = svc.list_customers(session, kind=kind, level=level, rep=rep, region=region, q=q, limit=limit, cursor=cursor)
            return answer({"items": [ctx.presenter.customer(c) for c in rows], "next_cursor": next_cursor})  # s.CustomerPage

    return await run_read(read)


@router.get("/by-ref/{external_ref:path}", response_model=s.CustomerOut, responses={200: with_headers("ETag"), **problem_responses(404)})
async def get_customer_by_ref(external_ref: s.PathRef, ctx: ContextDep, caller: Reader) -> Response:
    """The customer with this external_ref (the ERP's code)."""
    return await subjects.read_row(ctx, "customer", partial(_read, ctx, "external_ref", external_ref))


@router.put(
    "/by-ref/{external_ref:path}",
    response_model=s.CustomerOut,
    responses={
        201: with_headers("ETag", "Location", model=s.CustomerOut, description="created"),
        200: with_headers("ETag", "Location", description="updated, or unchanged (same version)"),
        **problem_responses(400, 409, 412, 413),
        404: REF_WITH_LINE_BREAK,
    },
)
def put_customer(
    external_ref: s.PathRef,
    body: s.CustomerPut,
    ctx: ContextDep,
    caller: Writer,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Create (201) or update (200) the customer with this external_ref, so a nightly sync can be
    re-run safely: the body is the whole record; sending what is stored changes nothing."""
    return subjects.upsert(ctx, m.Customer, external_ref, body, if_match, svc.put_customer, lambda session, row: ctx.presenter.customer(row), if_none_match)


@router.get("/{customer_id}", response_model=s.CustomerOut, responses={200: with_headers("ETag"), **problem_responses(404)})
async def get_customer(customer_id: s.PathId, ctx: ContextDep, caller: Reader) -> Response:
    """The customer with its relationship level: every criterion, its evidence, and what is missing for the next level."""
    return await read_by_id(ctx, customer_id)


@router.patch("/{customer_id}", response_model=s.CustomerOut, responses={200: with_headers("ETag"), **problem_responses(400, 404, 409, 412, 413)})
def update_customer(
    customer_id: s.PathId,
    body: s.CustomerPatch,
    ctx: ContextDep,
    caller: Writer,
    if_match: CustomerIfMatch = None,
) -> Response:
    """Change descriptive fields. `kind` cannot change."""

    def write(session: Session) -> Response:
        customer = svc.update_customer(
            session, customer_id, body.model_dump(exclude_unset=True), if_match=parse_if_match(if_match, "customer", customer_id), now=ctx.clock()
        )
        return answer(ctx.presenter.customer(customer), headers={"ETag": etag("customer", customer.id, customer.version)})

    return ctx.db.transaction(write)


@router.get("/{customer_id}/history", response_model=s.HistoryPage, responses=problem_responses(404))
async def customer_history(
    customer_id: s.PathId,
    ctx: ContextDep,
    caller: Reader,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Every change of the customer's relationship level, oldest first, with its evidence and trigger."""
    return await subjects.read_history(ctx, "customer", customer_id, limit, cursor)
