"""Reading what evaluation needs, and locking what grading will change.

Every query here is bounded by the subjects asked for and their links (their events,
projects, bidders), never by the size of the database."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.util import identity_key

from app.chunks import chunked
from app.db import models as m
from app.db.engine import run
from app.domain import facts as f

Row = TypeVar("Row", m.Customer, m.Project)
_IDS = bindparam("ids", expanding=True)


def _writable(model: type[Row], *where: Any) -> Select[tuple[Row]]:
    return select(model).options(defer(model.grade)).where(*where)


# Customers and projects as writes load them: without their stored grade, which a write
# never reads (grading's UPDATE compares it in the database, app/grading.py) and whose
# decoding was most of the cost of loading them. Built once: an ORM statement with options
# costs a fresh cache key every time it is built.
SUBJECT_BY_ID = {model: _writable(model, model.id == bindparam("id")) for model in (m.Customer, m.Project)}
SUBJECT_BY_REF = {model: _writable(model, model.external_ref == bindparam("ref")) for model in (m.Customer, m.Project)}
SUBJECTS_BY_ID = {model: _writable(model, model.id.in_(_IDS)) for model in (m.Customer, m.Project)}
SUBJECTS_BY_REF = {model: _writable(model, model.external_ref.in_(bindparam("refs", expanding=True))) for model in (m.Customer, m.Project)}
_LOCKED = {
    # Rows already in the session may be stale by the time the lock is granted.
    model: _writable(model, model.id.in_(_IDS)).order_by(model.id).with_for_update().execution_options(populate_existing=True)
    for model in (m.Customer, m.Project)
}


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
    rows = session.scalars(_LOCKED[model], {"ids": wanted}).all()
    found.update((row.id, row) for row in rows)
    return dict(sorted(found.items()))


# The statements grading runs for every write, built once, with their lists as expanding
# parameters, and run as Core (`run`).
E, R, P, C = m.Event.__table__, m.Retraction.__table__, m.Project.__table__, m.Customer.__table__
_TYPES = bindparam("types", expanding=True)
_OWNED = select(P.c.id).where(P.c.owner_id == bindparam("customer_id"))
_BID = select(E.c.project_id).where(E.c.customer_id == bindparam("customer_id"), E.c.type.in_(("bid_joined", "bid_won")), E.c.project_id.is_not(None)).distinct()
_OWNED_BY = select(P.c.id, P.c.owner_id).where(P.c.owner_id.in_(_IDS)).order_by(P.c.id)
_LEVELS = select(C.c.id, C.c.level).where(C.c.id.in_(_IDS))


def _log(*where) -> Select:  # noqa: ANN002
    # Plain columns, not ORM entities: grading reads many events and changes none of them.
    return select(E.c.id, E.c.type, E.c.occurred_at, E.c.customer_id, E.c.project_id, E.c.attributes, R.c.id).outerjoin(R, R.c.event_id == E.c.id).where(*where).order_by(E.c.id)


_CUSTOMER_LOG = _log(E.c.customer_id.in_(_IDS))
_PROJECT_LOG = _log(E.c.project_id.in_(_IDS))
_OWNED_PROJECT_LOG = _log(E.c.project_id.in_(_IDS), E.c.type.in_(_TYPES))
_PROJECTLESS_LOG = _log(E.c.customer_id.in_(_IDS), E.c.project_id.is_(None), E.c.type.in_(_TYPES))


def linked_project_ids(session: Session, customer_id: int) -> set[int]:
    """Projects where the customer is the owner, a bidder or the winner (retracted links
    included: re-grading one project too many is harmless, one too few is not)."""
    owned = run(session, _OWNED, customer_id=customer_id).scalars()
    bid = run(session, _BID, customer_id=customer_id).scalars()
    return set(owned) | {pid for pid in bid if pid is not None}


def _events(session: Session, statement: Select, **params: Any) -> tuple[f.Event, ...]:
    return tuple(
        f.Event(id=id_, type=type_, occurred_at=at, customer_id=cid, project_id=pid, attributes=attrs or {}, retracted=r is not None)
        for id_, type_, at, cid, pid, attrs, r in run(session, statement, **params)
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


def _events_of(session: Session, statement: Select, key: str, ids: Iterable[int], **params: Any) -> dict[int, list[f.Event]]:
    """The events of one of the logs above for these subjects, grouped by `key`
    (customer_id or project_id), in a few queries however many subjects are asked for."""
    out: dict[int, list[f.Event]] = {}
    for chunk in _sorted_chunks(ids):
        for event in _events(session, statement, ids=chunk, **params):
            out.setdefault(getattr(event, key), []).append(event)
    return out


def customer_facts_many(session: Session, customers: Iterable[m.Customer], owned_project_types: frozenset[str]) -> dict[int, f.CustomerFacts]:
    """What evaluating each of these customers needs: its events, and for an owner the
    events of its projects that its criteria read."""
    customers = list(customers)
    events = _events_of(session, _CUSTOMER_LOG, "customer_id", (c.id for c in customers))
    owners = [c.id for c in customers if c.kind == "owner"]
    projects: dict[int, list[int]] = {}
    project_events: dict[int, list[f.Event]] = {}
    if owners and owned_project_types:
        for chunk in _sorted_chunks(owners):
            for pid, owner_id in run(session, _OWNED_BY, ids=chunk):
                projects.setdefault(owner_id, []).append(pid)
        all_projects = [pid for pids in projects.values() for pid in pids]
        project_events = _events_of(session, _OWNED_PROJECT_LOG, "project_id", all_projects, types=sorted(owned_project_types))
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
    events = _events_of(session, _PROJECT_LOG, "project_id", (p.id for p in projects))
    linked_ids = {p.id: set(f.bidder_ids(events.get(p.id, ()))) for p in projects}
    customer_ids = {p.owner_id for p in projects} | {cid for ids in linked_ids.values() for cid in ids}
    levels: dict[int, int] = {}
    for chunk in _sorted_chunks(customer_ids):
        levels.update((cid, level) for cid, level in run(session, _LEVELS, ids=chunk))
    own_events: dict[int, list[f.Event]] = {}
    if linked_types:
        own_events = _events_of(session, _PROJECTLESS_LOG, "customer_id", customer_ids, types=sorted(linked_types))

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
