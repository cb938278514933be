"""Recording and retracting events: validate, store, re-grade — in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.chunks import chunked
from app.db import facts as repo
from app.db import models as m
from app.db.engine import run
from app.db.facts import CustomerState, ProjectState, State
from app.domain.rulebook import Rulebook
from app.domain.validation import EventRejected, check_event, instant_problem
from app.errors import FieldError, Invalid, NotFound
from app.grading import ACTIVE_DIGEST_COLUMN, Effect, Regrade, active_is, lock_customers, regrade
from app.services import outbox

Row = TypeVar("Row", m.Event, m.Retraction)

# An event may be logged a little ahead of the server's clock (a phone's clock is off),
# never days ahead.
MAX_FUTURE = timedelta(days=1)


@dataclass(frozen=True)
class NewEvent:
    type: str
    occurred_at: datetime
    customer_id: int | None = None
    project_id: int | None = None
    # The ERP's codes may name the subjects instead of ids (one or the other, not both).
    customer_ref: str | None = None
    project_ref: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = "api"
    external_id: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event this write stored: the values it was inserted with, and its id. Not an ORM
    entity: nothing changes it, and building one (its attributes instrumented) was ~30 us
    of a single POST's CPU."""

    id: int
    type: str
    customer_id: int | None
    project_id: int | None
    occurred_at: datetime
    recorded_at: datetime
    attributes: dict[str, Any]
    source: str
    external_id: str | None
    actor: str | None
    note: str | None


@dataclass(frozen=True)
class Recorded:
    event: m.Event | StoredEvent
    effects: list[Effect]
    created: bool  # False: the same source + external_id was recorded before


@dataclass(frozen=True)
class Checked:
    """An event that passed validation, with its subjects resolved."""

    new: NewEvent
    customer: CustomerState | None
    project: ProjectState | None
    attributes: dict[str, Any]


def record_event(session: Session, rulebook: Rulebook, new: NewEvent, *, actor: str | None, now: datetime) -> Recorded:
    subjects = Subjects(session)
    # The customers the event names and its project's owner, read once and row-locked, as a
    # batch reads its items' (on PostgreSQL, finding the customer and then locking it had
    # read it twice).
    locked = subjects.prefetch([new])
    try:
        checked = check_new_event(rulebook, new, now=now, subjects=subjects)
    except Invalid:
        # A re-sent event that was stored before is answered as stored, even if it would not
        # pass today (a rulebook changed since): looked for only here, not on every POST.
        existing = _stored_twin(session, new)
        if existing is None:
            raise
        return Recorded(existing, [], False)
    job = Regrade(trigger={"kind": "event", "event_type": new.type}, actor=actor, now=now, locked=locked)
    add_subjects(job, rulebook, checked.customer, checked.project, new.type)
    # Lock before inserting: whoever holds the subjects' rows grades them next.
    lock_customers(session, job)
    values = event_values(checked, actor=actor, now=now)
    # The owners it re-grades, whose projects grading reads: returned by the INSERT.
    owners = sorted(cid for cid in job.customer_ids if job.locked[cid].kind == "owner") if rulebook.owned_project_event_types else []
    event, live, job.owned = store_event(session, new, values, owners=owners, rulebook=rulebook)
    if live is None:
        return Recorded(event, [], False)
    job.in_force = True  # store_event found the rulebook active, after the locks
    job.trigger["event_id"] = event.id
    job.changed_events[event.id] = repo.stored_fact(event.id, values)
    # The subscriptions the insert returned serve this message and the grade changes'
    # (grading reads them only for a type the job does not know yet).
    job.subscribers.update(outbox.subscribers_by_type(session, live))
    outbox.enqueue(session, outbox.EVENT_CREATED, lambda: outbox.stored_event_payload(event.id, values), now, wanted=job.subscribers[outbox.EVENT_CREATED])
    return Recorded(event, regrade(session, rulebook, job), True)


