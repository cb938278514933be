"""Grading with the logs a process keeps between writes (app/db/logs.py): a kept log is
used only while its subject's row carries the stamp it was kept with, so another
process's write, a rolled-back write or a retraction never leaves a stale grade.

"Processes" here are two `Database` objects on the one test database: each has its own
kept logs, as two API processes do."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.db import models as m
from app.db.engine import Database, make_engine
from app.services import batch
from app.services.events import NewEvent, record_event, retract_event
from app.services.verify import replay
from tests.conftest import empty_tables
from tests.log_strategies import RULEBOOK, a_kit, an_event, make_world, new_event

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
INSTALLER = 3
# Everything installer level I asks (I1.1–I1.5), three visits among it.
LEVEL_ONE = [
    ("materials_sent", {"items": ["samples"]}),
    ("company_introduced", {}),
    ("inquiry_received", {}),
    ("impression_confirmed", {}),
    ("visit", {"reception": "welcoming"}),
    ("visit", {"reception": "neutral"}),
    ("visit", {"reception": "welcoming"}),
]


@pytest.fixture(scope="module")
def two(migrated: str) -> Iterator[tuple[Database, Database]]:
    a, b = Database(make_engine(migrated)), Database(make_engine(migrated))
    yield a, b
    a.dispose()
    b.dispose()


def _fresh(db: Database) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as s:
        make_world(s, NOW)


def _log(db: Database, type_: str, attributes: dict, *, customer: int = INSTALLER, minutes: int = 0) -> int:
    new = NewEvent(type=type_, customer_id=customer, attributes=attributes, occurred_at=NOW - timedelta(days=1, minutes=minutes))
    with db.session(write=True) as s:
        return record_event(s, RULEBOOK, new, actor="t", now=NOW).event.id


def _level(db: Database, customer: int = INSTALLER) -> int:
    with db.session(write=False) as s:
        return s.scalar(select(m.Customer.level).where(m.Customer.id == customer))


def _agrees_with_a_replay(db: Database) -> None:
    with db.session(write=False) as s:
        assert replay(s, RULEBOOK, as_of=NOW) == []


def _kept(db: Database, customer: int = INSTALLER) -> set[int]:
    """The ids of the events in the log `db`'s process keeps for the customer (any stamp)."""
    kept = db.logs._logs.get(("customer", customer))
    return {e.id for e in kept[1]} if kept else set()


def test_a_retraction_by_another_process_is_seen(two: tuple[Database, Database]) -> None:
    a, b = two
    _fresh(a)
    ids = [_log(a, type_, attrs, minutes=n) for n, (type_, attrs) in enumerate(LEVEL_ONE)]
    assert _level(a) == 1 and _kept(a) == set(ids)  # process A keeps the log it graded

    with b.session(write=True) as s:  # process B takes the third visit back: level 0
        retract_event(s, RULEBOOK, ids[-1], "wrong customer", actor="t", now=NOW)
    assert _level(b) == 0

    # A's kept log still counts three visits. Were it used, this event (which changes no
    # criterion) would put the level back to I.
    _log(a, "inquiry_received", {}, minutes=99)
    assert _level(a) == 0
    _agrees_with_a_replay(a)


def test_a_process_that_kept_a_log_sees_another_process_raise_the_level(two: tuple[Database, Database]) -> None:
    a, b = two
    _fresh(a)
    for n, (type_, attrs) in enumerate(LEVEL_ONE[:5]):
        _log(a, type_, attrs, minutes=n)
    _log(b, "visit", {"reception": "welcoming"}, minutes=10)
    # Were A's kept log used, it would count two visits with this one: level 0. There are three.
    _log(a, "visit", {"reception": "neutral"}, minutes=12)
    assert _level(a) == 1
    _agrees_with_a_replay(a)


