"""Grading: keeps every stored grade equal to a fresh evaluation of the event log.

This is the only place grades are written. An event (or its retraction) re-grades its
customer and its project's owner; a level change re-grades every project linked to that
customer; every change of a grade appends one history row. All of it happens inside the
caller's transaction, after the subjects' rows are locked (customers before projects,
each in id order, so concurrent writers queue instead of deadlocking or losing updates).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable

from sqlalchemy import Boolean, Text, Update, bindparam, case, cast, func, null, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from app.chunks import chunked
from app.db import facts as repo
from app.db.facts import CustomerState, ProjectState, State
from app.db import models as m
from app.db.engine import run, run_many
from app.db.logs import WriteLogs
from app.db.types import encode_grade, grade_digest
from app.domain.evaluation import CriterionResult, Gap, HeatGrade, LevelGrade, evaluate_heat, evaluate_level
from app.domain.facts import CustomerFacts, Event, LinkedCustomer, ProjectFacts, customer_before, project_before
from app.domain.rulebook import Rulebook
from app.errors import RulebookChanged
from app.services import outbox

LEVEL = "relationship_level"
HEAT = "deal_heat"
# A grade's move with time alone, recorded by the system.
TIME = {"kind": "time"}
SYSTEM = "system"

# How this release grades a log under a rulebook. Change it with any change of what a given
# log and rulebook grade to (evaluation, the facts it reads, what a grade records): the
# first start-up of the new release then re-grades everything (history trigger `release`,
# app/services/state.py `sync_grading`), as a rulebook switch does, and processes of the
# release before find it no longer in force (`active_digest`), as after a switch.
# tests/test_grading_release.py fails when what a fixed log grades to changes and this
# does not, and says what to record when it does.
# 2026-12-07: stage changes at one instant, attribute defaults read for older events, a
# heat's `since` moved where it lapsed and came back.
# 2026-12-08: events at one instant are ranked by their attributes before the customer and
# project they name (app/domain/facts.py `_tie_break`), as docs/rulebook.md says.
GRADING = "2026-12-08"

# The database's record of its active rulebook (app/services/state.py): the version, and
# the digest of what grades (`active_digest`).
RULEBOOK_VERSION = "rulebook_version"
ACTIVE_DIGEST = "rulebook_digest"


@lru_cache(maxsize=16)
def _graded_by(content: str, release: str) -> str:
    return hashlib.sha256(f"{content}\n{release}".encode()).hexdigest()


def active_digest(rulebook: Rulebook) -> str:
    """What the database records as grading its grades: the rulebook's content
    (`Rulebook.digest`) and this release's grading (`GRADING`). A process compares it with
    its own on every write that grades (`in_force`): one of an older release, or with
    another rulebook, then grades nothing (a review found the release before writing its
    own stage ties into a database the new release had re-graded)."""
    return _graded_by(rulebook.digest, GRADING)


_RECORDED = {key: select(m.Setting.value).where(m.Setting.key == key) for key in (RULEBOOK_VERSION, ACTIVE_DIGEST)}
# The active digest as a column of a write's own statement (an event's INSERT returns it):
# `active_is`, without a statement of its own.
ACTIVE_DIGEST_COLUMN = _RECORDED[ACTIVE_DIGEST].scalar_subquery()


def in_force(session: Session, rulebook: Rulebook) -> None:
    """Refuse (RulebookChanged) to grade under `rulebook` if the database's active rulebook
    is another: the operator switched it (`rapport migrate`) while this process ran, or
    another process started with another file and switched it. Every write that grades
    calls this after it has locked or inserted a customer or a project, the rows a switch
    re-grades (`sync_rulebook` holds them all against writers until it commits): a write
    that locked first is re-graded by the switch after it commits, and one that waited
    reads the switched rulebook here."""
    found = run(session, _RECORDED[ACTIVE_DIGEST]).scalars()
    active_is(session, rulebook, found[0] if found else None)


def active_is(session: Session, rulebook: Rulebook, active: str | None) -> None:
    """`in_force`, given the `active` digest a statement of the write read after its lock
    (`ACTIVE_DIGEST_COLUMN`). A database that records no digest yet (None: none of this
    release's processes has started on it) is taken as graded under this one."""
    if active is not None and active != active_digest(rulebook):
        found = run(session, _RECORDED[RULEBOOK_VERSION]).scalars()
        version = found[0] if found else "?"
        now_grading = (
            f"rulebook {version!r}, graded by another release of Rapport than this process's ({GRADING!r})"
            if version == rulebook.version
            else f"rulebook {version!r}"
        )
        raise RulebookChanged(
            f"this process grades under rulebook {rulebook.version!r}, but the database's grades are now those of {now_grading}: "
            "it stores nothing until it is restarted as the others run (retry on another process)",
            headers={"Retry-After": "5"},
        )


@dataclass(frozen=True)
class Effect:
    """One grade change, as reported to the caller that caused it."""

    subject: str  # "customer" | "project"
    id: int
    metric: str
    old: int
    new: int

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "id": self.id, "metric": self.metric, "old": self.old, "new": self.new}


