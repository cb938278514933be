"""What a subject's facts were before a write (`before`, `customer_before`, `project_before`):
grading tells time's move of a grade from the write's by evaluating those (app/grading.py),
so undoing a write must give back exactly the facts it started from. And `Rulebook.ages`,
which says whether that is ever needed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.facts import CustomerFacts, Event, ProjectFacts, before, customer_before, project_before

from .builders import INSTALLER, OWNER, PROJECT, default_rulebook, edited_rulebook, event
from .test_properties import OWNER_OWN_TYPES, PROPERTY_SETTINGS, PROJECT_TYPES, drafts, numbered, owners, projects


def _write(draw: st.DrawFn, events: tuple[Event, ...], new: tuple[Event, ...]) -> tuple[tuple[Event, ...], dict[int, Event]]:
    """`events` after a write that retracts some of its live events and stores `new`: the
    log as it then stands, and the write's changes as grading knows them (by id, as they
    stand after it). A write stores its events live."""
    new = tuple(replace(e, retracted=False) for e in new)
    live = [e.id for e in events if not e.retracted]
    retracted = draw(st.sets(st.sampled_from(live), max_size=2)) if live else set()
    after = tuple(replace(e, retracted=True) if e.id in retracted else e for e in events) + new
    return after, {e.id: e for e in after if e.id in retracted or e in new}


@PROPERTY_SETTINGS
@given(facts=owners(), data=st.data())
def test_undoing_a_write_gives_back_the_customers_facts_it_started_from(facts: CustomerFacts, data: st.DataObject) -> None:
    new = numbered(data.draw(st.lists(drafts(OWNER_OWN_TYPES, (OWNER,), (None,)), max_size=3)), 5000)
    own, changed = _write(data.draw, facts.events, new)
    project = facts.owned_projects[0]
    on_project = numbered(data.draw(st.lists(drafts(PROJECT_TYPES, (None,), (PROJECT,)), max_size=2)), 6000)
    project_after, project_changed = _write(data.draw, project.events, on_project)
    after = replace(facts, events=own, owned_projects=(replace(project, events=project_after), *facts.owned_projects[1:]))

    assert customer_before(after, {**changed, **project_changed}) == facts


@PROPERTY_SETTINGS
@given(facts=projects(), data=st.data(), levels=st.dictionaries(st.sampled_from((OWNER, INSTALLER, 12, 99)), st.integers(0, 4)))
def test_undoing_a_write_gives_back_the_projects_facts_with_its_customers_levels_before_it(facts: ProjectFacts, data: st.DataObject, levels: dict[int, int]) -> None:
    new = numbered(data.draw(st.lists(drafts(PROJECT_TYPES, (None,), (PROJECT,)), max_size=3)), 5000)
    events, changed = _write(data.draw, facts.events, new)
    after = replace(facts, events=events)

    undone = project_before(after, changed, levels)

    assert undone.events == facts.events
    assert undone.owner.level == levels.get(OWNER, facts.owner.level)
    assert {cid: c.level for cid, c in undone.linked.items()} == {cid: levels.get(cid, c.level) for cid, c in facts.linked.items()}
    assert replace(undone, owner=facts.owner, linked=facts.linked) == facts


def test_a_write_that_changed_nothing_in_a_log_leaves_it_as_it_is() -> None:
    log = (event(1, "visit", days=3, customer=OWNER, reception="neutral"), event(2, "materials_sent", days=2, customer=OWNER, items=["samples"]))
    assert before(log, {}) is log
    assert before(log, {9: event(9, "visit", days=1, customer=OWNER, reception="neutral")}) == log


def _window(path: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        path(data)["within_days"] = 30

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _window(lambda d: d["levels"]["owner"][0]["criteria"][0]["when"]),  # O1.1, a level's own event
        _window(lambda d: d["levels"]["owner"][0]["criteria"][3]["when"]["all_of"][1]),  # O1.4's latest visit, inside all_of
        _window(lambda d: d["levels"]["owner"][2]["criteria"][3]["when"]["owned_project"]),  # O3.4, inside an owned project
        _window(lambda d: d["levels"]["installer"][1]["criteria"][0]["when"]),  # I2.1
        _window(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"]),  # H90.1, a tier
        _window(lambda d: d["heat"]["tiers"][1]["criteria"][2]["when"]["bidder"]["has"]["any_of"][1]),  # H70.3, a linked customer's own
    ],
)
def test_a_rulebook_with_a_window_anywhere_ages(edit: Callable[[dict[str, Any]], None]) -> None:
    assert edited_rulebook(edit).ages


def test_the_default_rulebook_does_not_age() -> None:
    assert not default_rulebook().ages
