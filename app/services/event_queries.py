"""Reading the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.services.paging import page


def list_events(
    session: Session,
    *,
    customer_id: int | None,
    project_id: int | None,
    type: str | None,
    occurred_from: datetime | None,
    occurred_to: datetime | None,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[tuple[m.Event, m.Retraction | None]], str | None]:
    query = select(m.Event)
    if customer_id is not None:
        query = query.where(m.Event.customer_id == customer_id)
    if project_id is not None:
        query = query.where(m.Event.project_id == project_id)
    if type:
        query = query.where(m.Event.type == type)
    if occurred_from is not None:
        query = query.where(m.Event.occurred_at >= occurred_from)
    if occurred_to is not None:
        query = query.where(m.Event.occurred_at < occurred_to)
    events, next_cursor = page(session, query, m.Event.id, limit=limit, cursor=cursor, descending=descending, tx_column=m.Event.tx)
    retractions = _retractions(session, [e.id for e in events])
    return [(e, retractions.get(e.id)) for e in events], next_cursor


def _retractions(session: Session, ids: Sequence[int]) -> dict[int, m.Retraction]:
    if not ids:
        return {}
    return {r.event_id: r for r in session.scalars(select(m.Retraction).where(m.Retraction.event_id.in_(ids)))}