@dataclass
class Regrade:
    """What one write asks to be re-graded, and why."""

    trigger: dict[str, Any]
    actor: str | None
    now: datetime
    customer_ids: set[int] = field(default_factory=set)
    # Customers locked but not re-graded for their own sake: the owners of projects whose
    # logs the write changes (an owner's lock guards its projects' logs, app/db/logs.py).
    guards: set[int] = field(default_factory=set)
    project_ids: set[int] = field(default_factory=set)
    # Customers whose own project-less events a project criterion reads (e.g. `advocates`
    # for H70.3): their projects are re-graded even if their level stays.
    fan_out_from: set[int] = field(default_factory=set)
    # For a batch: which of its events touched each ("customer"|"project", id), named in
    # that subject's history trigger.
    causes: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    # The webhook subscriptions per message type, read once per job (one transaction), not
    # once per grade change.
    subscribers: dict[str, list[int]] = field(default_factory=dict)
    # The customers this job has locked (see `lock_customers`): regrade reuses them.
    locked: dict[int, CustomerState] = field(default_factory=dict)
    # The events this write stored or retracted, as they now stand, by id: the logs they are
    # in changed (app/db/logs.py).
    changed_events: dict[int, Event] = field(default_factory=dict)
    # The projects of owners this write re-grades, where it read them already (a single
    # event's INSERT returns them: `repo.owned_projects`).
    owned: repo.Owned = field(default_factory=dict)
    # `regrade_everything` only: the subjects whose level or heat was found other than
    # their history last recorded (changed outside Rapport: SQL, a restored backup of one
    # table), with that recorded value and the grade as found (`_as_stored`).
    outside: dict[tuple[str, int], tuple[int, Any]] = field(default_factory=dict)
    # The write's own statement found its rulebook the active one, after its locks (an
    # event's INSERT: `ACTIVE_DIGEST_COLUMN`): `regrade` need not read it again.
    in_force: bool = False
    # Under a rulebook whose grades age (`Rulebook.ages`), for the customers this write
    # re-grades: the level each was worth at `now` without the write (what their projects'
    # grades before the write read), and the moves time had made to them since they were
    # last graded (named by their projects' own `time` rows).
    levels_before: dict[int, int] = field(default_factory=dict)
    aged: dict[int, Effect] = field(default_factory=dict)
    # `regrade_everything` only: read again once each round of rows is held, as `now`. On
    # PostgreSQL `rapport regrade` runs beside the service's writes, which commit between its
    # rounds; graded as of the command's start, a subject a write had just re-graded at a
    # later instant went back (its fresh event was in the future then), and its history row
    # was dated before the write's (a hunt's find).
    clock: Callable[[], datetime] | None = None

    def trigger_for(self, subject: str, subject_id: int) -> dict[str, Any]:
        events = self.causes.get((subject, subject_id))
        return {**self.trigger, "event_ids": events} if events else self.trigger


def snapshot(grade: LevelGrade | HeatGrade) -> dict[str, Any]:
    """What is stored with a grade (and in its history rows): every criterion and the gap."""
    return {"criteria": [_criterion(c) for c in grade.criteria], "next": _gap(grade.next)}


def _criterion(c: CriterionResult) -> dict[str, Any]:
    out: dict[str, Any] = {"id": c.id, "met": c.met, "evidence": list(c.evidence)}
    if c.related:
        out["related"] = [{"subject": r.subject, "id": r.id, **({"level": r.level} if r.level is not None else {})} for r in c.related]
    return out


