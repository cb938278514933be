"""The same events, delivered in any order and any number of times, grade the same.

Here, as in the database, an event's id is given in the order of arrival, and a re-sent
event (same source + external_id) is kept once, as first delivered. "Latest" is by
`occurred_at`; a tie between equal instants broken by the id would make the grade depend
on the arrival order, which these tests would catch (the drawn logs use few distinct days,
so equal instants are common). Evidence is compared by what the events say, since the
ids themselves differ from one delivery order to another.
"""

from __future__ import annotations

import json
from dataclasses import replace
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.evaluation import HeatGrade, LevelGrade
from app.domain.facts import CustomerFacts, Event, LinkedCustomer, ProjectFacts

from .builders import OWNER, PROJECT, at
from .test_properties import any_facts, attributes_for, every_event, grade, map_events

Facts = CustomerFacts | ProjectFacts


def delivered(facts: Facts, deliveries: list[int]) -> Facts:
    """The facts as the database would hold them after `deliveries` (positions in
    `every_event(facts)`, repeats being re-sends): ids in order of first arrival, each
    collection in id order (as the loaders read it)."""
    slot = {id(e): k for k, e in enumerate(every_event(facts))}
    new_id = {k: i for i, k in enumerate(dict.fromkeys(deliveries), start=1)}

    def renumber(events: tuple[Event, ...]) -> tuple[Event, ...]:
        return tuple(sorted((replace(e, id=new_id[slot[id(e)]]) for e in events), key=lambda e: e.id))

    return map_events(facts, renumber)


def with_twins(data: st.DataObject, facts: Facts) -> Facts:
    """The facts with a few events given a twin: the same type, subjects and instant, its
    attributes drawn afresh, so that "which is the latest" has to be decided by content."""
    events = every_event(facts)
    if not events:
        return facts
    chosen = {id(events[i]) for i in data.draw(st.sets(st.integers(0, len(events) - 1), max_size=4))}
    twins = {key: replace(e, attributes=data.draw(attributes_for(e.type))) for e in events if (key := id(e)) in chosen}
    return map_events(facts, lambda tup: tup + tuple(twins[id(e)] for e in tup if id(e) in twins))


def _content(e: Event) -> str:
    return json.dumps([e.type, e.occurred_at.isoformat(), e.customer_id, e.project_id, e.attributes, e.retracted], sort_keys=True, default=str)


def as_seen(facts: Facts) -> LevelGrade | HeatGrade:
    """The grade with each evidence id replaced by what that event says."""
    says = {e.id: _content(e) for e in every_event(facts)}
    result = grade(facts)
    criteria = tuple(replace(c, evidence=tuple(sorted(says[i] for i in c.evidence))) for c in result.criteria)
    return replace(result, criteria=criteria)


@settings(max_examples=150, deadline=None)
@given(drawn=any_facts(), data=st.data(), seed=st.integers(0, 2**32 - 1), resent=st.lists(st.integers(0, 10**6), max_size=6))
def test_any_delivery_order_with_resends_gives_the_same_grade_and_evidence(drawn: Facts, data: st.DataObject, seed: int, resent: list[int]) -> None:
    facts = with_twins(data, drawn)
    positions = list(range(len(every_event(facts))))
    in_order = delivered(facts, positions)
    shuffled = positions + [positions[r % len(positions)] for r in resent if positions]
    Random(seed).shuffle(shuffled)
    assert as_seen(delivered(facts, shuffled)) == as_seen(in_order)


def test_two_stage_changes_at_the_same_instant_give_the_same_stage_whichever_arrives_first() -> None:
    def project(*stages: str) -> ProjectFacts:
        events = tuple(Event(i, "stage_changed", at(3), project_id=PROJECT, attributes={"stage": s}) for i, s in enumerate(stages, 1))
        return ProjectFacts(PROJECT, LinkedCustomer(OWNER, 2), events)

    assert grade(project("tender_drafting", "won")).stage == grade(project("won", "tender_drafting")).stage