def check_new_event(rulebook: Rulebook, new: NewEvent, *, now: datetime, subjects: Subjects) -> Checked:
    """Validate an event against the clock, the stored subjects (found through the caller's
    `subjects`, which a batch and a single POST both prefetch) and the rulebook's catalogue;
    raise Invalid naming every problem."""
    problems: list[FieldError] = []
    out_of_range = instant_problem(new.occurred_at)
    if out_of_range:
        problems.append(FieldError("occurred_at", out_of_range))
    elif new.occurred_at > now + MAX_FUTURE:
        problems.append(FieldError("occurred_at", "is more than a day in the future"))
    customer = subjects.find(CustomerState, "customer", new.customer_id, new.customer_ref, problems)
    project = subjects.find(ProjectState, "project", new.project_id, new.project_ref, problems)
    has_customer = new.customer_id is not None or new.customer_ref is not None
    has_project = new.project_id is not None or new.project_ref is not None
    try:
        attributes = check_event(
            rulebook,
            new.type,
            new.attributes,
            customer_kind=customer.kind if customer else None,
            has_customer=has_customer,
            has_project=has_project,
            customer_field="customer_ref" if new.customer_id is None and new.customer_ref is not None else "customer_id",
            project_field="project_ref" if new.project_id is None and new.project_ref is not None else "project_id",
        )
    except EventRejected as exc:
        problems.extend(FieldError(p.field, p.reason) for p in exc.problems)
        attributes = {}
    if problems:
        raise Invalid("the event was not recorded", errors=problems)
    return Checked(new, customer, project, attributes)


class Subjects:
    """Finds the customers and projects events name (by id or external_ref), each once per
    session; a batch loads all of its subjects up front in a few queries."""

    def __init__(self, session: Session):
        self.session = session
        # Strong references: the session's identity map alone would let them be collected.
        self._by_id: dict[tuple[type, int], Any] = {}
        self._by_ref: dict[tuple[type, str], Any] = {}

    def prefetch(self, items: Sequence[NewEvent]) -> dict[int, CustomerState]:
        """Load every subject `items` name, in a few queries (remembering those that do not
        exist). The customers named, and the owners of the projects named, are read
        row-locked, in id order as grading locks them; they are returned, for grading."""
        if len(items) == 1 and items[0].project_id is not None and items[0].project_ref is None and items[0].customer_ref is None:
            return self._prefetch_on_project(items[0])
        ids, refs = _keys(items, "project_id", "project_ref")
        self._load(ProjectState, ids, refs)
        ids, refs = _keys(items, "customer_id", "customer_ref")
        for chunk in chunked(refs):
            ids.extend(self.session.scalars(select(m.Customer.id).where(m.Customer.external_ref.in_(chunk))))
        ids.extend(row.owner_id for (kind, _), row in self._by_id.items() if kind is ProjectState and row is not None)
        locked = repo.lock_customers(self.session, ids)
        self._remember(CustomerState, locked.values(), ids, refs)
        return locked

    def _prefetch_on_project(self, item: NewEvent) -> dict[int, CustomerState]:
        """`prefetch` of one event on a project named by id (and a customer named by id, if
        any): one statement (`repo.lock_with_project`)."""
        assert item.project_id is not None
        locked, project = repo.lock_with_project(self.session, item.customer_id, item.project_id)
        self._remember(ProjectState, [project] if project else [], [item.project_id], [])
        named = [cid for cid in (item.customer_id, project.owner_id if project else None) if cid is not None]
        self._remember(CustomerState, locked.values(), named, [])
        return locked

    def _load(self, kind: type[State], ids: list[int], refs: list[str]) -> None:
        rows = repo.read_states(self.session, kind, repo.STATES_BY_ID[kind].rows(self.session, ids))
        rows += [row for chunk in chunked(refs) for row in repo.read_states(self.session, kind, run(self.session, repo.STATES_BY_REF[kind], refs=chunk))]
        self._remember(kind, rows, ids, refs)

    def _remember(self, model: type, rows: Iterable[Any], ids: Iterable[int], refs: Iterable[str]) -> None:
        self._by_id.update(((model, i), None) for i in ids)
        self._by_ref.update(((model, r), None) for r in refs)
        for row in rows:
            self._by_id[(model, row.id)] = row
            if row.external_ref is not None:
                self._by_ref[(model, row.external_ref)] = row

    def find(self, model: type[State], name: str, id_: int | None, ref: str | None, problems: list[FieldError]) -> State | None:
        """The customer or project an event names; a problem if it names none or both ways."""
        if id_ is not None and ref is not None:
            problems.append(FieldError(f"{name}_ref", f"give {name}_id or {name}_ref, not both"))
            return None
        if ref is not None:
            key = (model, ref)
            if key not in self._by_ref:
                self._by_ref[key] = repo.read_state(self.session, model, ref=ref)
            row = self._by_ref[key]
            if row is None:
                problems.append(FieldError(f"{name}_ref", f"no {name} with external_ref {ref!r}"))
            return row
        if id_ is not None:
            key = (model, id_)
            if key not in self._by_id:
                self._by_id[key] = repo.read_state(self.session, model, id=id_)
            row = self._by_id[key]
            if row is None:
                problems.append(FieldError(f"{name}_id", f"no {name} with id {id_}"))
            return row
        return None