def _gap(gap: Gap | None) -> dict[str, Any] | None:
    return None if gap is None else {"target": gap.target, "missing": list(gap.missing), "need": gap.need}


def gap_closed(evidence: Any) -> bool:
    """Whether stored evidence (a `snapshot`) has no `next`: nothing left to reach. At 0 % that
    tells a lost project from a cold one, which has a tier to reach; at the top tier or level
    an open grade has none either."""
    return isinstance(evidence, dict) and evidence.get("next", {}) is None


def initial_level(rulebook: Rulebook, customer: m.Customer, now: datetime) -> LevelGrade:
    """Grade a customer that has no events yet (so its criteria and gap show from the start)."""
    grade = evaluate_level(rulebook, CustomerFacts(customer.id or 0, customer.kind, ()), now)
    customer.level, customer.level_since, customer.grade = grade.level, now, snapshot(grade)
    customer.grade_hash = grade_digest(_head(customer, _HEAD[CustomerState]), encode_grade(customer.grade))
    return grade


def initial_heat(rulebook: Rulebook, project: m.Project, owner: CustomerState, now: datetime) -> HeatGrade:
    grade = evaluate_heat(rulebook, ProjectFacts(project.id or 0, LinkedCustomer(owner.id, owner.level), ()), now)
    project.heat, project.heat_since, project.stage, project.closed = grade.percent, now, grade.stage, grade.closed
    project.grade = snapshot(grade)
    project.grade_hash = grade_digest(_head(project, _HEAD[ProjectState]), encode_grade(project.grade))
    return grade


def up_to_date(session: Session, rulebook: Rulebook, customer: CustomerState, now: datetime) -> CustomerState:
    """`customer` (locked) re-graded as of `now` first under a rulebook whose grades age, its
    move recorded as time's, as `rapport regrade` records it: a write that reads its level
    (a new project's first heat) must not read one that has lapsed since it was last graded
    (a hunt's find: a project created under a lapsed owner started at 30 %, a heat it never
    had). Under a rulebook without windows the stored level is current: nothing to do."""
    if not rulebook.ages:
        return customer
    job = Regrade(trigger=TIME, actor=SYSTEM, now=now, customer_ids={customer.id}, locked={customer.id: customer})
    regrade(session, rulebook, job)
    return job.locked[customer.id]


def record_created(session: Session, rulebook: Rulebook, row: m.Customer | m.Project, grade: LevelGrade | HeatGrade, now: datetime) -> None:
    """A new customer or project (stored, so with its id) whose first grade is above 0 gets a
    history row from 0 to it, trigger `created`: every history starts at 0, as `verify`
    and a re-grade read it. The default rulebook grades nothing above 0 without events;
    one whose step needs none (`at_least`, a tier on the owner's level) does."""
    if isinstance(grade, LevelGrade):
        subject, metric, new, heat = "customer", LEVEL, grade.level, None
    else:
        subject, metric, new, heat = "project", HEAT, grade.percent, grade
    if new != 0:
        job = Regrade(trigger={"kind": "created"}, actor=SYSTEM, now=now)
        _append(session, rulebook, subject, row.id, metric, 0, new, snapshot(grade), job.trigger, job, heat=heat)


def lock_customers(session: Session, job: Regrade) -> dict[int, CustomerState]:
    """Lock the customers `job` re-grades (and its `guards`), once: a write locks them
    before it inserts (so whoever holds the rows grades them next), and `regrade` reuses
    those rows. Returns those it re-grades."""
    wanted = job.customer_ids | job.guards
    if not wanted <= job.locked.keys():
        job.locked = repo.lock_customers(session, wanted)  # all of them again, in id order
    return {cid: job.locked[cid] for cid in sorted(job.customer_ids)}


