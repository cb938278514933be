"""Recording and retracting events: validate, store, re-grade — in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.facts import lock_customers
from app.domain.rulebook import Rulebook
from app.domain.validation import EventRejected, check_event
from app.errors import FieldError, Invalid, NotFound
from app.grading import Effect, Regrade, regrade

Row = TypeVar("Row", m.Event, m.Retraction)

# An event may be logged a little ahead of the server's clock (a phone's clock is off),
# never days ahead; and nothing in this business happened before 1970.
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class NewEvent:
    type: str
    occurred_at: datetime
    customer_id: int | None = None
    project_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = "api"
    external_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Recorded:
    event: m.Event
    effects: list[Effect]
    created: bool  # False: the same source + external_id was recorded before


def record_event(session: Session, rulebook: Rulebook, new: NewEvent, *, actor: str | None, now: datetime) -> Recorded:
    if new.external_id is not None:
        existing = _by_external_id(session, new.source, new.external_id)
        if existing is not None:
            return Recorded(existing, [], False)

    problems: list[FieldError] = []
    if new.occurred_at > now + MAX_FUTURE:
        problems.append(FieldError("occurred_at", "is more than a day in the future"))
    if new.occurred_at < EARLIEST:
        problems.append(FieldError("occurred_at", "is before 1970"))
    customer = session.get(m.Customer, new.customer_id) if new.customer_id is not None else None
    if new.customer_id is not None and customer is None:
        problems.append(FieldError("customer_id", f"no customer with id {new.customer_id}"))
    project = session.get(m.Project, new.project_id) if new.project_id is not None else None
    if new.project_id is not None and project is None:
        problems.append(FieldError("project_id", f"no project with id {new.project_id}"))
    try:
        attributes = check_event(
            rulebook,
            new.type,
            new.attributes,
            customer_kind=customer.kind if customer else None,
            has_customer=new.customer_id is not None,
            has_project=new.project_id is not None,
        )
    except EventRejected as exc:
        problems.extend(FieldError(p.field, p.reason) for p in exc.problems)
        attributes = {}
    if problems:
        raise Invalid("the event was not recorded", errors=problems)

    job = _job(rulebook, customer, project, trigger_kind="event", actor=actor, now=now, event_type=new.type)
    # Lock before inserting: whoever holds the subjects' rows grades them next.
    lock_customers(session, job.customer_ids)
    event = m.Event(
        type=new.type,
        customer_id=new.customer_id,
        project_id=new.project_id,
        occurred_at=new.occurred_at.astimezone(timezone.utc),
        recorded_at=now,
        attributes=attributes,
        source=new.source,
        external_id=new.external_id,
        actor=actor,
        note=new.note,
    )
    existing = _insert_once(session, event, lambda: _by_external_id(session, new.source, new.external_id) if new.external_id else None)
    if existing is not None:
        return Recorded(existing, [], False)
    job.trigger["event_id"] = event.id
    return Recorded(event, regrade(session, rulebook, job), True)


def retract_event(session: Session, rulebook: Rulebook, event_id: int, reason: str, *, actor: str | None, now: datetime) -> tuple[m.Event, m.Retraction, list[Effect]]:
    event = get_event(session, event_id)
    existing = retraction_of(session, event_id)
    if existing is not None:
        return event, existing, []
    customer = session.get(m.Customer, event.customer_id) if event.customer_id else None
    project = session.get(m.Project, event.project_id) if event.project_id else None
    job = _job(rulebook, customer, project, trigger_kind="retraction", actor=actor, now=now, event_type=event.type)
    job.trigger["event_id"] = event.id
    lock_customers(session, job.customer_ids)
    retraction = m.Retraction(event_id=event.id, reason=reason, actor=actor, at=now)
    existing = _insert_once(session, retraction, lambda: retraction_of(session, event_id))
    if existing is not None:
        return event, existing, []
    return event, retraction, regrade(session, rulebook, job)


def _insert_once(session: Session, row: Row, stored_first: Callable[[], Row | None]) -> Row | None:
    """Insert `row`; if a concurrent request stored its twin first (a unique violation),
    return that twin instead. None means `row` was inserted."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        twin = stored_first()
        if twin is None:
            raise
        return twin
    return None


def retraction_of(session: Session, event_id: int) -> m.Retraction | None:
    return session.scalar(select(m.Retraction).where(m.Retraction.event_id == event_id))


def _by_external_id(session: Session, source: str, external_id: str) -> m.Event | None:
    return session.scalar(select(m.Event).where(m.Event.source == source, m.Event.external_id == external_id))


def _job(
    rulebook: Rulebook,
    customer: m.Customer | None,
    project: m.Project | None,
    *,
    trigger_kind: str,
    actor: str | None,
    now: datetime,
    event_type: str,
) -> Regrade:
    job = Regrade(trigger={"kind": trigger_kind, "event_type": event_type}, actor=actor, now=now)
    if customer is not None:
        job.customer_ids.add(customer.id)
        if project is None and event_type in rulebook.linked_customer_event_types:
            job.fan_out_from.add(customer.id)
    if project is not None:
        job.project_ids.add(project.id)
        job.customer_ids.add(project.owner_id)
    return job


def get_event(session: Session, event_id: int) -> m.Event:
    event = session.get(m.Event, event_id)
    if event is None:
        raise NotFound(f"no event with id {event_id}")
    return event
