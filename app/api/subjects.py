"""What the record routes of customers and projects share: read a record (by id or by the
ERP's code) and upsert one by the ERP's code, answered with its ETag; read its history."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import Context
from app.api.etags import etag, parse_if_match, parse_if_none_match
from app.api.present import Json, answer, history_page as present_history
from app.api.threads import run_read
from app.services.history import history_page
from app.services.records import Record

Present = Callable[[Session, Any], Json]
Put = Callable[..., tuple[Any, bool]]


async def read_row(ctx: Context, kind: str, read: Callable[[], Awaitable[tuple[Any, Json]]]) -> Response:
    """A customer or a project read by its id or code, presented, with its ETag: `read()`
    gives its row and its answer from one statement with no session around it, on the
    event loop (`records.read_alone`, `projects.read_with_participants`)."""
    row, presented = await read()
    return answer(presented, headers={"ETag": etag(kind, row.id, row.version)})


def upsert(ctx: Context, model: type[Record], ref: str, body: BaseModel, if_match: str | None, put: Put, present: Present, if_none_match: str | None = None) -> Response:
    """Create (201) or update (200); an If-Match for a record that does not exist is 412,
    and so is an If-None-Match (`*`, or the stored record's ETag) for one that does."""
    kind = model.__tablename__[:-1]
    none_match = parse_if_none_match(if_none_match, kind)

    def write(session: Session) -> Response:
        existing = session.scalar(select(model.id).where(model.external_ref == ref))
        version = parse_if_match(if_match, kind, existing) if existing is not None else (None if if_match is None else frozenset())
        row, created = put(session, ctx.rulebook, ref, body.model_dump(), if_match=version, now=ctx.clock(), if_none_match=none_match)
        headers = {"ETag": etag(kind, row.id, row.version), "Location": f"/v1/{model.__tablename__}/{row.id}"}
        return answer(present(session, row), status_code=201 if created else 200, headers=headers)

    return ctx.db.transaction(write)


async def read_history(ctx: Context, subject: str, subject_id: int, limit: int, cursor: str | None) -> Response:
    """A page of the grade changes of a customer or a project, on a read thread."""

    def read() -> Response:
        with ctx.db.session(write=False) as session:
            return answer(present_history(*history_page(session, subject, subject_id, limit=limit, cursor=cursor)))

    return await run_read(read)
