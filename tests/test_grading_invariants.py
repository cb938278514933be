"""The central invariant, against the real database: for any sequence of events and
retractions, every stored grade equals a fresh evaluation of the whole log, and every
subject's history is a chain (each row's old value is the previous row's new value)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.db import models as m
from app.db.engine import Database
from app.domain.conditions import AllOf, AnyOf, HasEvent, Latest
from app.domain.rulebook import AttributeSpec, load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event, retract_event
from app.services.projects import create_project
from app.services.verify import replay
from tests.conftest import empty_tables

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
OWNERS, INSTALLERS = (1, 2), (3, 4, 5)
PROJECTS = {1: 1, 2: 1, 3: 2}  # project id -> owner id


def _value(spec: AttributeSpec) -> st.SearchStrategy[Any]:
    if spec.type == "enum":
        return st.sampled_from(spec.values)
    if spec.type == "enum_list":
        return st.lists(st.sampled_from(spec.values), min_size=1, max_size=len(spec.values), unique=True)
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "number":
        return st.integers(0, 10**6)
    return st.text(max_size=10)


@st.composite
def an_event(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(RULEBOOK.event_types)))
    et = RULEBOOK.event_types[name]
    customer = None
    if et.customer == "required" or (et.customer == "optional" and draw(st.booleans())):
        pool = INSTALLERS if et.customer_kind == "installer" else OWNERS + INSTALLERS
        customer = draw(st.sampled_from(pool))
    project = None
    if et.project == "required" or (et.project == "optional" and draw(st.booleans())):
        project = draw(st.sampled_from(sorted(PROJECTS)))
    attributes = {n: draw(_value(s)) for n, s in et.attributes.items() if s.required or draw(st.booleans())}
    return {"type": name, "customer_id": customer, "project_id": project, "attributes": attributes, "day": draw(st.integers(0, 60))}


def _satisfying(condition) -> list[tuple[str, dict[str, Any]]]:  # noqa: ANN001
    """Events (type, attributes) that meet a customer condition, read off the rulebook."""
    if isinstance(condition, HasEvent):
        return [(condition.event_type, dict(condition.where))] * condition.min_count
    if isinstance(condition, Latest):
        spec = RULEBOOK.event_types[condition.event_type].attributes[condition.attribute]
        value = next(v for v in spec.values if (v in condition.values) != condition.negate)
        return [(condition.event_type, {condition.attribute: value})]
    if isinstance(condition, AllOf):
        return [e for part in condition.parts for e in _satisfying(part)]
    if isinstance(condition, AnyOf):
        return _satisfying(condition.parts[0])
    return []  # project-side conditions come from the random events


@st.composite
def a_kit(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Everything one level of one customer needs, so levels really rise (and fall on retraction)."""
    customer = draw(st.sampled_from(OWNERS + INSTALLERS))
    kind = "owner" if customer in OWNERS else "installer"
    level = draw(st.integers(1, 3))
    out = []
    for criterion in RULEBOOK.levels[kind][level - 1].criteria:
        for type_, where in _satisfying(criterion.when):
            et = RULEBOOK.event_types[type_]
            attributes = {n: draw(_value(a)) for n, a in et.attributes.items() if a.required}
            attributes.update(where)
            project = draw(st.sampled_from(sorted(PROJECTS))) if et.project == "required" else None
            out.append({"type": type_, "customer_id": customer, "project_id": project, "attributes": attributes, "day": draw(st.integers(0, 60))})
    return out


retraction = st.tuples(st.just("retract"), st.integers(0, 1000))
steps = st.lists(st.one_of(an_event(), a_kit(), retraction), min_size=1, max_size=30).map(
    lambda items: [e for item in items for e in (item if isinstance(item, list) else [item])]
)


def _world(session) -> None:  # noqa: ANN001
    for cid in OWNERS:
        create_customer(session, RULEBOOK, {"name": f"owner {cid}", "kind": "owner"}, now=NOW)
    for cid in INSTALLERS:
        create_customer(session, RULEBOOK, {"name": f"installer {cid}", "kind": "installer"}, now=NOW)
    for pid, owner in PROJECTS.items():
        create_project(session, RULEBOOK, {"name": f"project {pid}", "owner_id": owner}, now=NOW)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
def test_stored_grades_equal_a_fresh_replay_and_histories_are_chains(db: Database, steps: list) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as session:
        _world(session)
    recorded: list[int] = []
    for step in steps:
        # One transaction per step, as the API does it.
        with db.session(write=True) as session:
            if isinstance(step, tuple):
                if recorded:
                    retract_event(session, RULEBOOK, recorded[step[1] % len(recorded)], "test", actor="t", now=NOW)
                continue
            new = NewEvent(
                type=step["type"],
                customer_id=step["customer_id"],
                project_id=step["project_id"],
                attributes=step["attributes"],
                occurred_at=NOW - timedelta(days=step["day"]),
            )
            recorded.append(record_event(session, RULEBOOK, new, actor="t", now=NOW).event.id)
    with db.session(write=False) as session:
        assert replay(session, RULEBOOK, as_of=NOW) == []


def test_replay_notices_a_tampered_grade(db: Database) -> None:
    """The oracle above must be able to fail: a stored level nobody earned is reported."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        _world(session)
    with db.session(write=True) as session:
        session.get(m.Customer, 3).level = 2
    with db.session(write=False) as session:
        found = replay(session, RULEBOOK, as_of=NOW)
    assert [(d.subject, d.id, d.what) for d in found] == [("customer", 3, "grade"), ("customer", 3, "history")]
