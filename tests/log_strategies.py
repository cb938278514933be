"""Hypothesis strategies for event logs against the database, read off the default
rulebook: random events, and "kits" of events that meet a whole level of one customer,
so that grades really move.

The world they log into: owners 1–2, installers 3–5 and projects 1–3 (`make_world`, on
emptied tables so the ids are these). An event's `day` is how many days before the
grading instant it happened; pass a narrow `days` strategy to make equal instants common.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from sqlalchemy.orm import Session

from app.domain.conditions import AllOf, AnyOf, HasEvent, Latest
from app.domain.rulebook import AttributeSpec, Rulebook, load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent
from app.services.projects import create_project

RULEBOOK = load_rulebook()
OWNERS, INSTALLERS = (1, 2), (3, 4, 5)
PROJECTS = {1: 1, 2: 1, 3: 2}  # project id -> owner id
DAYS = st.integers(0, 60)


def make_world(session: Session, now: datetime, rulebook: Rulebook = RULEBOOK) -> None:
    for cid in OWNERS:
        create_customer(session, rulebook, {"name": f"owner {cid}", "kind": "owner"}, now=now)
    for cid in INSTALLERS:
        create_customer(session, rulebook, {"name": f"installer {cid}", "kind": "installer"}, now=now)
    for pid, owner in PROJECTS.items():
        create_project(session, rulebook, {"name": f"project {pid}", "owner_id": owner}, now=now)


def new_event(drawn: dict[str, Any], now: datetime, **fields: Any) -> NewEvent:
    """The drawn event as the services take it; `fields` adds e.g. source and external_id."""
    return NewEvent(
        type=drawn["type"],
        customer_id=drawn["customer_id"],
        project_id=drawn["project_id"],
        attributes=drawn["attributes"],
        occurred_at=now - timedelta(days=drawn["day"]),
        **fields,
    )


def attribute_value(spec: AttributeSpec) -> st.SearchStrategy[Any]:
    if spec.type == "enum":
        return st.sampled_from(spec.values)
    if spec.type == "enum_list":
        return st.lists(st.sampled_from(spec.values), min_size=1, max_size=len(spec.values), unique=True)
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "number":
        return st.integers(0, 10**6)
    # Any text an attribute accepts: U+0000 is refused (PostgreSQL cannot store it in JSON
    # text), so a log drawn with it would not be the log the test means.
    return st.text(st.characters(exclude_characters="\x00"), max_size=10)


@st.composite
def an_event(draw: st.DrawFn, days: st.SearchStrategy[int] = DAYS, types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One event of any type of the catalogue (or of `types`)."""
    name = draw(st.sampled_from(types or sorted(RULEBOOK.event_types)))
    et = RULEBOOK.event_types[name]
    customer = None
    if et.customer == "required" or (et.customer == "optional" and draw(st.booleans())):
        pool = INSTALLERS if et.customer_kind == "installer" else OWNERS + INSTALLERS
        customer = draw(st.sampled_from(pool))
    project = None
    if et.project == "required" or (et.project == "optional" and draw(st.booleans())):
        project = draw(st.sampled_from(sorted(PROJECTS)))
    return {"type": name, "customer_id": customer, "project_id": project, "attributes": draw(attributes(name)), "day": draw(days)}


def attributes(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid attributes of the type: the required ones, and some of the others."""
    specs = RULEBOOK.event_types[event_type].attributes
    return st.fixed_dictionaries(
        {n: attribute_value(s) for n, s in specs.items() if s.required},
        optional={n: attribute_value(s) for n, s in specs.items() if not s.required},
    )


def satisfying(condition) -> list[tuple[str, dict[str, Any]]]:  # noqa: ANN001
    """Events (type, attributes) that meet a customer condition, read off the rulebook."""
    if isinstance(condition, HasEvent):
        return [(condition.event_type, dict(condition.where))] * condition.min_count
    if isinstance(condition, Latest):
        spec = RULEBOOK.event_types[condition.event_type].attributes[condition.attribute]
        value = next(v for v in spec.values if (v in condition.values) != condition.negate)
        return [(condition.event_type, {condition.attribute: value})]
    if isinstance(condition, AllOf):
        return [e for part in condition.parts for e in satisfying(part)]
    if isinstance(condition, AnyOf):
        return satisfying(condition.parts[0])
    return []  # project-side conditions come from the random events


@st.composite
def a_kit(draw: st.DrawFn, days: st.SearchStrategy[int] = DAYS) -> list[dict[str, Any]]:
    """Everything one level of one customer needs, so levels really rise (and fall on retraction)."""
    customer = draw(st.sampled_from(OWNERS + INSTALLERS))
    kind = "owner" if customer in OWNERS else "installer"
    level = draw(st.integers(1, 3))
    out = []
    for criterion in RULEBOOK.levels[kind][level - 1].criteria:
        for type_, where in satisfying(criterion.when):
            et = RULEBOOK.event_types[type_]
            attributes = {n: draw(attribute_value(a)) for n, a in et.attributes.items() if a.required}
            attributes.update(where)
            project = draw(st.sampled_from(sorted(PROJECTS))) if et.project == "required" else None
            out.append({"type": type_, "customer_id": customer, "project_id": project, "attributes": attributes, "day": draw(days)})
    return out