def regrade(session: Session, rulebook: Rulebook, job: Regrade) -> list[Effect]:
    """Re-grade what `job` names (and what their level changes reach); return the changes."""
    logs = WriteLogs(session, job.changed_events.values())
    for subject, id_ in logs.changed():  # every changed log's subject is graded (and stamped)
        (job.customer_ids if subject == "customer" else job.project_ids).add(id_)
    customers = lock_customers(session, job)
    if not job.in_force:
        in_force(session, rulebook)
    effects: list[Effect] = []
    level_changes: dict[int, Effect] = {}
    project_ids = set(job.project_ids)
    facts = repo.customer_facts_many(session, customers.values(), rulebook.owned_project_event_types, logs, job.owned)
    writes = Writes(logs)
    for cid, customer in customers.items():
        effect = _regrade_customer(session, rulebook, customer, facts[cid], job, writes)
        if effect is not None:
            effects.append(effect)
            level_changes[cid] = effect
        # A level time had moved fans out too, even where the write brought it back to where
        # it was stored: its projects' grades moved with it, and back.
        if effect is not None or cid in job.fan_out_from or cid in job.aged:
            project_ids |= repo.linked_project_ids(session, cid)
    # Written before the projects' facts are read: a project's heat reads its customers' levels.
    writes.flush(session)

    projects = repo.lock_projects(session, project_ids)
    project_facts = repo.project_facts_many(session, projects.values(), rulebook.linked_customer_event_types, logs)
    for pid, project in projects.items():
        effect = _regrade_project(session, rulebook, project, project_facts[pid], job, level_changes, writes)
        if effect is not None:
            effects.append(effect)
    writes.flush(session)
    return effects


def _regrade_customer(session: Session, rulebook: Rulebook, customer: CustomerState, facts: CustomerFacts, job: Regrade, writes: Writes) -> Effect | None:
    grade = evaluate_level(rulebook, facts, job.now)
    stored = snapshot(grade)
    old = customer.level
    _record_outside(session, rulebook, "customer", customer.id, LEVEL, old, job)
    start = old
    if _ageing(rulebook, job):
        was = evaluate_level(rulebook, customer_before(facts, job.changed_events), job.now)
        job.levels_before[customer.id] = was.level
        if was.level != old:
            _append(session, rulebook, "customer", customer.id, LEVEL, old, was.level, snapshot(was), TIME, job, actor=SYSTEM)
            job.aged[customer.id] = Effect("customer", customer.id, LEVEL, old, was.level)
            start = was.level
    writes.add(customer, grade=stored, level=grade.level, since=job.now, moved=start != old)
    customer.level = grade.level
    if grade.level != start:
        _append(session, rulebook, "customer", customer.id, LEVEL, start, grade.level, stored, job.trigger_for("customer", customer.id), job)
    return None if grade.level == old else Effect("customer", customer.id, LEVEL, old, grade.level)


def _ageing(rulebook: Rulebook, job: Regrade) -> bool:
    """Whether this re-grade must tell time's moves from its write's: under a rulebook whose
    grades age, a grade may have moved since it was last graded (a window's events aged
    out, a dated event came within one) with nothing recorded. A write that re-grades it
    then records that move first, as time's (trigger `time`, by the system), and its own
    row from there, if it moves the grade again: its trigger names only what the write
    changed. So a level that had lapsed and that the write earns again shows both moves.
    Without a write's events (a re-grade of everything) the whole move is the job's own
    trigger's."""
    return rulebook.ages and bool(job.changed_events)


def _regrade_project(
    session: Session, rulebook: Rulebook, project: ProjectState, facts: ProjectFacts, job: Regrade, level_changes: dict[int, Effect], writes: Writes
) -> Effect | None:
    grade = evaluate_heat(rulebook, facts, job.now)
    stored = snapshot(grade)
    old, was_closed = project.heat, bool(project.closed)
    _record_outside(session, rulebook, "project", project.id, HEAT, old, job)
    linked = {facts.owner.customer_id, *facts.linked}
    start = (old, was_closed)
    if _ageing(rulebook, job):
        was = evaluate_heat(rulebook, project_before(facts, job.changed_events, job.levels_before), job.now)
        if (was.percent, was.closed) != start:
            aged = [e.as_dict() for cid, e in sorted(job.aged.items()) if cid in linked]
            _append(session, rulebook, "project", project.id, HEAT, old, was.percent, snapshot(was), {**TIME, "via": aged} if aged else TIME, job, heat=was, actor=SYSTEM)
            start = (was.percent, was.closed)
    writes.add(project, grade=stored, stage=grade.stage, closed=grade.closed, heat=grade.percent, since=job.now, moved=start != (old, was_closed))
    project.heat, project.closed = grade.percent, grade.closed
    # A cold project closed as lost (or a lost one reopened) stays at 0 %: a change all the
    # same, recorded as one (a row from 0 to 0, its message's tier says which).
    if (grade.percent, grade.closed) != start:
        via = [e.as_dict() for cid, e in sorted(_by_write(level_changes, job.aged).items()) if cid in linked]
        trigger = job.trigger_for("project", project.id)
        trigger = {**trigger, "via": via} if via else trigger
        _append(session, rulebook, "project", project.id, HEAT, start[0], grade.percent, stored, trigger, job, heat=grade)
    return None if (grade.percent, grade.closed) == (old, was_closed) else Effect("project", project.id, HEAT, old, grade.percent)


