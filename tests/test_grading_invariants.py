"""The central invariant, against the real database: for any sequence of events and
retractions, every stored grade equals a fresh evaluation of the whole log, and every
subject's history is a chain (each row's old value is the previous row's new value).
The replay walks subjects in rounds; how many a round holds must not change what it finds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from sqlalchemy import insert, select, text
from hypothesis import strategies as st

from app.db import models as m
from app.db.engine import Database
from app.grading import HEAT
from app.services.events import NewEvent, record_event, retract_event
from app.services.verify import replay
from tests.conftest import empty_tables
from tests.log_strategies import INSTALLERS, OWNERS, PROJECTS, RULEBOOK, a_kit, an_event, make_world, new_event

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


retraction = st.tuples(st.just("retract"), st.integers(0, 1000))
steps = st.lists(st.one_of(an_event(), a_kit(), retraction), min_size=1, max_size=30).map(
    lambda items: [e for item in items for e in (item if isinstance(item, list) else [item])]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
def test_stored_grades_equal_a_fresh_replay_and_histories_are_chains(db: Database, steps: list) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    recorded: list[int] = []
    for step in steps:
        # One transaction per step, as the API does it.
        with db.session(write=True) as session:
            if isinstance(step, tuple):
                if recorded:
                    retract_event(session, RULEBOOK, recorded[step[1] % len(recorded)], "test", actor="t", now=NOW)
                continue
            recorded.append(record_event(session, RULEBOOK, new_event(step, NOW), actor="t", now=NOW).event.id)
    with db.session(write=False) as session:
        assert replay(session, RULEBOOK, as_of=NOW) == []
        assert replay(session, RULEBOOK, as_of=NOW, chunk=2) == []  # rounds that split owners from their projects


def test_replay_notices_a_tampered_grade(db: Database) -> None:
    """The oracle above must be able to fail: a stored level nobody earned is reported."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    with db.session(write=True) as session:
        session.get(m.Customer, 3).level = 2
    for chunk in (1, 500):
        with db.session(write=False) as session:
            found = replay(session, RULEBOOK, as_of=NOW, chunk=chunk)
        assert [(d.subject, d.id, d.what) for d in found] == [("customer", 3, "grade"), ("customer", 3, "history")]


def found(session, **options) -> list[tuple[str, int, str, str]]:  # noqa: ANN001, ANN003
    return sorted((d.subject, d.id, d.what, d.detail) for d in replay(session, RULEBOOK, as_of=NOW, **options))


tampering = st.one_of(
    st.tuples(st.just("customers"), st.sampled_from((*OWNERS, *INSTALLERS)), st.integers(0, 4)),
    st.tuples(st.just("projects"), st.sampled_from(tuple(PROJECTS)), st.sampled_from((0, 30, 50, 70, 90))),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps, tampered=st.lists(tampering, max_size=3), chunk=st.integers(1, 4))
def test_the_replay_finds_the_same_in_rounds_of_any_size(db: Database, steps: list, tampered: list, chunk: int) -> None:
    """Rounds of 1 to 4 subjects (owners apart from their projects, bidders apart from the
    projects they bid on) find exactly what one round of everything finds."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
        for step in steps:
            if not isinstance(step, tuple):
                record_event(session, RULEBOOK, new_event(step, NOW), actor="t", now=NOW)
    with db.engine.begin() as conn:
        for table, id_, value in tampered:
            column = "level" if table == "customers" else "heat"
            conn.execute(text(f"UPDATE {table} SET {column} = :value WHERE id = :id"), {"value": value, "id": id_})
    with db.session(write=False) as session:
        assert found(session, chunk=chunk) == found(session)


def test_replay_names_history_of_a_subject_that_does_not_exist(db: Database) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    with db.engine.begin() as conn:
        conn.execute(
            insert(m.GradeChange),
            {"subject_type": "project", "subject_id": 99, "metric": HEAT, "old": 0, "new": 50, "rulebook_version": RULEBOOK.version,
             "evidence": {}, "trigger": {"kind": "test"}, "actor": "t", "at": NOW},
        )
    with db.session(write=False) as session:
        assert [(d.subject, d.id, d.what) for d in replay(session, RULEBOOK, as_of=NOW, chunk=1)] == [("project", 99, "history")]


def test_a_cold_project_closed_as_lost_and_reopened_verifies_and_a_row_that_changes_nothing_does_not(db: Database) -> None:
    # Closing a cold project as lost, and reopening it, keeps it at 0 %: each is recorded as
    # a row from 0 to 0 (app/grading.py), which `verify` had reported as "no change".
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
        for days_ago, stage in ((3, "lost"), (2, "bidding"), (1, "lost")):
            new = NewEvent(type="stage_changed", project_id=1, occurred_at=NOW - timedelta(days=days_ago), attributes={"stage": stage})
            record_event(session, RULEBOOK, new, actor="t", now=NOW)
        rows = session.execute(select(m.GradeChange.old, m.GradeChange.new, m.GradeChange.evidence).where(m.GradeChange.subject_type == "project")).all()
    assert [(r.old, r.new, r.evidence["next"] is None) for r in rows] == [(0, 0, True), (0, 0, False), (0, 0, True)]
    with db.session(write=False) as session:
        assert replay(session, RULEBOOK, as_of=NOW) == []

    with db.engine.begin() as conn:  # one more "closing" row, of a project already closed
        conn.execute(
            insert(m.GradeChange),
            {"subject_type": "project", "subject_id": 1, "metric": HEAT, "old": 0, "new": 0, "rulebook_version": RULEBOOK.version,
             "evidence": rows[-1].evidence, "trigger": {"kind": "test"}, "actor": "t", "at": NOW},
        )
    with db.session(write=False) as session:
        assert [(d.subject, d.id, d.detail.split(" ", 2)[2]) for d in replay(session, RULEBOOK, as_of=NOW)] == [("project", 1, "records no change (0 → 0)")]
