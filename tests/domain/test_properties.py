"""Invariants of evaluation over generated event logs (hypothesis).

Events are drawn from the default catalogue with valid attributes, on a few days so that
equal instants happen, and some retracted. Every installer linked to the project is listed
in `ProjectFacts.linked` (as the facts contract asks).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.evaluation import HeatGrade, LevelGrade
from app.domain.facts import CustomerFacts, Event, LinkedCustomer, OwnedProject, ProjectFacts
from app.domain.rulebook import AttributeSpec

from .builders import (
    AS_OF,
    INSTALLER,
    OTHER_PROJECT,
    OWNER,
    PROJECT,
    at,
    default_rulebook,
    event,
    heat_of,
    installer_events,
    level_of,
    owner_events,
    owner_projects,
)

RULEBOOK = default_rulebook()
INSTALLERS = (INSTALLER, 12, 13)
HEATS = {0, 30, 50, 70, 90, 100}

# The core invariants (arrival order, retraction) get the most examples, the consistency
# checks fewer, so the file stays within a few seconds.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)
CONSISTENCY_SETTINGS = settings(max_examples=75, deadline=None)

OWNER_OWN_TYPES = tuple(sorted(
    {"materials_sent", "company_introduced", "contact_obtained", "visit", "impression_confirmed", "product_understood",
     "private_meeting", "info_shared", "easy_access", "deep_relationship", "exclusive", "opens_doors", "advocates",
     "prefers_us", "inquiry_received"}
))  # fmt: skip
OWNER_PROJECT_TYPES = ("stage_changed", "tender_brand", "spec_agreed", "owner_stance")
INSTALLER_TYPES = tuple(sorted(
    {"materials_sent", "company_introduced", "inquiry_received", "visit", "impression_confirmed", "product_understood",
     "rep_accepted", "order_placed", "info_shared", "easy_access", "deep_relationship", "prefers_us", "bid_joined",
     "attended_promotion", "exclusive", "opens_doors", "advocates", "accepts_worse_terms", "switched_to_us", "bid_won",
     "contact_obtained"}
))  # fmt: skip
PROJECT_TYPES = ("stage_changed", "tender_brand", "spec_agreed", "owner_stance", "competitor_strategy_known")
PROJECT_INSTALLER_TYPES = ("bid_joined", "bid_won", "product_accepted", "contract_signed", "advocates")


# --- Strategies ----------------------------------------------------------------------------------


def attribute_value(spec: AttributeSpec) -> st.SearchStrategy[Any]:
    if spec.type == "enum":
        return st.sampled_from(spec.values)
    if spec.type == "enum_list":
        return st.lists(st.sampled_from(spec.values), min_size=1, unique=True)
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "number":
        return st.integers(min_value=int(spec.min or 0), max_value=10**6)
    return st.text(max_size=10)


DAYS_AGO = st.sampled_from([1, 5, 5, 10, 30, 60, 90])  # few values, so equal instants happen
RETRACTED = st.sampled_from([False, False, False, True])


def attributes_for(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    specs = RULEBOOK.event_types[event_type].attributes
    always = {n: attribute_value(a) for n, a in specs.items() if a.required or a.default is not None}
    sometimes = {n: attribute_value(a) for n, a in specs.items() if n not in always}
    return st.fixed_dictionaries(always, optional=sometimes)


@cache
def drafts(types: tuple[str, ...], customers: tuple[int | None, ...], projects: tuple[int | None, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """One event without its id (the id is given once the whole log is drawn). Built once per
    argument set: strategies are costly to build and cheap to draw from."""

    def of_type(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
        presence = RULEBOOK.event_types[event_type].project
        allowed = [p for p in projects if presence == "optional" or (p is None) == (presence == "forbidden")] or [PROJECT]
        return st.fixed_dictionaries(
            {
                "type": st.just(event_type),
                "occurred_at": DAYS_AGO.map(at),
                "customer_id": st.sampled_from(customers),
                "project_id": st.sampled_from(allowed),
                "attributes": attributes_for(event_type),
                "retracted": RETRACTED,
            }
        )

    return st.one_of([of_type(t) for t in types])


def numbered(drafts_: list[dict[str, Any]], first_id: int) -> tuple[Event, ...]:
    return tuple(Event(id=first_id + i, **d) for i, d in enumerate(drafts_))


def with_some_retracted(draw: st.DrawFn, events: tuple[Event, ...]) -> tuple[Event, ...]:
    if not events:
        return events
    gone = draw(st.sets(st.sampled_from([e.id for e in events]), max_size=3))
    return tuple(replace(e, retracted=True) if e.id in gone else e for e in events)


@st.composite
def owners(draw: st.DrawFn) -> CustomerFacts:
    """An owner built up to a random level, then disturbed: a few of those events retracted
    and a few random ones added (so every level, and every way of missing one, shows up)."""
    up_to = draw(st.integers(0, 4))
    own = with_some_retracted(draw, owner_events(up_to)) + numbered(draw(st.lists(drafts(OWNER_OWN_TYPES, (OWNER,), (None,)), max_size=8)), 100)
    base_project = owner_projects(up_to).get(PROJECT, ())
    extra_project = numbered(draw(st.lists(drafts(OWNER_PROJECT_TYPES, (None,), (PROJECT,)), max_size=4)), 1000)
    other_project = numbered(draw(st.lists(drafts(OWNER_PROJECT_TYPES, (None,), (OTHER_PROJECT,)), max_size=3)), 2000)
    return CustomerFacts(
        OWNER,
        "owner",
        own,
        (OwnedProject(PROJECT, with_some_retracted(draw, base_project) + extra_project), OwnedProject(OTHER_PROJECT, other_project)),
    )


@st.composite
def installers(draw: st.DrawFn) -> CustomerFacts:
    up_to = draw(st.integers(0, 4))
    extra = numbered(draw(st.lists(drafts(INSTALLER_TYPES, (INSTALLER,), (None, PROJECT, OTHER_PROJECT)), max_size=8)), 100)
    return CustomerFacts(INSTALLER, "installer", with_some_retracted(draw, installer_events(up_to)) + extra, ())


def customers() -> st.SearchStrategy[CustomerFacts]:
    return owners() | installers()


def _on_project(id: int, type: str, days: float, customer: int | None = None, **attributes: Any) -> Event:
    return event(id, type, days=days, customer=customer, project=PROJECT, **attributes)


# Logs that warm a project to each tier (given high enough levels); a drawn project starts
# from a few of them, so every tier — and near misses of it — shows up.
WARM_LOGS: dict[int, tuple[Event, ...]] = {
    30: (
        _on_project(301, "stage_changed", 60, stage="tender_drafting"),
        _on_project(302, "spec_agreed", 55),
        _on_project(303, "bid_joined", 50, INSTALLER, with_our_product=False),
    ),
    50: (
        _on_project(501, "tender_brand", 40, status="listed"),
        _on_project(502, "owner_stance", 40, stance="accepts"),
        _on_project(503, "bid_won", 30, 12),
        _on_project(504, "product_accepted", 25, 12),
        _on_project(505, "competitor_strategy_known", 20),
    ),
    70: (
        _on_project(701, "tender_brand", 15, status="listed"),
        _on_project(702, "owner_stance", 15, stance="recommends"),
        _on_project(703, "bid_joined", 15, 13, with_our_product=True),
    ),
    90: (
        _on_project(901, "tender_brand", 10, status="sole"),
        _on_project(902, "bid_won", 10, 12),
        _on_project(903, "contract_signed", 5, 12),
    ),
}


@st.composite
def projects(draw: st.DrawFn) -> ProjectFacts:
    warm = tuple(e for tier in sorted(draw(st.sets(st.sampled_from(sorted(WARM_LOGS)), max_size=2))) for e in WARM_LOGS[tier])
    plain = draw(st.lists(drafts(PROJECT_TYPES, (None,), (PROJECT,)), max_size=5))
    linked = draw(st.lists(drafts(PROJECT_INSTALLER_TYPES, INSTALLERS, (PROJECT,)), max_size=5))
    events = with_some_retracted(draw, warm) + numbered(plain + linked, 1)
    levels = {cid: draw(st.integers(0, 4)) for cid in INSTALLERS}
    off_project = {
        cid: numbered(draw(st.lists(drafts(("advocates",), (cid,), (None,)), max_size=1)), 100 + 10 * cid) for cid in INSTALLERS
    }
    return ProjectFacts(
        project_id=PROJECT,
        owner=LinkedCustomer(OWNER, draw(st.integers(0, 4))),
        events=events,
        linked={cid: LinkedCustomer(cid, levels[cid], off_project[cid]) for cid in INSTALLERS},
    )


# --- Transformations of facts -------------------------------------------------------------------------


def every_event(facts: CustomerFacts | ProjectFacts) -> list[Event]:
    if isinstance(facts, CustomerFacts):
        return [*facts.events, *(e for p in facts.owned_projects for e in p.events)]
    return [*facts.events, *(e for lc in facts.linked.values() for e in lc.events)]


def map_events(facts: CustomerFacts | ProjectFacts, change) -> CustomerFacts | ProjectFacts:
    """Apply `change` (a function of an event tuple) to every event collection of the facts."""
    if isinstance(facts, CustomerFacts):
        return replace(
            facts,
            events=change(facts.events),
            owned_projects=tuple(replace(p, events=change(p.events)) for p in facts.owned_projects),
        )
    return replace(
        facts,
        events=change(facts.events),
        linked={cid: replace(lc, events=change(lc.events)) for cid, lc in facts.linked.items()},
    )


def grade(facts: CustomerFacts | ProjectFacts) -> LevelGrade | HeatGrade:
    return level_of(facts) if isinstance(facts, CustomerFacts) else heat_of(facts)


def any_facts() -> st.SearchStrategy[CustomerFacts | ProjectFacts]:
    return customers() | projects()


# --- (a) order of the input does not matter -----------------------------------------------------------


@PROPERTY_SETTINGS
@given(facts=any_facts(), random=st.randoms(use_true_random=False))
def test_grade_does_not_depend_on_the_order_events_arrive_in(facts, random) -> None:
    def shuffled(events: tuple[Event, ...]) -> tuple[Event, ...]:
        out = list(events)
        random.shuffle(out)
        return tuple(out)

    assert grade(map_events(facts, shuffled)) == grade(facts)


# --- (b) a retracted event is the same as an absent one --------------------------------------------


@PROPERTY_SETTINGS
@given(facts=any_facts())
def test_retracted_events_count_for_nothing(facts) -> None:
    without_retracted = map_events(facts, lambda evs: tuple(e for e in evs if not e.retracted))

    assert grade(without_retracted) == grade(facts)


@CONSISTENCY_SETTINGS
@given(facts=any_facts())
def test_evidence_names_only_live_events_of_the_subject(facts) -> None:
    live_ids = {e.id for e in every_event(facts) if not e.retracted}

    for c in grade(facts).criteria:
        assert set(c.evidence) <= live_ids
        assert list(c.evidence) == sorted(set(c.evidence))


# --- (c) grades stay in range ------------------------------------------------------------------------


@CONSISTENCY_SETTINGS
@given(facts=customers())
def test_level_is_between_zero_and_the_top_level(facts: CustomerFacts) -> None:
    g = level_of(facts)

    assert 0 <= g.level <= RULEBOOK.max_level(facts.kind)
    assert g.label == RULEBOOK.level_labels[g.level]


@CONSISTENCY_SETTINGS
@given(facts=projects())
def test_heat_is_one_of_the_known_percents(facts: ProjectFacts) -> None:
    h = heat_of(facts)

    assert h.percent in HEATS
    assert h.closed == (h.stage in ("won", "lost"))
    if h.closed:
        assert h.percent == (100 if h.stage == "won" else 0)


# --- (d) a retracted copy of anything changes nothing ---------------------------------------------------


@PROPERTY_SETTINGS
@given(facts=any_facts(), data=st.data())
def test_adding_a_retracted_copy_of_any_event_changes_nothing(facts, data) -> None:
    events = every_event(facts)
    if not events:
        return
    original = data.draw(st.sampled_from(events))
    copy = replace(original, id=10**6, retracted=True, occurred_at=data.draw(st.sampled_from([original.occurred_at, AS_OF, at(1000)])))

    def with_copy(evs: tuple[Event, ...]) -> tuple[Event, ...]:
        return (*evs, copy) if original in evs else evs

    assert grade(map_events(facts, with_copy)) == grade(facts)


# --- (e) the gap points at the next grade and lists only its unmet criteria -------------------------------


@CONSISTENCY_SETTINGS
@given(facts=customers())
def test_level_gap_targets_the_next_level_and_lists_its_unmet_criteria(facts: CustomerFacts) -> None:
    g = level_of(facts)
    top = RULEBOOK.max_level(facts.kind)

    if g.level == top:
        assert g.next is None
        return
    assert g.next is not None
    assert g.next.target == g.level + 1
    next_criteria = [c for c in g.criteria if c.step == g.level + 1]
    assert g.next.missing == tuple(c.id for c in next_criteria if not c.met)
    assert g.next.need == len(g.next.missing) >= 1  # default rulebook: every criterion is required


@CONSISTENCY_SETTINGS
@given(facts=projects())
def test_heat_gap_targets_the_next_tier_up_and_lists_its_unmet_criteria(facts: ProjectFacts) -> None:
    h = heat_of(facts)
    tiers_up = sorted(t.value for t in RULEBOOK.tiers if t.value > h.percent)

    if h.closed or not tiers_up:
        assert h.next is None
        return
    assert h.next is not None
    assert h.next.target == tiers_up[0]
    assert h.next.missing == tuple(c.id for c in h.criteria if c.step == h.next.target and not c.met)
    assert h.next.need == len(h.next.missing) >= 1


# --- The grade is explained by its criteria ----------------------------------------------------------


@CONSISTENCY_SETTINGS
@given(facts=customers())
def test_level_is_the_highest_level_whose_criteria_and_all_below_are_met(facts: CustomerFacts) -> None:
    g = level_of(facts)
    held = [all(c.met for c in g.criteria if c.step == n) for n in range(1, RULEBOOK.max_level(facts.kind) + 1)]

    expected = next((n for n, ok in enumerate(held) if not ok), len(held))
    assert g.level == expected


@CONSISTENCY_SETTINGS
@given(facts=projects())
def test_open_project_heat_is_the_highest_tier_whose_criteria_are_all_met(facts: ProjectFacts) -> None:
    h = heat_of(facts)
    if h.closed:
        return
    holding = [t.value for t in RULEBOOK.tiers if all(c.met for c in h.criteria if c.step == t.value)]

    assert h.percent == max(holding, default=0)


@CONSISTENCY_SETTINGS
@given(facts=customers(), data=st.data())
def test_a_new_fact_never_lowers_a_level_unless_it_is_read_as_latest(facts: CustomerFacts, data) -> None:
    # Visits are read as "latest visit" (a rejecting one can undo O1.4); every other own
    # event of a customer is only ever counted, so logging it can only help.
    types = tuple(t for t in (OWNER_OWN_TYPES if facts.kind == "owner" else INSTALLER_TYPES) if t != "visit")
    draft = data.draw(drafts(types, (facts.customer_id,), (None,) if facts.kind == "owner" else (None, PROJECT, OTHER_PROJECT)))
    extra = Event(id=10**6, **{**draft, "retracted": False})

    assert level_of(replace(facts, events=(*facts.events, extra))).level >= level_of(facts).level