def _by_write(level_changes: dict[int, Effect], aged: dict[int, Effect]) -> dict[int, Effect]:
    """The customers' level moves their write made: each from where time had left it
    (`aged`) to where the write left it (`level_changes`, or back where it was stored).
    Those time alone made are left out: their projects' `time` rows name them."""
    out = {}
    for cid in level_changes.keys() | aged.keys():
        start = aged[cid].new if cid in aged else level_changes[cid].old
        end = level_changes[cid].new if cid in level_changes else aged[cid].old
        if start != end:
            out[cid] = Effect("customer", cid, LEVEL, start, end)
    return out


def _update(table: Any, metrics: tuple[str, ...], since: str, columns: tuple[str, ...], dialect: str) -> Update:
    """The UPDATE of a re-graded row: its new grade, digest and log stamp, and a new version
    if its grade differs (`new_bump`, decided by `Writes` from the digests). The `since`
    column (level_since, heat_since) takes the write's time only where one of the `metrics`
    (level; heat, or closed) changes, or where the write says it moved and came back
    (`new_moved`: time had moved it, the write moved it back, both on record): a SET reads
    the row as it was before the UPDATE, on both engines, so a write need not read the old
    date to keep it. The new grade comes as JSON text, encoded once for its digest and its
    column."""
    new: dict[str, Any] = {name: bindparam(f"new_{name}") for name in (*columns, "grade_hash", "log_stamp")}
    text = bindparam("new_grade", type_=Text)
    new["grade"] = cast(text, JSONB) if dialect == "postgresql" else text
    moved = or_(bindparam("new_moved", type_=Boolean), *(table.c[metric].is_distinct_from(new[metric]) for metric in metrics))
    new[since] = case((moved, bindparam("new_since", type_=table.c[since].type)), else_=table.c[since])
    return update(table).where(table.c.id == bindparam("row_id")).values({**new, "version": table.c.version + bindparam("new_bump")})


# What a grade's digest covers besides the grade itself (`grade_digest`): what else the
# UPDATE sets and a new version counts.
_HEAD = {CustomerState: ("level",), ProjectState: ("heat", "stage", "closed")}
# Each kind's metric (and the column dating its last change); `Writes.add` also compares it.
_METRIC = {CustomerState: "level", ProjectState: "heat"}
# What dates a grade's change (its `since`): the metric, and for a project whether it is closed.
_SINCE_ON = {CustomerState: ("level",), ProjectState: ("heat", "closed")}
_UPDATES = {
    (kind, dialect): _update(table, _SINCE_ON[kind], f"{_METRIC[kind]}_since", _HEAD[kind], dialect)
    for dialect in ("sqlite", "postgresql")
    for kind, table in [(CustomerState, m.Customer.__table__), (ProjectState, m.Project.__table__)]
}
_SUBJECT = {CustomerState: "customer", ProjectState: "project"}


def _head(row: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in names)


