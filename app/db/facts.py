"""Reading what evaluation needs, and locking what grading will change.

Every query here is bounded by the subjects asked for and their links (their events,
projects, bidders), never by the size of the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypeVar

from sqlalchemy import JSON, Select, and_, bindparam, func, literal_column, or_, select, type_coerce
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import ByIds, one_of, run
from app.db.logs import WriteLogs, events_of, log_select
from app.domain import facts as f


@dataclass(slots=True, eq=False)
class CustomerState:
    """What a write reads of a customer: the columns it checks an event against and grades
    by. Plain values from a Core row, not an ORM entity: loading the entity (its JSON and
    datetime columns decoded, its state tracked) cost ten times the query on SQLite, and a
    write changes these columns with its own UPDATE (app/grading.py)."""

    id: int
    kind: str
    external_ref: str | None
    level: int
    log_stamp: int
    grade_hash: int | None


@dataclass(slots=True, eq=False)
class ProjectState:
    """What a write reads of a project (see `CustomerState`)."""

    id: int
    owner_id: int
    external_ref: str | None
    heat: int
    log_stamp: int
    grade_hash: int | None
    closed: bool  # won or lost: a close as lost (or a reopening) changes no percent


State = TypeVar("State", CustomerState, ProjectState)
C, P = m.Customer.__table__, m.Project.__table__
_COLUMNS = {
    CustomerState: (C.c.id, C.c.kind, C.c.external_ref, C.c.level, C.c.log_stamp, C.c.grade_hash),
    ProjectState: (P.c.id, P.c.owner_id, P.c.external_ref, P.c.heat, P.c.log_stamp, P.c.grade_hash, P.c.closed),
}


def _states(kind: type[State], *where: Any) -> Select[Any]:
    columns = _COLUMNS[kind]
    return select(*columns).where(*where).order_by(columns[0])


def _states_by_ids(kind: type[State]) -> ByIds:
    return ByIds.of(lambda where: _states(kind, where), _COLUMNS[kind][0])


# Built once, run as Core (`run`): an ORM statement costs a fresh cache key every time it is
# built, and its rows cost far more than the query.
STATE_BY_REF = {kind: _states(kind, _COLUMNS[kind][2] == bindparam("ref")) for kind in (CustomerState, ProjectState)}
STATES_BY_ID = {kind: _states_by_ids(kind) for kind in (CustomerState, ProjectState)}
STATES_BY_REF = {kind: _states(kind, _COLUMNS[kind][2].in_(bindparam("refs", expanding=True))) for kind in (CustomerState, ProjectState)}
_LOCKED = {kind: STATES_BY_ID[kind].map(Select.with_for_update) for kind in (CustomerState, ProjectState)}
# On SQLite, the states this write transaction has read, by (kind, id): see `read_states`.
_READ = "rapport.states"


def read_states(session: Session, kind: type[State], rows: Iterable[Any]) -> list[State]:
    """The states of `rows` (of a `STATE*` select), each known to the session afterwards.

    On SQLite a write transaction holds the database's one write lock from its first
    statement (BEGIN IMMEDIATE), so a state it has read stays current for the rest of it,
    as long as grading updates it along with its row (app/grading.py does): a state read
    again is the same object, and `_lock` reads only those it does not know yet."""
    states = [kind(*row) for row in rows]
    if session.get_bind().dialect.name != "sqlite":
        return states
    known: dict[tuple[type, int], Any] = session.info.setdefault(_READ, {})
    return [known.setdefault((kind, state.id), state) for state in states]


def ref_changed(session: Session, row: m.Customer | m.Project) -> None:
    """A PATCH changed `row`'s external_ref: on SQLite the state this write transaction keeps
    of it (`read_states`) follows, as grading keeps its grade current. Writes that run
    together share one transaction (app/db/engine.py `_run_group`): a later one that named
    the record by its new code was told there was none, and one that named it by its old
    code was recorded against it (a hunt's find)."""
    kind = CustomerState if isinstance(row, m.Customer) else ProjectState
    state = session.info.get(_READ, {}).get((kind, row.id))
    if state is not None:
        state.external_ref = row.external_ref


def read_state(session: Session, kind: type[State], *, id: int | None = None, ref: str | None = None) -> State | None:
    """One customer's or project's state, by id or by external_ref; None if there is none."""
    rows = STATES_BY_ID[kind].rows(session, [id]) if ref is None else run(session, STATE_BY_REF[kind], ref=ref)
    found = read_states(session, kind, rows)
    return found[0] if found else None


def lock_customers(session: Session, ids: Iterable[int]) -> dict[int, CustomerState]:
    """Row-lock customers in id order (a fixed order, so concurrent writers cannot deadlock).
    On SQLite the write transaction already holds the database's single write lock."""
    return _lock(session, CustomerState, ids)


# One event's subjects named by id, in one statement: the customer it names and the owner of
# the project it names, row-locked in id order, each row with the project beside its owner's.
_NAMED = P.alias("named")
_LOCK_WITH_PROJECT = (
    select(*_COLUMNS[CustomerState], *_COLUMNS[ProjectState])
    .select_from(C.outerjoin(P, and_(P.c.owner_id == C.c.id, P.c.id == bindparam("project_id"))))
    .where(or_(C.c.id == bindparam("customer_id"), C.c.id == select(_NAMED.c.owner_id).where(_NAMED.c.id == bindparam("project_id")).scalar_subquery()))
    .order_by(C.c.id)
    .with_for_update(of=C)
)


def lock_with_project(session: Session, customer_id: int | None, project_id: int) -> tuple[dict[int, CustomerState], ProjectState | None]:
    """Row-lock the customer `customer_id` (if any) and the owner of the project
    `project_id`, in id order, and read that project (None if there is none): what an
    event on a project first reads, in one statement where it took two (a round trip each on
    PostgreSQL).

    The project's row comes from the statement's snapshot, taken before a lock that waits
    is granted; that is enough, since what a write takes from it before locking the project
    itself does not change: its id and its owner (which never changes). Its grade and stamp
    are read again under the project's own lock (`lock_projects`, which on PostgreSQL reads
    every row it locks)."""
    width = len(_COLUMNS[CustomerState])
    rows = run(session, _LOCK_WITH_PROJECT, customer_id=customer_id, project_id=project_id)
    customers = read_states(session, CustomerState, [row[:width] for row in rows])
    project = read_states(session, ProjectState, [row[width:] for row in rows if row[width] is not None])
    return {c.id: c for c in customers}, (project[0] if project else None)


def lock_projects(session: Session, ids: Iterable[int]) -> dict[int, ProjectState]:
    """Row-lock projects in id order; always after the customers a write locks."""
    return _lock(session, ProjectState, ids)


def _lock(session: Session, kind: type[State], ids: Iterable[int]) -> dict[int, State]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[int, State] = {}
    if session.get_bind().dialect.name == "sqlite":
        # Already read by this write transaction: current (`read_states`).
        known = session.info.get(_READ, {})
        found = {id_: known[(kind, id_)] for id_ in wanted if (kind, id_) in known}
        wanted = [id_ for id_ in wanted if id_ not in found]
    # On PostgreSQL, read again even if read before: the lock may have waited for a writer
    # that changed the row since.
    found.update((state.id, state) for state in read_states(session, kind, _LOCKED[kind].rows(session, wanted)))
    return dict(sorted(found.items()))


# The statements grading runs for every write, built once, with their lists as parameters
# (`ByIds`, `one_of`), and run as Core (`run`).
E = m.Event.__table__
_OWNED = select(P.c.id).where(P.c.owner_id == bindparam("customer_id"))


def is_bid(type_: Any) -> Any:
    """SQL: the event type `type_` (a column) is a bid's (`f.BID_TYPES`). One comparison per
    type rather than `IN`: a list the statement carries is an expanding parameter, which
    keeps a statement off the cursor on PostgreSQL (`run`: SQLAlchemy renders the list on
    every run), and a project read looks up its bids every time."""
    return or_(*(type_ == t for t in f.BID_TYPES))


_BID = select(E.c.project_id).where(E.c.customer_id == bindparam("customer_id"), is_bid(E.c.type), E.c.project_id.is_not(None)).distinct()
# (owner id, project id, log stamp): as `owned_projects` gives them.
_OWNED_BY = ByIds.of(lambda where: select(P.c.owner_id, P.c.id, P.c.log_stamp).where(where).order_by(P.c.id), P.c.owner_id)
_LEVELS = ByIds.of(lambda where: select(C.c.id, C.c.level, C.c.log_stamp).where(where), C.c.id)
# By dialect name: the event types a project's criteria read of its customers' own events
# are the caller's list (`one_of`), so the statement stays on the cursor on PostgreSQL too.
_PROJECTLESS_LOG = {dialect: ByIds.of(lambda where, types=types: log_select(where, E.c.project_id.is_(None), types), E.c.customer_id) for dialect, types in one_of(E.c.type, "types").items()}


def linked_project_ids(session: Session, customer_id: int) -> set[int]:
    """Projects where the customer is the owner, a bidder or the winner (retracted links
    included: re-grading one project too many is harmless, one too few is not)."""
    owned = run(session, _OWNED, customer_id=customer_id).scalars()
    bid = run(session, _BID, customer_id=customer_id).scalars()
    return set(owned) | {pid for pid in bid if pid is not None}


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


def stored_fact(event_id: int, values: dict[str, Any]) -> f.Event:
    """The fact of an event this write just stored with these values (`event_values`):
    what reading it back gives, without the read."""
    return f.Event(
        id=event_id,
        type=values["type"],
        occurred_at=values["occurred_at"],
        customer_id=values["customer_id"],
        project_id=values["project_id"],
        attributes=values["attributes"],
    )


# An owner's projects, as a write reads them to find their logs: (project id, log stamp).
Owned = dict[int, list[tuple[int, int]]]


# The owners a single event's write re-grades, at most: the customer it names, and its
# project's owner.
INSERT_OWNERS = 2


def owned_projects(dialect: str) -> Any:
    """The projects of the owners given as `owner_params`, as one JSON array of [owner id,
    project id, log stamp] triples: a scalar subquery for a single event's `INSERT …
    RETURNING`, which then spares grading the read of an owner's projects (`_OWNED_BY`), a
    round trip on PostgreSQL. Read by the INSERT, after the write has locked those owners:
    a project's log and stamp change only under its owner's lock (app/db/logs.py), and a
    project is created only under it (app/services/projects.py), so what the INSERT sees
    holds for the rest of the write. Not in the lock's own SELECT: its subqueries see the
    snapshot taken before the lock was granted, which misses what a writer it waited for
    committed.

    The owners are `INSERT_OWNERS` parameters of one id each (None where there are fewer),
    not one list. As an array (`= ANY`) the INSERT was planned anew on every run on
    PostgreSQL: its generic plan, made for an array of unknown length, is costed for ten
    owners, so the server never chose it over a plan for the one owner it was given: each
    such INSERT was planned again, about 100 µs of the server's CPU (320 against 220 µs for
    the INSERT and its commit; docs/performance.md, "The plan-cache round")."""
    triple = (P.c.owner_id, P.c.id, P.c.log_stamp)
    if dialect == "postgresql":
        triples = func.coalesce(func.json_agg(func.json_build_array(*triple)), literal_column("'[]'::json"))
    else:
        triples = func.json_group_array(func.json_array(*triple))
    owners = [bindparam(name, type_=P.c.owner_id.type) for name in _OWNER_PARAMS]
    return select(type_coerce(triples, JSON)).where(P.c.owner_id.in_(owners)).scalar_subquery()


_OWNER_PARAMS = tuple(f"owner_{i}" for i in range(1, INSERT_OWNERS + 1))


def owner_params(owners: Sequence[int]) -> dict[str, int | None]:
    """`owned_projects`'s parameters for the first `INSERT_OWNERS` of `owners`."""
    return {name: (owners[i] if i < len(owners) else None) for i, name in enumerate(_OWNER_PARAMS)}


def read_owned(triples: Iterable[Any], owners: Iterable[int]) -> Owned:
    """The projects of each of `owners` (none: an empty list), from `owned_projects`'s triples."""
    owned: Owned = {owner_id: [] for owner_id in owners}
    for owner_id, project_id, stamp in sorted(triples):
        owned[owner_id].append((project_id, stamp))
    return owned


def customer_facts_many(session: Session, customers: Iterable[CustomerState], owned_project_types: frozenset[str], logs: WriteLogs, owned: Owned | None = None) -> dict[int, f.CustomerFacts]:
    """What evaluating each of these (locked) customers needs: its events, and for an owner
    the events of its projects that its criteria read. `owned`: the projects of some of the
    owners, read already by this write (`owned_projects`); the others' are read here."""
    customers = list(customers)
    events = logs.of("customer", {c.id: c.log_stamp for c in customers})
    owners = [c.id for c in customers if c.kind == "owner"]
    projects: dict[int, list[int]] = {}
    project_events: dict[int, tuple[f.Event, ...]] = {}
    if owners and owned_project_types:
        known = dict(owned or {})
        unknown = [owner_id for owner_id in owners if owner_id not in known]
        known.update(read_owned(_OWNED_BY.rows(session, unknown), unknown))
        projects = {owner_id: [pid for pid, _ in known[owner_id]] for owner_id in owners}
        stamps = {pid: stamp for owner_id in owners for pid, stamp in known[owner_id]}
        # The owner's lock guards its projects' logs too (app/db/logs.py).
        project_events = {pid: tuple(e for e in log if e.type in owned_project_types) for pid, log in logs.of("project", stamps).items()}
    return {
        c.id: f.CustomerFacts(
            customer_id=c.id,
            kind=c.kind,
            events=events[c.id],
            owned_projects=tuple(f.OwnedProject(pid, project_events[pid]) for pid in projects.get(c.id, ())),
        )
        for c in customers
    }


def project_facts_many(session: Session, projects: Iterable[ProjectState], linked_types: frozenset[str], logs: WriteLogs) -> dict[int, f.ProjectFacts]:
    """What evaluating each of these (locked) projects needs: its events, and its owner's
    and bidders' levels and project-less events of the types its criteria read."""
    projects = list(projects)
    events = logs.of("project", {p.id: p.log_stamp for p in projects})
    # The bidders, and the customers of retracted bids: a retraction's grading evaluates the
    # project as it stood before, with that bid (app/grading.py, `project_before`).
    linked_ids = {p.id: f.bid_customers(events[p.id]) for p in projects}
    customer_ids = {p.owner_id for p in projects} | {cid for ids in linked_ids.values() for cid in ids}
    levels: dict[int, int] = {}
    stamps: dict[int, int] = {}
    for cid, level, stamp in _LEVELS.rows(session, sorted(customer_ids)):
        levels[cid], stamps[cid] = level, stamp
    own_events: dict[int, list[f.Event]] = {}
    if linked_types:
        # From the logs known to this write where it can; the others are read, and not kept:
        # these customers are not locked by the write (app/db/logs.py).
        known = logs.known("customer", stamps)
        own_events = {cid: [e for e in log if e.project_id is None and e.type in linked_types] for cid, log in known.items()}
        if missing := customer_ids - known.keys():
            own_events.update(events_of(session, _PROJECTLESS_LOG[session.get_bind().dialect.name], "customer_id", missing, types=sorted(linked_types)))

    def linked(cid: int) -> f.LinkedCustomer:
        return f.LinkedCustomer(cid, levels.get(cid, 0), tuple(own_events.get(cid, ())))

    return {
        p.id: f.ProjectFacts(
            project_id=p.id,
            owner=linked(p.owner_id),
            events=events[p.id],
            linked={cid: linked(cid) for cid in sorted(linked_ids[p.id])},
        )
        for p in projects
    }
