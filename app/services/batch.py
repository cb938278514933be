"""Many events in one request (the ERP's bulk path, the CSV import).

Each item is validated and stored on its own: a bad item is reported, the others are kept
(unless the batch is atomic). Every item must carry an `external_id`, so a re-sent batch
finds its items stored and changes nothing. Grades are re-computed once per touched
subject at the end, not once per event — all inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import String, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.chunks import chunked
from app.db import models as m
from app.db.engine import one_of, run, run_many
from app.db.facts import stored_fact
from app.domain.rulebook import Rulebook
from app.errors import MAX_LISTED, FieldError, Invalid
from app.grading import Effect, Regrade, lock_customers, regrade
from app.services import outbox
from app.services.events import EVENT_COLUMNS, INSERT_NEW_EVENT, Checked, NewEvent, Subjects, add_subjects, check_new_event, event_values, twin_of

MAX_ITEMS = 10_000
EXTERNAL_ID_REQUIRED = FieldError("external_id", "is required in a batch: it is what makes a re-sent batch change nothing")
_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")


@dataclass
class ItemResult:
    index: int
    status: str  # created | duplicate | rejected
    event_id: int | None = None
    errors: list[FieldError] = field(default_factory=list)


@dataclass
class BatchOutcome:
    results: list[ItemResult]
    effects: list[Effect]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


# An item that could not even be read (bad JSON, wrong types) arrives as its problems.
Item = NewEvent | list[FieldError]


def record_batch(session: Session, rulebook: Rulebook, items: Sequence[Item], *, atomic: bool, actor: str | None, now: datetime) -> BatchOutcome:
    """Store what is valid; with `atomic`, raise Invalid (storing nothing) if any item is not."""
    results: list[ItemResult | None] = [None] * len(items)
    if session.get_bind().dialect.name == "postgresql":
        # Plans made for this batch's own lists, not a connection's cached generic plan.
        # psycopg prepares a statement on its 5th run, and PostgreSQL may then keep one plan
        # for every later run, made for the table as its statistics last described it: on a
        # table filled faster than autovacuum analyzes it (a first import), the look-up of
        # stored items below kept a sequential scan, 4 ms a batch at 5,000 events and
        # 150 ms at 20,000 (bench/batch_import.py). Planning a batch's ~20 statements anew
        # costs far less than one such scan; a single POST keeps its cached plans.
        session.execute(_CUSTOM_PLANS)
    stored = _already_stored(session, items)
    checked: dict[int, Checked] = {}
    # The index of the first item checked with each (source, external_id), and of that first
    # item by the index of each later one with the pair: its duplicates, whatever they say.
    firsts: dict[tuple[str, str], int] = {}
    repeats: dict[int, int] = {}
    job = Regrade(trigger={"kind": "batch"}, actor=actor, now=now)
    subjects = Subjects(session)
    job.locked = subjects.prefetch([i for i in items if isinstance(i, NewEvent)])
    for index, item in enumerate(items):
        if isinstance(item, list):
            results[index] = ItemResult(index, "rejected", errors=item)
            continue
        if item.external_id is None:
            # Its other problems too: an atomic batch's answer lists every problem of every item.
            problems = [EXTERNAL_ID_REQUIRED]
            try:
                check_new_event(rulebook, item, now=now, subjects=subjects)
            except Invalid as exc:
                problems += exc.errors
            results[index] = ItemResult(index, "rejected", errors=problems)
            continue
        key = (item.source, item.external_id)
        twin = stored.get(key)
        if twin is not None:
            results[index] = ItemResult(index, "duplicate", event_id=twin)
            continue
        if key in firsts:  # a second item with the pair of one checked before it: its duplicate, not compared
            repeats[index] = firsts[key]
            continue
        try:
            c = check_new_event(rulebook, item, now=now, subjects=subjects)
        except Invalid as exc:
            results[index] = ItemResult(index, "rejected", errors=exc.errors)
            continue
        checked[index] = c
        firsts[key] = index
        add_subjects(job, rulebook, c.customer, c.project, item.type)

    rejected = [r for r in results if r is not None and r.status == "rejected"]
    if atomic and rejected:
        errors = [FieldError(f"[{r.index}].{e.field}" if e.field else f"[{r.index}]", e.reason) for r in rejected for e in r.errors]
        # Listed up to MAX_LISTED, as every 422's errors are: the detail says how many there
        # are, or a caller fixed the first twenty and learnt of the rest on the next try.
        listed = f" ({len(errors)} problems, the first {MAX_LISTED} listed)" if len(errors) > MAX_LISTED else ""
        raise Invalid(f"{len(rejected)} of {len(items)} items are not valid{listed}; in an atomic batch nothing was stored", errors=errors)

    # Customers first, in id order, as every writer does; grading locks the projects.
    lock_customers(session, job)
    values = {index: event_values(c, actor=actor, now=now) for index, c in checked.items()}
    created_ids: dict[int, int] = {}
    stored_ids = _store(session, checked, values)
    for index, (event_id, created) in stored_ids.items():
        results[index] = ItemResult(index, "created" if created else "duplicate", event_id=event_id)
        if created:
            _note_cause(job, checked[index], event_id)
            job.changed_events[event_id] = stored_fact(event_id, values[index])
            created_ids[index] = event_id
    for index, first in repeats.items():
        results[index] = ItemResult(index, "duplicate", event_id=stored_ids[first][0])
    # One read of the subscriptions serves the events' messages and the grade changes', as
    # for a single event.
    job.subscribers.update(outbox.subscribers_by_type(session))
    outbox.enqueue_each(
        session,
        outbox.EVENT_CREATED,
        lambda: [outbox.stored_event_payload(event_id, values[index]) for index, event_id in created_ids.items()],
        now,
        wanted=job.subscribers[outbox.EVENT_CREATED],
    )
    effects = regrade(session, rulebook, job) if job.causes else []
    return BatchOutcome([r for r in results if r is not None], effects)


def _store(session: Session, checked: dict[int, Checked], values: dict[int, dict[str, Any]]) -> dict[int, tuple[int, bool]]:
    """Insert the checked items: {index: (event id, created)}. One multi-row `INSERT … ON
    CONFLICT DO NOTHING`, as a single event is stored: an item whose twin a concurrent
    writer stored after `_already_stored` looked is not inserted, and is answered with
    that twin."""
    if not checked:
        return {}
    # The ids come back with their (source, external_id), unique in the batch, and are
    # matched by it: SQLite returns the rows in no promised order, and asking SQLAlchemy for
    # them in parameter order made it run one INSERT per row there (it has no sentinel for
    # the order on SQLite): 23 ms of CPU per 500 items, against 12 ms for this one statement.
    inserted = _insert(session, [values[i] for i in checked])
    ids = {(source, external_id): event_id for event_id, source, external_id in inserted}
    stored = {}
    for index, c in checked.items():
        event_id = ids.get((c.new.source, c.new.external_id))
        # Not inserted: rare, only a concurrent writer's twin.
        stored[index] = (event_id, True) if event_id is not None else (twin_of(session, c.new).id, False)
    return stored


def _insert(session: Session, rows: list[dict[str, Any]]) -> Iterable[Any]:
    """INSERT the rows, ON CONFLICT (source, external_id) DO NOTHING, RETURNING the id,
    source and external_id of each row inserted."""
    if session.get_bind().dialect.name == "postgresql":
        return run(session, _INSERT_COLUMNS, **{c.name: [row[c.name] for row in rows] for c in _COLUMNS})
    result = run_many(session, _INSERT_ROWS, rows)
    assert result is not None  # there are rows
    return result


_E = m.Event.__table__
_COLUMNS = EVENT_COLUMNS
# SQLite: one multi-row VALUES list per 500 rows, on the cursor (`run_many`).
_INSERT_ROWS = INSERT_NEW_EVENT["sqlite"].returning(_E.c.source, _E.c.external_id)
# PostgreSQL: one array per column, `INSERT … SELECT * FROM unnest(…)`. A VALUES list of
# 500 rows is 5,000 parameters: psycopg re-parsed the long statement on every batch (it
# caches statements of up to 4 KB and 50 parameters) and the server planned it anew; it
# took 19 ms of client CPU and 71 ms of wall time per 500 rows, against 9 ms and 31 ms
# with the arrays (the Core floor's executemany: 9 ms and 25 ms).
# Arrays of VARCHAR without a length: a cast to VARCHAR(n) would cut a longer value where
# the INSERT refuses it.
_UNNESTED = func.unnest(*(bindparam(c.name, type_=ARRAY(String() if isinstance(c.type, String) else c.type)) for c in _COLUMNS)).table_valued(*(c.name for c in _COLUMNS)).render_derived()
_INSERT_COLUMNS = (
    pg_insert(_E)
    .from_select([c.name for c in _COLUMNS], select(_UNNESTED))
    .on_conflict_do_nothing(index_elements=[_E.c.source, _E.c.external_id])
    .returning(_E.c.id, _E.c.source, _E.c.external_id)
)


# Prebuilt: the (source, external_id) pairs as a tuple IN list cost 50 ms of SQLAlchemy's
# compiling per 500-item batch on PostgreSQL (the database's own work was 4 ms). On
# PostgreSQL the ids go as one array (`= ANY`): in one in-process run on a table that had
# grown since its last ANALYZE, the prepared statement's generic plan compared every row
# of the source with each of 500 IN-list parameters (100-230 ms per look-up, growing with
# the table; 79-94 ms with the array). Through the API the same happened on 2026-12-04
# (41 ms growing to 153 ms by 20,000 events): a cached generic plan, which `record_batch`
# now declines on PostgreSQL (plan_cache_mode); then 1-6 ms.
_STORED = {dialect: select(_E.c.external_id, _E.c.id).where(_E.c.source == bindparam("source"), ids) for dialect, ids in one_of(_E.c.external_id, "ids").items()}


def _already_stored(session: Session, items: Sequence[Item]) -> dict[tuple[str, str], int]:
    """The ids of events already stored under the items' (source, external_id), in a few
    queries (one per source and 500 ids) rather than one per item."""
    by_source: dict[str, set[str]] = {}
    for i in items:
        if isinstance(i, NewEvent) and i.external_id is not None:
            by_source.setdefault(i.source, set()).add(i.external_id)
    found: dict[tuple[str, str], int] = {}
    for source, external_ids in sorted(by_source.items()):
        for chunk in chunked(sorted(external_ids)):
            found.update(((source, ext), id_) for ext, id_ in run(session, _STORED[session.get_bind().dialect.name], source=source, ids=chunk))
    return found


def _note_cause(job: Regrade, c: Checked, event_id: int) -> None:
    subjects: list[tuple[str, int]] = []
    if c.customer is not None:
        subjects.append(("customer", c.customer.id))
    if c.project is not None:
        subjects += [("project", c.project.id), ("customer", c.project.owner_id)]
    for key in dict.fromkeys(subjects):
        job.causes.setdefault(key, []).append(event_id)