def _keys(items: Sequence[NewEvent], id_attr: str, ref_attr: str) -> tuple[list[int], list[str]]:
    """The ids and the references `items` name a subject by (customer or project)."""
    ids = sorted({getattr(i, id_attr) for i in items if getattr(i, id_attr) is not None})
    refs = sorted({getattr(i, ref_attr) for i in items if getattr(i, ref_attr) is not None})
    return ids, refs


def store_event(
    session: Session, new: NewEvent, values: dict[str, Any], *, owners: Sequence[int] = (), rulebook: Rulebook | None = None
) -> tuple[StoredEvent | m.Event, list[Any] | None, repo.Owned]:
    """Insert the row of the checked event `new` (its `event_values`): (the event, the live
    webhook subscriptions as [id, event_types] pairs, the projects of `owners` — of the
    first `repo.INSERT_OWNERS` of them), or (its twin, None, {}) if the same source +
    external_id was stored first. The caller has locked the subjects' customers, `owners`
    among them.

    One statement, `INSERT … ON CONFLICT DO NOTHING RETURNING id, <subscriptions>[, <owned
    projects>]` (SQLite ≥ 3.35 and PostgreSQL): a twin stored first, even by a concurrent
    writer, makes it return nothing, without the look-up before and the savepoint around
    the insert this used to take; and the subscriptions the event's messages go to, and the
    owners' projects grading reads (`repo.owned_projects`), come back with the id, without
    reads of their own; so does the active rulebook's digest, which, given the `rulebook`
    the write grades under, must be its (`grading.active_is`: RulebookChanged)."""
    dialect = session.get_bind().dialect.name
    # An event re-grades at most two owners; any beyond are left to grading's own read.
    given = list(owners)[: repo.INSERT_OWNERS]
    if given:
        row = run(session, _INSERT_RETURNING_OWNED[dialect], **values, **repo.owner_params(given)).first()
    else:
        row = run(session, _INSERT_RETURNING_SUBSCRIBERS[dialect], **values).first()
    if row is None:
        return twin_of(session, new), None, {}
    if rulebook is not None:
        active_is(session, rulebook, row[-1])
    return StoredEvent(id=row[0], **values), row[1] or [], repo.read_owned(row[2], given) if given else {}


def twin_of(session: Session, new: NewEvent) -> m.Event:
    """The event stored under `new`'s source + external_id, which made an `INSERT … ON
    CONFLICT DO NOTHING` of `new` store nothing."""
    twin = _stored_twin(session, new)
    if twin is None:  # pragma: no cover - DO NOTHING only skips a (source, external_id) twin
        raise RuntimeError("an event insert stored nothing and has no twin")
    return twin


# What an event's INSERT gives: all but the columns the database fills in (its id, and on
# PostgreSQL the storing transaction's id).
EVENT_COLUMNS = [c for c in m.Event.__table__.c if c.name not in ("id", "tx")]


