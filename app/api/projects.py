"""/v1/projects — construction projects with their deal heat, bidders and winner."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

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
from app.services import projects as svc

router = APIRouter(prefix="/v1/projects", tags=["projects"], route_class=Gated, responses=AUTHENTICATED)
ProjectIfMatch = Annotated[Precondition, Header(description="the ETag you read; 412 if the project changed since")]


def _out(ctx: Context, session: Session, project: m.Project) -> Json:
    """The project as answered: with its bidders and winner, read in the same session."""
    return ctx.presenter.project(project, *svc.participants(session, project))


async def _read(ctx: Context, column: str, value: int | str) -> tuple[Any, Json]:
    """The project whose `column` is `value`, and its answer, from one statement."""
    row, (bidders, winner) = await svc.read_with_participants(ctx.db, column, value)
    return row, ctx.presenter.project(row, bidders, winner)


async def read_by_id(ctx: Context, project_id: int) -> Response:
    """The answer to a GET of the project with this id: the route's, and the direct reads'
    (app/api/direct.py)."""
    return await subjects.read_row(ctx, "project", partial(_read, ctx, "id", project_id))


@router.post("", status_code=201, response_model=s.ProjectOut, responses={201: with_headers("ETag", "Location"), **problem_responses(400, 409, 413)})
def create_project(body: s.ProjectIn, ctx: ContextDep, caller: Writer) -> Response:
    """Create a project of an `owner` customer. It starts cold (0 %)."""

    def write(session: Session) -> Response:
        project = svc.create_project(session, ctx.rulebook, body.model_dump(exclude_none=True), now=ctx.clock())
        headers = {"ETag": etag("project", project.id, project.version), "Location": f"/v1/projects/{project.id}"}
        return answer(ctx.presenter.project(project, [], None), status_code=201, headers=headers)

    return ctx.db.transaction(write)


@router.get("", response_model=s.ProjectPage)
async def list_projects(
    ctx: ContextDep,
    caller: Reader,
    owner_id: s.QueryId = None,
    heat: Annotated[int | None, Query(ge=0, le=100, description="exact percent: 0, 30, 50, 70, 90, 100"), s.WholeInDigits] = None,
    rep: Annotated[s.QueryText | None, Query(max_length=100)] = None,
    stage: Annotated[s.QueryText | None, Query(max_length=32)] = None,
    q: Annotated[s.QueryText | None, Query(max_length=100, description="part of the name")] = None,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """List projects, filtered, oldest first; follow `next_cursor` for more."""

    def read() -> Response:
        with ctx.db.session(write=False) as session:
            rows, next_cursor = svc.list_projects(session, owner_id=owner_id, heat=heat, rep=rep, stage=stage, q=q, limit=limit, cursor=cursor)
            participants = svc.participants_of(session, [p.id for p in rows])
            items = [ctx.presenter.project(p, *participants[p.id]) for p in rows]
            return answer({"items": items, "next_cursor": next_cursor})  # s.ProjectPage

    return await run_read(read)


@router.get("/by-ref/{external_ref:path}", response_model=s.ProjectOut, responses={200: with_headers("ETag"), **problem_responses(404)})
async def get_project_by_ref(external_ref: s.PathRef, ctx: ContextDep, caller: Reader) -> Response:
    """The project with this external_ref (the ERP's code)."""
    return await subjects.read_row(ctx, "project", partial(_read, ctx, "external_ref", external_ref))


@router.put(
    "/by-ref/{external_ref:path}",
    response_model=s.ProjectOut,
    responses={
        201: with_headers("ETag", "Location", model=s.ProjectOut, description="created"),
        200: with_headers("ETag", "Location", description="updated, or unchanged (same version)"),
        **problem_responses(400, 409, 412, 413),
        404: REF_WITH_LINE_BREAK,
    },
)
def put_project(
    external_ref: s.PathRef,
    body: s.ProjectPut,
    ctx: ContextDep,
    caller: Writer,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Create (201) or update (200) the project with this external_ref, so a nightly sync can be
    re-run safely: the body is the whole record; sending what is stored changes nothing."""
    return subjects.upsert(ctx, m.Project, external_ref, body, if_match, svc.put_project, lambda session, row: _out(ctx, session, row), if_none_match)


@router.get("/{project_id}", response_model=s.ProjectOut, responses={200: with_headers("ETag"), **problem_responses(404)})
async def get_project(project_id: s.PathId, ctx: ContextDep, caller: Reader) -> Response:
    """The project with its deal heat (criteria, evidence, what the next tier needs), its bidders and its winner."""
    return await read_by_id(ctx, project_id)


@router.patch("/{project_id}", response_model=s.ProjectOut, responses={200: with_headers("ETag"), **problem_responses(400, 404, 409, 412, 413)})
def update_project(
    project_id: s.PathId,
    body: s.ProjectPatch,
    ctx: ContextDep,
    caller: Writer,
    if_match: ProjectIfMatch = None,
) -> Response:
    """Change descriptive fields. The owner cannot change."""

    def write(session: Session) -> Response:
        project = svc.update_project(
            session, project_id, body.model_dump(exclude_unset=True), if_match=parse_if_match(if_match, "project", project_id), now=ctx.clock()
        )
        return answer(_out(ctx, session, project), headers={"ETag": etag("project", project.id, project.version)})

    return ctx.db.transaction(write)


@router.get("/{project_id}/history", response_model=s.HistoryPage, responses=problem_responses(404))
async def project_history(
    project_id: s.PathId,
    ctx: ContextDep,
    caller: Reader,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Every change of the project's deal heat, oldest first, with its evidence and trigger."""
    return await subjects.read_history(ctx, "project", project_id, limit, cursor)
