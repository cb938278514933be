"""/v1/events — the logged facts every grade is derived from."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from app.api import idempotency, present, threads
from app.api import schemas as s
from app.api.bodies import json_items, media_type, validate_item
from app.api.deps import Context, ContextDep, Reader, Writer
from app.api.problems import AUTHENTICATED, problem_responses, with_headers
from app.api.gate import Gated
from app.domain.rulebook import Rulebook
from app.domain.validation import with_defaults
from app.errors import MAX_LISTED, FieldError
from app.services import batch as batch_svc
from app.services import events as svc
from app.services.event_queries import list_events

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=Gated, responses=AUTHENTICATED)


def _recorded(event, retraction, effects, status: int) -> Response:  # noqa: ANN001
    # Validated once, as the answer: not as an EventOut first and then again from its dump.
    out = present.recorded_event(event, retraction, [e.as_dict() for e in effects])
    return present.answer(out, status_code=status, headers={"Location": f"/v1/events/{event.id}"})


# The routes that take an Idempotency-Key read it from the request (`idempotency.key_of`),
# and the single event POST its context too: the busiest route, where FastAPI's resolving of
# a header parameter and of the context dependency was 3.2 % of its instructions.
KEYED = {"parameters": [idempotency.HEADER_PARAMETER]}


@router.post(
    "",
    status_code=201,
    response_model=s.EventRecordedOut,
    responses={
        201: with_headers("Location"),
        200: with_headers("Location", model=s.EventRecordedOut, description="the same source + external_id was recorded before: that event, nothing counted twice"),
        **problem_responses(400, 409, 413),
    },
    openapi_extra=KEYED,
)
def record_event(body: s.EventIn, request: Request, caller: Writer) -> Response:
    """Log an event. It is validated against the rulebook's catalogue, stored, and the grades it
    touches are re-computed in the same transaction; `effects` lists the grade changes."""
    ctx: Context = request.app.state.context
    idempotency_key = idempotency.key_of(request)

    def write(session: Session) -> Response:
        new = svc.NewEvent(**body.model_dump())
        recorded = svc.record_event(session, ctx.rulebook, new, actor=caller.actor, now=ctx.clock())
        retraction = None if recorded.created else svc.retraction_of(session, recorded.event.id)
        return _recorded(recorded.event, retraction, recorded.effects, 201 if recorded.created else 200)

    fp = partial(request_fingerprint, ctx.rulebook, body)
    return idempotency.run(ctx, caller, idempotency_key, fp, lambda keep: ctx.db.transaction(lambda session: keep(session, write(session))))


def request_fingerprint(rulebook: Rulebook, body: s.EventIn) -> str:
    """What makes two event POSTs one request for an Idempotency-Key: their bodies as
    parsed, with the type's attribute defaults filled in, so that `"with_manager": false`
    sent or left out is the same visit, as it is the same event stored."""
    parsed = body.model_dump(mode="json")
    parsed["attributes"] = with_defaults(rulebook, body.type, parsed["attributes"])
    return idempotency.fingerprint("POST", "/v1/events", parsed)


BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": f"up to {batch_svc.MAX_ITEMS} events (as for POST /v1/events, each with an `external_id`): a JSON array, or NDJSON (one event per line)",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}, "maxItems": batch_svc.MAX_ITEMS}},
            "application/x-ndjson": {"schema": {"type": "string", "description": "one EventIn JSON object per line"}},
        },
    }
}


@router.post(
    "/batch",
    response_model=s.BatchOut,
    openapi_extra={**BATCH_BODY, **KEYED},
    responses=problem_responses(409, 413, 415),
)
async def record_batch(
    request: Request,
    ctx: ContextDep,
    caller: Writer,
    atomic: Annotated[bool, Query(description="all or nothing: if any item is invalid, store none (422)")] = False,
) -> Response:
    """Log many events. Each item is validated and stored on its own and reported in input
    order as `created`, `duplicate` (its source + external_id was stored before, so a re-sent
    batch changes nothing) or `rejected` (with a problem). Grades are re-computed once per
    subject the batch touched, in the same transaction."""
    body = await request.body()  # at most max_batch_bytes: app/api/limits.py
    content_type = media_type(request)

    fp = partial(idempotency.fingerprint, "POST", f"/v1/events/batch?atomic={atomic}", [content_type, body])

    def read_then_record() -> Response:
        # The body is read before the Idempotency-Key is taken: one the server cannot read (a
        # media type it does not take, malformed JSON, no items, too many) is refused as
        # POST /v1/events refuses a body that fails validation, leaving the key free for the
        # corrected request.
        found = json_items(body, content_type, max_items=batch_svc.MAX_ITEMS)

        # The answer (up to 10,000 results) is encoded after the commit, not while holding
        # the write transaction, so it is not kept in that transaction: run stores it after.
        def work(_keep: idempotency.Keep) -> Response:
            items = [_new_event(validate_item(s.EventIn, item), item) for item in found]
            outcome = ctx.db.transaction(lambda session: batch_svc.record_batch(session, ctx.rulebook, items, atomic=atomic, actor=caller.actor, now=ctx.clock()))
            out = s.BatchOut(
                created=outcome.count("created"),
                duplicate=outcome.count("duplicate"),
                rejected=outcome.count("rejected"),
                results=[_item_out(r) for r in outcome.results],
                effects=[e.as_dict() for e in outcome.effects],
            )
            return present.answer(out, exclude_none=True)  # pydantic encodes it: up to 10,000 results

        return idempotency.run(ctx, caller, idempotency.key_of(request), fp, work)

    return await threads.run_batch(ctx.settings, read_then_record)


def _new_event(item: s.EventIn | list[FieldError], raw: Any) -> batch_svc.Item:
    if isinstance(item, list):
        # An item the schema refused is not checked further; its missing external_id is
        # said all the same, or a caller fixed the rest and learnt of it on the next try.
        if isinstance(raw, dict) and raw.get("external_id") is None and len(item) < MAX_LISTED and all(e.field != "external_id" for e in item):
            return [*item, batch_svc.EXTERNAL_ID_REQUIRED]
        return item
    return svc.NewEvent(**item.model_dump())


def _item_out(result: batch_svc.ItemResult) -> s.BatchItemOut:
    problem = None
    if result.errors:
        problem = s.ItemProblemOut(
            type="urn:rapport:problem:validation",
            title="The item is not valid",
            status=422,
            detail=f"item {result.index} was not recorded",
            errors=[{"field": e.field, "reason": e.reason} for e in result.errors],
        )
    return s.BatchItemOut(index=result.index, status=result.status, id=result.event_id, problem=problem)


@router.get("", response_model=s.EventPage)
async def get_events(
    ctx: ContextDep,
    caller: Reader,
    customer_id: s.QueryId = None,
    project_id: s.QueryId = None,
    type: Annotated[s.QueryText | None, Query(max_length=64)] = None,
    occurred_from: Annotated[s.Bound | None, Query(alias="from", description="occurred_at ≥ this")] = None,
    occurred_to: Annotated[s.Bound | None, Query(alias="to", description="occurred_at < this")] = None,
    order: Literal["asc", "desc"] = "asc",
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """List events (retracted ones included, with their retraction), in recording order."""

    def read() -> Response:
        with ctx.db.session(write=False) as session:
            rows, next_cursor = list_events(
                session,
                customer_id=customer_id,
                project_id=project_id,
                type=type,
                occurred_from=occurred_from,
                occurred_to=occurred_to,
                descending=order == "desc",
                limit=limit,
                cursor=cursor,
            )
            return present.answer(s.EventPage(items=[present.event(e, r) for e, r in rows], next_cursor=next_cursor))

    return await threads.run_read(read)


@router.get("/{event_id}", response_model=s.EventOut, responses=problem_responses(404))
async def get_event(event_id: s.PathId, ctx: ContextDep, caller: Reader) -> s.EventOut:
    def read() -> s.EventOut:
        with ctx.db.session(write=False) as session:
            event = svc.get_event(session, event_id)
            return present.event(event, svc.retraction_of(session, event_id))

    return await threads.indexed_read(ctx.db, read)


@router.post("/{event_id}/retract", response_model=s.EventRecordedOut, responses={200: with_headers("Location"), **problem_responses(400, 404, 409, 413)}, openapi_extra=KEYED)
def retract_event(event_id: s.PathId, body: s.RetractIn, request: Request, ctx: ContextDep, caller: Writer) -> Response:
    """Retract an event: from now on it counts for nothing and the grades it touched are
    re-computed. Nothing is deleted. Retracting a retracted event changes nothing (200)."""

    def write(session: Session) -> Response:
        event, retraction, effects = svc.retract_event(session, ctx.rulebook, event_id, body.reason, actor=caller.actor, now=ctx.clock())
        return _recorded(event, retraction, effects, 200)

    fp = partial(idempotency.fingerprint, "POST", f"/v1/events/{event_id}/retract", body)
    return idempotency.run(ctx, caller, idempotency.key_of(request), fp, lambda keep: ctx.db.transaction(lambda session: keep(session, write(session))))