class Writes:
    """The re-graded rows of one grading pass, written together: one prebuilt UPDATE per
    table, run once with every row's values (executemany), not once per row (a batch
    import re-grades hundreds of subjects, and a statement's round through SQLAlchemy
    cost more than the database's own work on the row). The ORM's unit of work would have
    spent more still on finding and writing the changes.

    A row is written only if its grade or its log changed. Whether the grade changed is
    told by its digest (`grade_hash`), read with the row's state: the database neither
    returns the stored grade nor compares it (comparing JSON in the UPDATE had the
    database parse both grades, on PostgreSQL three times per row)."""

    def __init__(self, logs: WriteLogs) -> None:
        self._logs = logs
        self._rows: dict[type, list[dict[str, Any]]] = {}

    def add(self, state: CustomerState | ProjectState, *, grade: dict[str, Any], since: datetime, moved: bool = False, **values: Any) -> None:
        """Queue the new grade of `state`'s row (and its log's stamp) if either changed, and
        give `state` its new digest and stamp: a later read in this write knows the row as
        it will be. `moved`: the grade changed and came back within this write, so its
        `since` moves though its value is the stored one."""
        kind = type(state)
        encoded = encode_grade(grade)
        digest = grade_digest(tuple(values[name] for name in _HEAD[kind]), encoded)
        stamp = self._logs.stamp((_SUBJECT[kind], state.id), state.log_stamp)
        # The metric is read with the row: a row whose level or heat was changed behind
        # Rapport's back (SQL) still carries the digest of its old grade, and is written back.
        changed = digest != state.grade_hash or getattr(state, _METRIC[kind]) != values[_METRIC[kind]]
        if not changed and not moved and stamp == state.log_stamp:
            return
        # A grade that moved and came back has a new `since`: the representation changed.
        params = {"row_id": state.id, "new_since": since, "new_moved": moved, "new_grade_hash": digest, "new_log_stamp": stamp, "new_bump": int(changed or moved)}
        # orjson: a grade is our own dicts of strings, integers and booleans, which it encodes
        # as json would, several times faster (json.dumps of the grades was 9 % of a batch).
        params["new_grade"] = encoded.decode()
        params.update((f"new_{name}", value) for name, value in values.items())
        self._rows.setdefault(kind, []).append(params)
        state.grade_hash, state.log_stamp = digest, stamp

    def flush(self, session: Session) -> None:
        """Write what was added."""
        dialect = session.get_bind().dialect.name
        for kind, params in self._rows.items():
            run_many(session, _UPDATES[kind, dialect], params)
        self._rows.clear()


def _append(
    session: Session,
    rulebook: Rulebook,
    subject: str,
    subject_id: int,
    metric: str,
    old: int,
    new: int,
    evidence: dict[str, Any],
    trigger: dict[str, Any],
    job: Regrade,
    *,
    heat: HeatGrade | None = None,
    actor: str | None = None,
) -> None:
    """Append one history row (and queue its webhook messages); its actor is the job's
    unless `actor` names another."""
    session.add(
        change := m.GradeChange(
            subject_type=subject,
            subject_id=subject_id,
            metric=metric,
            old=old,
            new=new,
            rulebook_version=rulebook.version,
            evidence=evidence,
            trigger=trigger,
            actor=actor or job.actor,
            at=job.now,
        )
    )
    # Webhooks out: queued in this transaction, so they are sent if and only if it commits.
    type_ = outbox.GRADE_EVENT[subject]
    if type_ not in job.subscribers:
        job.subscribers[type_] = outbox.subscribers(session, type_)
    outbox.enqueue(session, type_, lambda: outbox.grade_payload(session, rulebook, change, heat), job.now, wanted=job.subscribers[type_])


def _record_outside(session: Session, rulebook: Rulebook, subject: str, subject_id: int, metric: str, found: int, job: Regrade) -> None:
    """A level or heat found other than its history last recorded was changed outside
    Rapport: the history gets the move it missed, from what it recorded to what was found
    (trigger `outside`, with the grade as found), before the re-grade's own row. So the
    history stays one chain, `rapport verify` finds nothing once the grade is right again,
    and the change by hand is on record, found at this re-grade's time."""
    outside = job.outside.pop((subject, subject_id), None)
    if outside is not None:
        recorded, found_grade = outside
        _append(session, rulebook, subject, subject_id, metric, recorded, found, found_grade, {"kind": "outside"}, job)


