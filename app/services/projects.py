"""Projects: a construction project, its owner, bidders and winner."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Sequence

from sqlalchemy import CompoundSelect, and_, bindparam, cast, exists, literal_column, null, select, union_all
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import ByIds, Database
from app.db.facts import is_bid, lock_customers, to_fact
from app.domain.facts import winner_id
from app.domain.rulebook import Rulebook
from app.errors import FieldError, Invalid, NotFound
from app.grading import in_force, initial_heat, record_created, up_to_date
from app.services.records import NoneMatch, Versions, found, get_by_ref, save_unique, update_record, upsert_by_ref
from app.services.paging import containing, page


def create_project(session: Session, rulebook: Rulebook, fields: dict[str, Any], *, now: datetime) -> m.Project:
    owner_id = fields["owner_id"]
    # Lock the owner: its level is read for the project's first heat.
    owner = lock_customers(session, [owner_id]).get(owner_id)
    if owner is None:
        raise Invalid("the project was not created", errors=[FieldError("owner_id", f"no customer with id {owner_id}")])
    if owner.kind != "owner":
        raise Invalid("the project was not created", errors=[FieldError("owner_id", f"customer {owner_id} is an installer; a project's owner must be an owner")])
    owner = up_to_date(session, rulebook, owner, now)
    project = m.Project(**fields, created_at=now, updated_at=now, version=1)
    project.tags = project.tags or []
    grade = initial_heat(rulebook, project, owner, now)
    save_unique(session, project, fields.get("external_ref"))
    in_force(session, rulebook)  # after the owner's lock: a rulebook switch holds it until it commits
    record_created(session, rulebook, project, grade, now)
    return project


def put_project(
    session: Session, rulebook: Rulebook, ref: str, fields: dict[str, Any], *, if_match: Versions | None, now: datetime, if_none_match: NoneMatch | None = None
) -> tuple[m.Project, bool]:
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
        if_none_match=if_none_match,
        named={"owner_id": "owner_ref"} if owner_ref is not None else None,
    )


def update_project(session: Session, project_id: int, changes: dict[str, Any], *, if_match: Versions | None, now: datetime) -> m.Project:
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


_P, _E, _C, _R = m.Project.__table__, m.Event.__table__, m.Customer.__table__, m.Retraction.__table__
_LIVE_BID = and_(is_bid(_E.c.type), ~exists().where(_R.c.event_id == _E.c.id))


class _Bid(NamedTuple):
    """A live bid with its bidder's name and level: reads like an event for to_fact."""

    id: int
    type: str
    occurred_at: datetime
    customer_id: int
    project_id: int
    attributes: dict[str, Any] | None
    name: str
    level: int


_BID_COLUMNS = (_E.c.id, _E.c.type, _E.c.occurred_at, _E.c.customer_id, _E.c.project_id, _E.c.attributes, _C.c.name, _C.c.level)
# Every page of projects runs this: prebuilt, and as columns, not entities. By a list of
# projects: a page of 50 projects is one read, not 50.
_BIDS = ByIds.of(
    lambda where: select(*_BID_COLUMNS).join(_C, _C.c.id == _E.c.customer_id).where(where, _LIVE_BID).order_by(_E.c.project_id, _E.c.occurred_at, _E.c.id),
    _E.c.project_id,
)


def _with_bids(column: str) -> CompoundSelect:
    """One project (by id or by code) and its live bids, in one statement: the project's row
    first, then a row per bid, each with the other's columns NULL. Not a join: a join's
    every row carried the project's grade, decoded once per bid (44 ms against 7 for a
    project with 1,000 bid events, on SQLite)."""
    named = _P.c[column] == bindparam("value")
    project = select(*_P.c, *(cast(null(), c.type).label(f"bid_{c.key}") for c in _BID_COLUMNS)).where(named)
    bids = select(*(cast(null(), c.type).label(c.key) for c in _P.c), *(c.label(f"bid_{c.key}") for c in _BID_COLUMNS))
    bidders = _E.join(_C, _C.c.id == _E.c.customer_id)
    if column == "id":
        # The bids by their own project_id: joined to projects, PostgreSQL's generic plan
        # (taken after five runs) probed the project's key once per bid (a review's find:
        # 39-49 ms against 5.5 for a project with 4,000 bid events).
        bids = bids.select_from(bidders).where(_E.c.project_id == bindparam("value"), _LIVE_BID)
    else:
        bids = bids.select_from(bidders.join(_P, _P.c.id == _E.c.project_id)).where(named, _LIVE_BID)
    return union_all(project, bids).order_by(literal_column("bid_occurred_at").nulls_first(), literal_column("bid_id").nulls_first())


_WITH_BIDS = {column: _with_bids(column) for column in ("id", "external_ref")}

Participants = tuple[list[dict[str, Any]], dict[str, Any] | None]


async def read_with_participants(db: Database, column: str, value: int | str) -> tuple[Any, Participants]:
    """The project whose `column` (id or external_ref) is `value`, as its stored columns
    (`records.read_alone`), with its `participants`: one statement with no session around
    it, on the running event loop (`Database.alone_on_loop`), so its heat and its bidders
    come from one snapshot on either engine. Read in a session as two statements, they came
    from two on PostgreSQL (its read sessions run each statement on its own), and a bid
    committed between them showed beside a heat that did not count it yet."""
    rows = await db.alone_on_loop(_WITH_BIDS[column], value=value)
    project = found(rows.first(), m.Project, column, value)
    bids = [_Bid(r.bid_id, r.bid_type, r.bid_occurred_at, r.bid_customer_id, r.bid_project_id, r.bid_attributes, r.bid_name, r.bid_level) for r in rows[1:]]
    return project, _participants(bids)


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
