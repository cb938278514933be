"""Projects: a construction project, its owner, bidders and winner."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import ByIds
from app.db.facts import is_bid, lock_customers, to_fact
from app.domain.facts import winner_id
from app.domain.rulebook import Rulebook
from app.errors import FieldError, Invalid, NotFound
from app.grading import in_force, initial_heat, record_created
from app.services.records import get_by_ref, save_unique, update_record, upsert_by_ref
from app.services.paging import containing, page


def create_project(session: Session, rulebook: Rulebook, fields: dict[str, Any], *, now: datetime) -> m.Project:
    owner_id = fields["owner_id"]
    # Lock the owner: its level is read for the project's first heat.
    owner = lock_customers(session, [owner_id]).get(owner_id)
    if owner is None:
        raise Invalid("the project was not created", errors=[FieldError("owner_id", f"no customer with id {owner_id}")])
    if owner.kind != "owner":
        raise Invalid("the project was not created", errors=[FieldError("owner_id", f"customer {owner_id} is an installer; a project's owner must be an owner")])
    project = m.Project(**fields, created_at=now, updated_at=now, version=1)
    project.tags = project.tags or []
    grade = initial_heat(rulebook, project, owner, now)
    save_unique(session, project, fields.get("external_ref"))
    in_force(session, rulebook)  # after the owner's lock: a rulebook switch holds it until it commits
    record_created(session, rulebook, project, grade, now)
    return project


def put_project(session: Session, rulebook: Rulebook, ref: str, fields: dict[str, Any], *, if_match: int | None, now: datetime) -> tuple[m.Project, bool]:
    """Create or update the project with this external_ref; its owner is named by id or by
    the owner's external_ref, and cannot change."""
    owner_ref = fields.pop("owner_ref", None)
    if owner_ref is not None:
        try:
            fields["owner_id"] = get_by_ref(session, m.Customer, owner_ref).id
        except NotFound:
            raise Invalid("the project was not stored", errors=[FieldError("owner_ref", f"no customer with external_ref {owner_ref!r}")]) from None
    owner_id = fields.pop("owner_id")
    fields = {**fields, "tags": fields.get("tags") or []}
    return upsert_by_ref(
        session,
        m.Project,
        ref,
        fields,
        fixed={"owner_id": owner_id},
        create=lambda: create_project(session, rulebook, {**fields, "owner_id": owner_id, "external_ref": ref}, now=now),
        if_match=if_match,
        now=now,
        named={"owner_id": "owner_ref"} if owner_ref is not None else None,
    )


def update_project(session: Session, project_id: int, changes: dict[str, Any], *, if_match: int | None, now: datetime) -> m.Project:
    return update_record(session, m.Project, project_id, changes, if_match=if_match, now=now)


def list_projects(
    session: Session,
    *,
    owner_id: int | None,
    heat: int | None,
    rep: str | None,
    stage: str | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[m.Project], str | None]:
    query = select(m.Project)
    if owner_id is not None:
        query = query.where(m.Project.owner_id == owner_id)
    if heat is not None:
        query = query.where(m.Project.heat == heat)
    if rep:
        query = query.where(m.Project.rep == rep)
    if stage:
        query = query.where(m.Project.stage == stage)
    if q:
        query = query.where(containing(session, (m.Project.name,), q))
    return page(session, query, m.Project.id, limit=limit, cursor=cursor)


_E, _C, _R = m.Event.__table__, m.Customer.__table__, m.Retraction.__table__
# Every project read runs this: prebuilt, and as columns (a row reads like an event for
# to_fact), not entities. By a list of projects: a page of 50 projects is one read, not 50.
_BIDS = ByIds.of(
    lambda where: select(_E.c.id, _E.c.type, _E.c.occurred_at, _E.c.customer_id, _E.c.project_id, _E.c.attributes, _C.c.name, _C.c.level)
    .join(_C, _C.c.id == _E.c.customer_id)
    .outerjoin(_R, _R.c.event_id == _E.c.id)
    .where(where, is_bid(_E.c.type), _R.c.id.is_(None))
    .order_by(_E.c.project_id, _E.c.occurred_at, _E.c.id),
    _E.c.project_id,
)

Participants = tuple[list[dict[str, Any]], dict[str, Any] | None]


def participants(session: Session, project: m.Project) -> Participants:
    """The project's bidders (with whether they bid with our product) and its winner."""
    return participants_of(session, [project.id])[project.id]


def participants_of(session: Session, project_ids: Sequence[int]) -> dict[int, Participants]:
    """`participants` of each of these projects, read together."""
    bids: dict[int, list[Any]] = {pid: [] for pid in project_ids}
    for bid in _BIDS.rows(session, project_ids):
        bids[bid.project_id].append(bid)
    return {pid: _participants(rows) for pid, rows in bids.items()}


def _participants(rows: list[Any]) -> Participants:
    bidders: dict[int, dict[str, Any]] = {}
    for bid in rows:
        entry = bidders.setdefault(bid.customer_id, {"id": bid.customer_id, "name": bid.name, "level": bid.level, "with_our_product": False})
        if bid.type == "bid_joined" and (bid.attributes or {}).get("with_our_product"):
            entry["with_our_product"] = True
    # The winner as grading names it (the latest bid_won; at equal instants, by content).
    won = winner_id(tuple(to_fact(bid, retracted=False) for bid in rows if bid.type == "bid_won"))
    winner = None if won is None else {k: v for k, v in bidders[won].items() if k != "with_our_product"}
    return list(bidders.values()), winner