def test_a_bidder_whose_log_another_process_changed_is_read_again(two: tuple[Database, Database]) -> None:
    """A project's heat reads its bidders' own events (H70.3: an `advocates`), from logs the
    writer does not hold locked: the one it knows must still carry the stamp of the row."""
    a, b = two
    _fresh(a)
    project = 1
    with a.session(write=True) as s:  # A grades installer 3 and the project: it knows 3's log
        new = NewEvent(type="bid_joined", customer_id=INSTALLER, project_id=project, attributes={"with_our_product": False}, occurred_at=NOW)
        record_event(s, RULEBOOK, new, actor="t", now=NOW)
    advocates = _log(b, "advocates", {})  # B: 3 advocates our product, on no project
    with a.session(write=True) as s:  # A re-grades the project: H70.3's evidence names it
        new = NewEvent(type="stage_changed", project_id=project, attributes={"stage": "bidding"}, occurred_at=NOW)
        record_event(s, RULEBOOK, new, actor="t", now=NOW)
    with a.session(write=False) as s:
        grade = s.scalar(select(m.Project.grade).where(m.Project.id == project))
    assert advocates in next(c["evidence"] for c in grade["criteria"] if c["id"] == "H70.3")
    _agrees_with_a_replay(a)


def test_a_write_that_rolls_back_leaves_nothing_kept(two: tuple[Database, Database]) -> None:
    a, _ = two
    _fresh(a)
    _log(a, "materials_sent", {"items": ["samples"]})
    kept_before = _kept(a)
    with pytest.raises(RuntimeError), a.session(write=True) as s:
        phantom = record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=INSTALLER, attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW).event.id
        raise RuntimeError("the request fails after grading")
    assert phantom not in _kept(a) and _kept(a) == kept_before
    for n, (type_, attrs) in enumerate(LEVEL_ONE[1:]):
        _log(a, type_, attrs, minutes=n)
    assert _level(a) == 1
    _agrees_with_a_replay(a)


def test_a_process_that_keeps_no_logs_grades_the_same(migrated: str) -> None:
    db = Database(make_engine(migrated), log_cache_events=0)
    try:
        _fresh(db)
        for n, (type_, attrs) in enumerate(LEVEL_ONE):
            _log(db, type_, attrs, minutes=n)
        assert _level(db) == 1 and len(db.logs) == 0
        _agrees_with_a_replay(db)
        with db.session(write=False) as s:
            stamp = s.scalar(select(m.Customer.log_stamp).where(m.Customer.id == INSTALLER))
        assert stamp != 0  # stamped all the same, for the processes that do keep logs
    finally:
        db.dispose()


retraction = st.tuples(st.just("retract"), st.integers(0, 1000))
fail = st.just(("fail",))
batch_of = st.lists(an_event(), min_size=1, max_size=6).map(lambda events: ("batch", events))
steps = st.lists(
    st.tuples(st.sampled_from("ab"), st.one_of(an_event(), a_kit(), retraction, fail, batch_of)),
    min_size=1,
    max_size=30,
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
def test_two_processes_in_any_interleaving_keep_every_grade_equal_to_a_replay(two: tuple[Database, Database], steps: list) -> None:
    """Writes alternate between two processes at random, some retract, some roll back after
    grading, some are batches; every stored grade still equals a fresh evaluation of the
    whole log."""
    dbs = dict(zip("ab", two))
    _fresh(dbs["a"])
    recorded: list[int] = []
    for who, step in steps:
        db = dbs[who]
        if step == ("fail",):
            if recorded:
                with pytest.raises(RuntimeError), db.session(write=True) as s:
                    retract_event(s, RULEBOOK, recorded[-1], "test", actor="t", now=NOW)
                    raise RuntimeError("rolled back after grading")
            continue
        if isinstance(step, tuple) and step[0] == "batch":
            items = [new_event(drawn, NOW, source="erp", external_id=f"{len(steps)}-{id(drawn)}") for drawn in step[1]]
            with db.session(write=True) as s:
                outcome = batch.record_batch(s, RULEBOOK, items, atomic=False, actor="t", now=NOW)
            recorded += [r.event_id for r in outcome.results if r.status == "created"]
            continue
        if isinstance(step, tuple):
            if recorded:
                with db.session(write=True) as s:
                    retract_event(s, RULEBOOK, recorded[step[1] % len(recorded)], "test", actor="t", now=NOW)
            continue
        for drawn in step if isinstance(step, list) else [step]:
            with db.session(write=True) as s:
                recorded.append(record_event(s, RULEBOOK, new_event(drawn, NOW), actor="t", now=NOW).event.id)
    _agrees_with_a_replay(dbs["a"])
