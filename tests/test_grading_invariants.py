"""The central invariant, against the real database: for any sequence of events and
retractions, every stored grade equals a fresh evaluation of the whole log, and every
subject's history is a chain (each row's old value is the previous row's new value)."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.db import models as m
from app.db.engine import Database
from app.services.events import record_event, retract_event
from app.services.verify import replay
from tests.conftest import empty_tables
from tests.log_strategies import RULEBOOK, a_kit, an_event, make_world, new_event

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


def test_replay_notices_a_tampered_grade(db: Database) -> None:
    """The oracle above must be able to fail: a stored level nobody earned is reported."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    with db.session(write=True) as session:
        session.get(m.Customer, 3).level = 2
    with db.session(write=False) as session:
        found = replay(session, RULEBOOK, as_of=NOW)
    assert [(d.subject, d.id, d.what) for d in found] == [("customer", 3, "grade"), ("customer", 3, "history")]
