"""Against the real database: the same events recorded in two different orders, with
re-sends of the same source + external_id among them, leave every customer and project
with the same grade and the same evidence.

Each order is recorded into a fresh world (emptied tables, the same customers and
projects), one transaction per delivery as the API does it. Events happen on few distinct
days and some come with a twin (same type, subjects and instant, other attributes), so
"which event is the latest" often has to be decided between equal instants.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from random import Random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.db import models as m
from app.db.engine import Database
from app.services.events import record_event
from tests.conftest import empty_tables
from tests.log_strategies import RULEBOOK, a_kit, an_event, attributes, make_world, new_event

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
FEW_DAYS = st.sampled_from([0, 1, 1, 7])


@st.composite
def an_event_and_its_twin(draw: st.DrawFn) -> list[dict[str, Any]]:
    first = draw(an_event(days=FEW_DAYS))
    return [first, {**first, "attributes": draw(attributes(first["type"]))}]


logs = st.lists(st.one_of(an_event(days=FEW_DAYS), a_kit(days=FEW_DAYS), an_event_and_its_twin()), min_size=1, max_size=6).map(
    lambda items: [e for item in items for e in (item if isinstance(item, list) else [item])][:14]
)


def deliveries(count: int, seed: int, resends: int) -> list[int]:
    """Each of `count` events once, `resends` of them again, in a random order."""
    rng = Random(seed)
    out = list(range(count)) + [rng.randrange(count) for _ in range(resends)]
    rng.shuffle(out)
    return out


def record(db: Database, log: list[dict[str, Any]], order: list[int]) -> dict[str, Any]:
    """Record `log` in `order` into a fresh world; every subject's grade as a reader sees it."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    for i in order:
        new = new_event(log[i], NOW, source="arrival-test", external_id=f"event-{i}")
        with db.session(write=True) as session:
            record_event(session, RULEBOOK, new, actor="t", now=NOW)
    with db.session(write=False) as session:
        return grades(session)


def grades(session) -> dict[str, Any]:  # noqa: ANN001
    """Levels, heats and stages, and the stored evidence with each event id replaced by
    what the event says (ids differ between the two orders; the facts must not)."""
    says = {
        id_: json.dumps([type_, at.isoformat(), cid, pid, attrs], sort_keys=True, ensure_ascii=False)
        for id_, type_, at, cid, pid, attrs in session.execute(
            select(m.Event.id, m.Event.type, m.Event.occurred_at, m.Event.customer_id, m.Event.project_id, m.Event.attributes)
        )
    }

    def seen(grade: dict[str, Any]) -> dict[str, Any]:
        criteria = [{**c, "evidence": sorted(says[i] for i in c["evidence"])} for c in grade["criteria"]]
        return {**grade, "criteria": criteria}

    customers = {c.id: (c.level, seen(c.grade)) for c in session.scalars(select(m.Customer))}
    projects = {p.id: (p.heat, p.stage, p.closed, seen(p.grade)) for p in session.scalars(select(m.Project))}
    return {"customers": customers, "projects": projects}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(log=logs, seeds=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), resends=st.integers(0, 4))
def test_any_arrival_order_with_resends_gives_identical_grades_and_evidence(db: Database, log: list, seeds: tuple[int, int], resends: int) -> None:
    first = record(db, log, deliveries(len(log), seeds[0], 0))
    second = record(db, log, deliveries(len(log), seeds[1], resends))
    assert second == first
