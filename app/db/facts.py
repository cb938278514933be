"""Reading what evaluation needs, and locking what grading will change.

Every query here is bounded by the subjects asked for and their links (their events,
projects, bidders), never by the size of the database."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from app.chunks import chunked
from app.db import models as m
from app.domain import facts as f

Row = TypeVar("Row", m.Customer, m.Project)


def lock_customers(session: Session, ids: Iterable[int]) -> dict[int, m.Customer]:
    """Row-lock customers in id order (a fixed order, so concurrent writers cannot deadlock).
    On SQLite the write transaction already holds the database's single write lock."""
    return _lock(session, m.Customer, ids)


def lock_projects(session: Session, ids: Iterable[int]) -> dict[int, m.Project]:
    """Row-lock projects in id order; always after the customers a write locks."""
    return _lock(session, m.Project, ids)


def _lock(session: Session, model: type[Row], ids: Iterable[int]) -> dict[int, Row]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[int, Row] = {}
    if session.get_bind().dialect.name == "sqlite":
        # A SQLite write transaction holds the database's one write lock from its first
        # statement (BEGIN IMMEDIATE), and a write session is one transaction: a row it has
        # already read is current, so only the others are read.
        for id_ in wanted:
            row = session.identity_map.get(identity_key(model, id_))
            if row is not None:
                found[id_] = row
        wanted = [id_ for id_ in wanted if id_ not in found]
        if not wanted:
            return found
    rows = session.scalars(
        select(model)
        .where(model.id.in_(wanted))
        .order_by(model.id)
        .with_for_update()
        # Rows already in the session may be stale by the time the lock is granted.
        .execution_options(populate_existing=True)
    ).all()
    found.update((row.id, row) for row in rows)
    return dict(sorted(found.items()))


def linked_project_ids(session: Session, customer_id: int) -> set[int]:
    """Projects where the customer is the owner, a bidder or the winner (retracted links
    included: re-grading one project too many is harmless, one too few is not)."""
    owned = session.scalars(select(m.Project.id).where(m.Project.owner_id == customer_id))
    bid = session.scalars(
        select(m.Event.project_id)
        .where(m.Event.customer_id == customer_id, m.Event.type.in_(("bid_joined", "bid_won")), m.Event.project_id.is_not(None))
        .distinct()
    )
    return set(owned) | {pid for pid in bid if pid is not None}


_EVENT_COLUMNS = (m.Event.id, m.Event.type, m.Event.occurred_at, m.Event.customer_id, m.Event.project_id, m.Event.attributes)


def _events(session: Session, *where) -> tuple[f.Event, ...]:  # noqa: ANN002
    # Plain columns, not ORM entities: grading reads many events and changes none of them.
    rows = session.execute(
        select(*_EVENT_COLUMNS, m.Retraction.id)
        .outerjoin(m.Retraction, m.Retraction.event_id == m.Event.id)
        .where(*where)
        .order_by(m.Event.id)
    ).all()
    return tuple(
        f.Event(id=id_, type=type_, occurred_at=at, customer_id=cid, project_id=pid, attributes=attrs or {}, retracted=r is not None)
        for id_, type_, at, cid, pid, attrs, r in rows
    )


def to_fact(e: m.Event, *, retracted: bool) -> f.Event:
    return f.Event(
        id=e.id,
        type=e.type,
        occurred_at=e.occurred_at,
        customer_id=e.customer_id,
        project_id=e.project_id,
        attributes=e.attributes or {},
        retracted=retracted,
    )


def _sorted_chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    return chunked(sorted(set(ids)))


def _events_of(session: Session, column, ids: Iterable[int], *where) -> dict[int, list[f.Event]]:  # noqa: ANN001, ANN002
    """The events whose `column` (customer_id or project_id) is one of `ids`, grouped by it,
    in a few queries however many subjects are asked for."""
    out: dict[int, list[f.Event]] = {}
    for chunk in _sorted_chunks(ids):
        for event in _events(session, column.in_(chunk), *where):
            out.setdefault(getattr(event, column.key), []).append(event)
    return out


def customer_facts_many(session: Session, customers: Iterable[m.Customer], owned_project_types: frozenset[str]) -> dict[int, f.CustomerFacts]:
    """What evaluating each of these customers needs: its events, and for an owner the
    events of its projects that its criteria read."""
    customers = list(customers)
    events = _events_of(session, m.Event.customer_id, (c.id for c in customers))
    owners = [c.id for c in customers if c.kind == "owner"]
    projects: dict[int, list[int]] = {}
    project_events: dict[int, list[f.Event]] = {}
    if owners and owned_project_types:
        for chunk in _sorted_chunks(owners):
            for pid, owner_id in session.execute(select(m.Project.id, m.Project.owner_id).where(m.Project.owner_id.in_(chunk)).order_by(m.Project.id)):
                projects.setdefault(owner_id, []).append(pid)
        all_projects = [pid for pids in projects.values() for pid in pids]
        project_events = _events_of(session, m.Event.project_id, all_projects, m.Event.type.in_(sorted(owned_project_types)))
    return {
        c.id: f.CustomerFacts(
            customer_id=c.id,
            kind=c.kind,
            events=tuple(events.get(c.id, ())),
            owned_projects=tuple(f.OwnedProject(pid, tuple(project_events.get(pid, ()))) for pid in projects.get(c.id, ())),
        )
        for c in customers
    }


def project_facts_many(session: Session, projects: Iterable[m.Project], linked_types: frozenset[str]) -> dict[int, f.ProjectFacts]:
    """What evaluating each of these projects needs: its events, and its owner's and
    bidders' levels and project-less events of the types its criteria read."""
    projects = list(projects)
    events = _events_of(session, m.Event.project_id, (p.id for p in projects))
    linked_ids = {p.id: set(f.bidder_ids(events.get(p.id, ()))) for p in projects}
    customer_ids = {p.owner_id for p in projects} | {cid for ids in linked_ids.values() for cid in ids}
    levels: dict[int, int] = {}
    for chunk in _sorted_chunks(customer_ids):
        levels.update((cid, level) for cid, level in session.execute(select(m.Customer.id, m.Customer.level).where(m.Customer.id.in_(chunk))))
    own_events: dict[int, list[f.Event]] = {}
    if linked_types:
        own_events = _events_of(session, m.Event.customer_id, customer_ids, m.Event.project_id.is_(None), m.Event.type.in_(sorted(linked_types)))

    def linked(cid: int) -> f.LinkedCustomer:
        return f.LinkedCustomer(cid, levels.get(cid, 0), tuple(own_events.get(cid, ())))

    return {
        p.id: f.ProjectFacts(
            project_id=p.id,
            owner=linked(p.owner_id),
            events=tuple(events.get(p.id, ())),
            linked={cid: linked(cid) for cid in sorted(linked_ids[p.id])},
        )
        for p in projects
    }