def regrade_everything(session: Session, rulebook: Rulebook, job: Regrade, *, batch: int = 500) -> list[Effect]:
    """Re-grade every customer, then every project (levels first: heat reads levels).

    Used when the active rulebook changes and by `rapport regrade` (time-window criteria),
    which is also the repair after an incident (`_as_stored`). Unless `job` is the switch
    itself (`in_force` set), it refuses (RulebookChanged) once it holds the first customers
    if `rulebook` is no longer the active one: a switch (which holds every row while it
    re-grades) may have committed after the command checked."""
    effects: list[Effect] = []
    logs = WriteLogs(session, keep=False)
    writes = Writes(logs)
    for ids in chunked(session.scalars(select(m.Customer.id).order_by(m.Customer.id)).all(), batch):
        customers = _as_stored(session, rulebook, repo.lock_customers(session, ids), job)
        _held(job)
        if not job.in_force:  # once the first rows are held: a switch that committed before is seen
            in_force(session, rulebook)
            job.in_force = True
        facts = repo.customer_facts_many(session, customers.values(), rulebook.owned_project_event_types, logs)
        for cid, customer in customers.items():
            effect = _regrade_customer(session, rulebook, customer, facts[cid], job, writes)
            if effect:
                effects.append(effect)
        writes.flush(session)
    level_changes = {e.id: e for e in effects}
    for ids in chunked(session.scalars(select(m.Project.id).order_by(m.Project.id)).all(), batch):
        projects = _as_stored(session, rulebook, repo.lock_projects(session, ids), job)
        _held(job)
        facts = repo.project_facts_many(session, projects.values(), rulebook.linked_customer_event_types, logs)
        for pid, project in projects.items():
            effect = _regrade_project(session, rulebook, project, facts[pid], job, level_changes, writes)
            if effect:
                effects.append(effect)
        writes.flush(session)
    return effects


def _held(job: Regrade) -> None:
    """A round's rows are held: a write to them has committed or must wait, so the round is
    graded as of now, after every write it may read (`Regrade.clock`)."""
    if job.clock is not None:
        job.now = max(job.now, job.clock())


def _as_stored(session: Session, rulebook: Rulebook, states: dict[int, State], job: Regrade) -> dict[int, State]:
    """`states` as their rows are stored now: re-grading everything is also the repair after
    an incident, where a grade was changed by hand (SQL, a restored backup of one table).

    - Their digests are computed from the rows, not read from `grade_hash`: a grade changed
      by hand kept its old digest, and a pass trusting it would leave that grade as it was.
    - A level or heat other than the subject's history last recorded (0 without history)
      goes into `job.outside`, with the grade as found: `_record_outside` puts the change
      on record.
    Two more reads per round, on the rare path."""
    if not states:
        return states
    kind = type(next(iter(states.values())))
    model, subject, metric = (m.Customer, "customer", LEVEL) if kind is CustomerState else (m.Project, "project", HEAT)
    head = [getattr(model, name) for name in _HEAD[kind]]
    grades = {}
    for row in session.execute(select(model.id, model.grade, *head).where(model.id.in_(states))):
        states[row[0]].grade_hash = grade_digest(tuple(row[2:]), encode_grade(row[1]))
        grades[row[0]] = row[1]
    history = m.GradeChange
    last = select(func.max(history.id)).where(history.subject_type == subject, history.metric == metric, history.subject_id.in_(states)).group_by(history.subject_id)
    # A project's last row's evidence, for whether it was closed then (`_closed_on_record`).
    closed_then = history.evidence if kind is ProjectState else null()
    recorded = {sid: (new, evidence) for sid, new, evidence in session.execute(select(history.subject_id, history.new, closed_then).where(history.id.in_(last)))}
    for sid, state in states.items():
        value, evidence = recorded.get(sid, (0, None))
        if value != getattr(state, _METRIC[kind]):
            job.outside[(subject, sid)] = (value, grades[sid])
        elif kind is ProjectState:
            # Only `closed` changed by hand, at the percent on record (a hunt's find): the
            # history is right, and the pass rewrites the row from it with no row of its
            # own (a row from 100 % to 100 % would be no change on record, which verify
            # reports for ever).
            state.closed = _closed_on_record(rulebook, value, evidence, state.closed)
    return states


def _closed_on_record(rulebook: Rulebook, percent: int, evidence: Any, stored: bool) -> bool:
    """Whether a project's last history row left it closed. At 0 % its evidence says (a
    cold project has a tier to reach, a lost one has no `next`); a percent that is no tier
    is a closed stage's (won: 100 %), and a tier's percent is open, unless a closed stage
    has it too, which the row cannot tell: then as stored. (At the top tier `next` is
    missing too, open as the project is.)"""
    if percent == 0:
        return gap_closed(evidence)
    tiers, closing = {t.value for t in rulebook.tiers}, set(rulebook.closed_stages.values())
    if percent not in tiers:
        return percent in closing or stored
    return stored if percent in closing else False


