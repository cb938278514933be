"""Reading what evaluation needs, and locking what grading will change.

Every query here is bounded by one subject and its links (its events, its projects,
its bidders), never by the size of the database."""

from __future__ import annotations

from typing import Iterable, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    rows = session.scalars(
        select(model)
        .where(model.id.in_(wanted))
        .order_by(model.id)
        .with_for_update()
        # Rows already in the session may be stale by the time the lock is granted.
        .execution_options(populate_existing=True)
    ).all()
    return {row.id: row for row in rows}


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


def _events(session: Session, *where) -> tuple[f.Event, ...]:  # noqa: ANN002
    rows = session.execute(
        select(m.Event, m.Retraction.id)
        .outerjoin(m.Retraction, m.Retraction.event_id == m.Event.id)
        .where(*where)
        .order_by(m.Event.id)
    ).all()
    return tuple(to_fact(e, retracted=r is not None) for e, r in rows)


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


def customer_facts(session: Session, customer: m.Customer, owned_project_types: frozenset[str]) -> f.CustomerFacts:
    events = _events(session, m.Event.customer_id == customer.id)
    owned: tuple[f.OwnedProject, ...] = ()
    if customer.kind == "owner" and owned_project_types:
        project_ids = list(session.scalars(select(m.Project.id).where(m.Project.owner_id == customer.id).order_by(m.Project.id)))
        if project_ids:
            pe = _events(session, m.Event.project_id.in_(project_ids), m.Event.type.in_(sorted(owned_project_types)))
            owned = tuple(f.OwnedProject(pid, tuple(e for e in pe if e.project_id == pid)) for pid in project_ids)
    return f.CustomerFacts(customer_id=customer.id, kind=customer.kind, events=events, owned_projects=owned)


def project_facts(session: Session, project: m.Project, linked_types: frozenset[str]) -> f.ProjectFacts:
    events = _events(session, m.Event.project_id == project.id)
    linked_ids = set(f.bidder_ids(events))
    customer_ids = linked_ids | {project.owner_id}
    levels = {cid: level for cid, level in session.execute(select(m.Customer.id, m.Customer.level).where(m.Customer.id.in_(customer_ids)))}
    own_events: tuple[f.Event, ...] = ()
    if linked_types:
        own_events = _events(
            session,
            m.Event.customer_id.in_(customer_ids),
            m.Event.project_id.is_(None),
            m.Event.type.in_(sorted(linked_types)),
        )

    def linked(cid: int) -> f.LinkedCustomer:
        return f.LinkedCustomer(cid, levels.get(cid, 0), tuple(e for e in own_events if e.customer_id == cid))

    return f.ProjectFacts(
        project_id=project.id,
        owner=linked(project.owner_id),
        events=events,
        linked={cid: linked(cid) for cid in sorted(linked_ids)},
    )