def _insert_new_event(dialect_insert: Callable[..., Any]) -> Any:
    """INSERT INTO events … ON CONFLICT (source, external_id) DO NOTHING RETURNING id."""
    table = m.Event.__table__
    values = {c.name: bindparam(c.name, type_=c.type) for c in EVENT_COLUMNS}
    return dialect_insert(table).values(values).on_conflict_do_nothing(index_elements=[table.c.source, table.c.external_id]).returning(table.c.id)


INSERT_NEW_EVENT = {"postgresql": _insert_new_event(pg_insert), "sqlite": _insert_new_event(sqlite_insert)}
_INSERT_RETURNING_SUBSCRIBERS = {dialect: insert.returning(outbox.live_subscriptions(dialect), ACTIVE_DIGEST_COLUMN) for dialect, insert in INSERT_NEW_EVENT.items()}
_INSERT_RETURNING_OWNED = {dialect: insert.returning(outbox.live_subscriptions(dialect), repo.owned_projects(dialect), ACTIVE_DIGEST_COLUMN) for dialect, insert in INSERT_NEW_EVENT.items()}


def event_values(checked: Checked, *, actor: str | None, now: datetime) -> dict[str, Any]:
    """The stored row of a checked event."""
    new = checked.new
    return {
        "type": new.type,
        "customer_id": checked.customer.id if checked.customer else None,
        "project_id": checked.project.id if checked.project else None,
        "occurred_at": new.occurred_at.astimezone(timezone.utc),
        "recorded_at": now,
        "attributes": checked.attributes,
        "source": new.source,
        "external_id": new.external_id,
        "actor": actor,
        "note": new.note,
    }


def retract_event(session: Session, rulebook: Rulebook, event_id: int, reason: str, *, actor: str | None, now: datetime) -> tuple[m.Event, m.Retraction, list[Effect]]:
    event = get_event(session, event_id)
    existing = retraction_of(session, event_id)
    if existing is not None:
        return event, existing, []
    customer = repo.read_state(session, CustomerState, id=event.customer_id) if event.customer_id else None
    project = repo.read_state(session, ProjectState, id=event.project_id) if event.project_id else None
    job = Regrade(trigger={"kind": "retraction", "event_type": event.type, "event_id": event.id}, actor=actor, now=now)
    add_subjects(job, rulebook, customer, project, event.type)
    lock_customers(session, job)
    retraction = m.Retraction(event_id=event.id, reason=reason, actor=actor, at=now)
    existing = _insert_once(session, retraction, lambda: retraction_of(session, event_id))
    if existing is not None:
        return event, existing, []
    job.changed_events[event.id] = repo.to_fact(event, retracted=True)
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


def _stored_twin(session: Session, new: NewEvent) -> m.Event | None:
    """The event stored before under `new`'s source + external_id (none without an external_id)."""
    if new.external_id is None:
        return None
    return session.scalar(select(m.Event).where(m.Event.source == new.source, m.Event.external_id == new.external_id))


def add_subjects(job: Regrade, rulebook: Rulebook, customer: CustomerState | None, project: ProjectState | None, event_type: str) -> None:
    """Add to `job` what an event of this type for these subjects re-grades."""
    if customer is not None:
        job.customer_ids.add(customer.id)
        if project is None and event_type in rulebook.linked_customer_event_types:
            job.fan_out_from.add(customer.id)
    if project is not None:
        job.project_ids.add(project.id)
        # The owner's lock guards the project's log (app/db/logs.py); its level reads only
        # the owned projects' events of some types (`owned_project_event_types`). Under a
        # rulebook whose grades age it is re-graded all the same: the project's heat reads
        # its level, which may have lapsed since it was last graded (a hunt's find: an event
        # of another type graded the heat from the lapsed level, and kept it).
        job.guards.add(project.owner_id)
        if event_type in rulebook.owned_project_event_types or rulebook.ages:
            job.customer_ids.add(project.owner_id)


def get_event(session: Session, event_id: int) -> m.Event:
    event = session.get(m.Event, event_id)
    if event is None:
        raise NotFound(f"no event with id {event_id}")
    return event
