"""How criteria combine into a grade: cumulative levels, highest heat tier, `at_least`,
`within_days`, "latest", the gap to the next grade, and the labels a user reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.domain.facts import Event

from .builders import (
    AS_OF,
    INSTALLER,
    OWNER,
    PROJECT,
    criterion,
    default_rulebook,
    edited_rulebook,
    event,
    heat_of,
    installer_at,
    installer_events,
    installer_facts,
    level_of,
    met_ids,
    owner_at,
    owner_events,
    owner_facts,
    owner_projects,
    project_facts,
)


def without(events: tuple[Event, ...], *types: str) -> tuple[Event, ...]:
    return tuple(e for e in events if e.type not in types)


def later(days: float):
    return AS_OF + timedelta(days=days)


# --- Levels are cumulative -----------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_owner_meeting_every_criterion_up_to_a_level_is_at_that_level(level: int) -> None:
    assert level_of(owner_at(level)).level == level


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_installer_meeting_every_criterion_up_to_a_level_is_at_that_level(level: int) -> None:
    assert level_of(installer_at(level)).level == level


def test_level_three_facts_without_level_two_leave_the_owner_at_level_one() -> None:
    level_three_only = tuple(e for e in owner_events(3) if not 21 <= e.id <= 24)

    grade = level_of(owner_facts(*level_three_only, projects=owner_projects(3)))

    assert grade.level == 1
    assert {"O3.1", "O3.2", "O3.3", "O3.4", "O3.5"} <= met_ids(grade)
    assert grade.next is not None and grade.next.target == 2


def test_installer_missing_only_the_inquiry_is_ungraded_despite_every_higher_criterion() -> None:
    grade = level_of(installer_facts(*without(installer_events(4), "inquiry_received")))

    assert grade.level == 0
    assert met_ids(grade) == {c.id for c in grade.criteria} - {"I1.3"}
    assert grade.next is not None and (grade.next.target, grade.next.missing, grade.next.need) == (1, ("I1.3",), 1)


def test_one_missing_level_four_criterion_keeps_the_owner_at_level_three() -> None:
    grade = level_of(owner_facts(*without(owner_events(4), "opens_doors"), projects=owner_projects(4)))

    assert grade.level == 3
    assert grade.next is not None and (grade.next.target, grade.next.missing, grade.next.need) == (4, ("O4.2",), 1)


def test_grade_reports_every_criterion_of_the_customers_kind_in_rulebook_order() -> None:
    rulebook = default_rulebook()
    for kind, facts in (("owner", owner_at(2)), ("installer", installer_at(2))):
        expected = [(c.id, step.value) for step in rulebook.levels[kind] for c in step.criteria]

        grade = level_of(facts)

        assert [(c.id, c.step) for c in grade.criteria] == expected


# --- Heat: the highest tier that holds; tiers are not cumulative --------------------------------


def seventy_without_fifty() -> tuple[Event, ...]:
    """70 % holds (brand listed, owner recommends, a level III bidder with our product), but
    50 % does not: nobody knows the competitors' strategy and no winner accepted our product."""
    return (
        event(1, "tender_brand", project=PROJECT, status="listed"),
        event(2, "owner_stance", project=PROJECT, stance="recommends"),
        event(3, "bid_joined", customer=INSTALLER, project=PROJECT, with_our_product=True),
    )


def test_seventy_holds_while_fifty_and_thirty_do_not() -> None:
    heat = heat_of(project_facts(*seventy_without_fifty(), levels={INSTALLER: 3}))

    assert "H50.4" not in met_ids(heat) and "H30.1" not in met_ids(heat)
    assert heat.percent == 70
    assert (heat.label.zh, heat.label.en) == ("70%成交热度", "70 % deal heat")
    assert heat.next is not None and (heat.next.target, heat.next.missing, heat.next.need) == (90, ("H90.1", "H90.2"), 2)


def test_ninety_holds_on_its_own() -> None:
    heat = heat_of(
        project_facts(
            event(1, "tender_brand", project=PROJECT, status="sole"),
            event(2, "bid_won", customer=INSTALLER, project=PROJECT),
            event(3, "contract_signed", customer=INSTALLER, project=PROJECT),
            levels={INSTALLER: 0},
        )
    )

    assert heat.percent == 90
    assert heat.closed is False
    assert heat.next is None


def test_when_fifty_and_thirty_both_hold_the_project_is_fifty() -> None:
    heat = heat_of(
        project_facts(
            event(1, "stage_changed", days=40, project=PROJECT, stage="bidding"),
            event(2, "spec_agreed", days=35, project=PROJECT),
            event(3, "tender_brand", days=30, project=PROJECT, status="listed"),
            event(4, "owner_stance", days=30, project=PROJECT, stance="accepts"),
            event(5, "bid_won", days=20, customer=INSTALLER, project=PROJECT),
            event(6, "product_accepted", days=15, customer=INSTALLER, project=PROJECT),
            event(7, "competitor_strategy_known", days=10, project=PROJECT),
            owner_level=2,
            levels={INSTALLER: 2},
        )
    )

    assert heat.percent == 50
    assert heat.next is not None and (heat.next.target, heat.next.missing) == (70, ("H70.2", "H70.3"))


def test_project_with_nothing_logged_is_cold_and_points_at_thirty() -> None:
    heat = heat_of(project_facts())

    assert heat.percent == 0
    assert heat.closed is False
    assert heat.stage is None
    assert (heat.label.zh, heat.label.en) == ("冷(0%)", "Cold (0 %)")
    assert heat.next is not None
    assert (heat.next.target, heat.next.missing, heat.next.need) == (30, ("H30.1", "H30.2", "H30.3", "H30.4"), 4)


def test_current_stage_is_the_latest_stage_change() -> None:
    heat = heat_of(
        project_facts(
            event(1, "stage_changed", days=30, project=PROJECT, stage="tender_drafting"),
            event(2, "stage_changed", days=20, project=PROJECT, stage="bidding"),
            event(3, "stage_changed", days=10, project=PROJECT, stage="awarded", retracted=True),
        )
    )

    assert heat.stage == "bidding"


# --- at_least relaxes a level or a tier ------------------------------------------------------


def relax_owner_level_one_to_four(data: dict[str, Any]) -> None:
    data["levels"]["owner"][0]["at_least"] = 4


def test_relaxed_level_one_holds_with_four_of_five_criteria() -> None:
    rulebook = edited_rulebook(relax_owner_level_one_to_four)

    grade = level_of(owner_facts(*without(owner_events(1), "contact_obtained")), rulebook)

    assert grade.level == 1
    assert criterion(grade, "O1.3").met is False


def test_relaxed_level_one_still_needs_four_and_says_how_many_are_missing() -> None:
    rulebook = edited_rulebook(relax_owner_level_one_to_four)

    grade = level_of(owner_facts(*without(owner_events(1), "contact_obtained", "impression_confirmed")), rulebook)

    assert grade.level == 0
    assert grade.next is not None and (grade.next.target, grade.next.missing, grade.next.need) == (1, ("O1.3", "O1.5"), 1)


def test_relaxing_level_two_does_not_relax_level_one() -> None:
    def relax_owner_level_two(data: dict[str, Any]) -> None:
        data["levels"]["owner"][1]["at_least"] = 1

    grade = level_of(owner_facts(*without(owner_events(2), "contact_obtained")), edited_rulebook(relax_owner_level_two))

    assert grade.level == 0


def test_relaxed_fifty_tier_holds_with_two_of_four() -> None:
    def relax_fifty(data: dict[str, Any]) -> None:
        (tier,) = [t for t in data["heat"]["tiers"] if t["percent"] == 50]
        tier["at_least"] = 2

    facts = project_facts(
        event(1, "tender_brand", project=PROJECT, status="listed"),
        event(2, "owner_stance", project=PROJECT, stance="accepts"),
    )

    assert heat_of(facts).percent == 0
    relaxed = heat_of(facts, edited_rulebook(relax_fifty))
    assert relaxed.percent == 50
    assert relaxed.next is not None and (relaxed.next.target, relaxed.next.missing, relaxed.next.need) == (70, ("H70.2", "H70.3"), 2)


# --- within_days: a grade can fall with time alone ----------------------------------------------


def materials_within_30_days(data: dict[str, Any]) -> None:
    data["levels"]["owner"][0]["criteria"][0]["when"]["within_days"] = 30


def test_level_falls_when_an_event_leaves_its_window() -> None:
    rulebook = edited_rulebook(materials_within_30_days)
    facts = owner_facts(*owner_events(1))  # materials sent 10 days before AS_OF

    assert level_of(facts, rulebook, as_of=AS_OF).level == 1
    assert level_of(facts, rulebook, as_of=later(19)).level == 1
    after = level_of(facts, rulebook, as_of=later(21))
    assert after.level == 0
    assert criterion(after, "O1.1").met is False and criterion(after, "O1.1").evidence == ()


def test_without_a_window_the_same_facts_keep_their_level_forever() -> None:
    assert level_of(owner_facts(*owner_events(1)), as_of=later(3650)).level == 1


def test_heat_falls_when_the_latest_tender_brand_leaves_its_window() -> None:
    def sole_brand_within_30_days(data: dict[str, Any]) -> None:
        data["heat"]["tiers"][0]["criteria"][0]["when"]["within_days"] = 30

    rulebook = edited_rulebook(sole_brand_within_30_days)
    facts = project_facts(
        event(1, "tender_brand", days=20, project=PROJECT, status="sole"),
        event(2, "bid_won", days=20, customer=INSTALLER, project=PROJECT),
        event(3, "contract_signed", days=20, customer=INSTALLER, project=PROJECT),
        levels={INSTALLER: 0},
    )

    assert heat_of(facts, rulebook, as_of=AS_OF).percent == 90
    assert heat_of(facts, rulebook, as_of=later(15)).percent != 90


def test_visits_outside_the_window_do_not_count_towards_three() -> None:
    def visits_within_90_days(data: dict[str, Any]) -> None:
        data["levels"]["owner"][0]["criteria"][3]["when"]["all_of"][0]["within_days"] = 90

    rulebook = edited_rulebook(visits_within_90_days)
    facts = owner_facts(
        event(1, "visit", days=120, customer=OWNER, reception="welcoming"),
        event(2, "visit", days=60, customer=OWNER, reception="welcoming"),
        event(3, "visit", days=30, customer=OWNER, reception="neutral"),
    )

    assert criterion(level_of(facts), "O1.4").met is True
    windowed = criterion(level_of(facts, rulebook), "O1.4")
    assert windowed.met is False
    assert 1 not in windowed.evidence


def test_an_event_after_as_of_is_outside_the_window() -> None:
    rulebook = edited_rulebook(materials_within_30_days)
    facts = owner_facts(event(1, "materials_sent", days=-5, customer=OWNER, items=["samples"]))  # 5 days after AS_OF

    assert criterion(level_of(facts, rulebook), "O1.1").met is False


# --- "latest" is by occurred_at, not by id or arrival order ----------------------------------------


def two_tender_brands(newer_id: int, newer_status: str, older_id: int, older_status: str) -> tuple[Event, Event]:
    return (
        event(newer_id, "tender_brand", days=5, project=PROJECT, status=newer_status),
        event(older_id, "tender_brand", days=20, project=PROJECT, status=older_status),
    )


@pytest.mark.parametrize("arrival", ["newest first", "oldest first"])
def test_an_older_event_with_a_higher_id_does_not_override_a_newer_one(arrival: str) -> None:
    newer, older = two_tender_brands(newer_id=3, newer_status="listed", older_id=9, older_status="sole")
    events = (newer, older) if arrival == "newest first" else (older, newer)

    heat = heat_of(project_facts(*events))

    assert criterion(heat, "H90.1").met is False
    assert criterion(heat, "H90.1").evidence == (3,)
    assert criterion(heat, "H70.1").met is True


@pytest.mark.parametrize("arrival", ["newest first", "oldest first"])
def test_a_newer_event_with_a_lower_id_is_the_latest(arrival: str) -> None:
    newer, older = two_tender_brands(newer_id=3, newer_status="sole", older_id=9, older_status="absent")
    events = (newer, older) if arrival == "newest first" else (older, newer)

    heat = heat_of(project_facts(*events))

    assert criterion(heat, "H90.1").met is True
    assert criterion(heat, "H90.1").evidence == (3,)


def test_a_rejecting_visit_logged_late_about_an_old_meeting_does_not_block_level_one() -> None:
    facts = owner_facts(
        *without(owner_events(1), "visit"),
        event(10, "visit", days=30, customer=OWNER, reception="welcoming"),
        event(11, "visit", days=20, customer=OWNER, reception="neutral"),
        event(12, "visit", days=10, customer=OWNER, reception="neutral"),
        event(99, "visit", days=40, customer=OWNER, reception="rejecting"),  # highest id, oldest meeting
    )

    grade = level_of(facts)

    assert grade.level == 1
    assert criterion(grade, "O1.4").evidence == (10, 11, 12, 99)


def test_the_winner_is_the_latest_award_by_occurred_at() -> None:
    heat = heat_of(
        project_facts(
            event(9, "bid_won", days=30, customer=INSTALLER, project=PROJECT),
            event(2, "bid_won", days=5, customer=12, project=PROJECT),
            event(3, "product_accepted", days=4, customer=12, project=PROJECT),
            levels={INSTALLER: 4, 12: 2},
        )
    )

    assert criterion(heat, "H50.3").met is True
    assert [r.id for r in criterion(heat, "H50.3").related] == [12]


# --- The gap to the next grade ------------------------------------------------------------------


def test_ungraded_owner_needs_all_of_level_one() -> None:
    grade = level_of(owner_facts())

    assert grade.next is not None
    assert (grade.next.target, grade.next.missing, grade.next.need) == (1, ("O1.1", "O1.2", "O1.3", "O1.4", "O1.5"), 5)


def test_gap_lists_only_the_unmet_criteria_of_the_next_level() -> None:
    grade = level_of(
        owner_facts(
            *owner_events(1),
            event(21, "product_understood", customer=OWNER),
            event(23, "info_shared", customer=OWNER, kind="important"),
        )
    )

    assert grade.level == 1
    assert grade.next is not None and (grade.next.target, grade.next.missing, grade.next.need) == (2, ("O2.2", "O2.4"), 2)


@pytest.mark.parametrize("facts", [owner_at(4), installer_at(4)], ids=["owner", "installer"])
def test_top_level_has_no_next_grade(facts) -> None:
    grade = level_of(facts)

    assert grade.level == 4
    assert grade.next is None
    assert (grade.label.zh, grade.label.en) == ("四级", "Level IV")


def test_closed_project_has_no_next_grade() -> None:
    for stage in ("won", "lost"):
        assert heat_of(project_facts(event(1, "stage_changed", project=PROJECT, stage=stage))).next is None


# --- Labels a user reads ----------------------------------------------------------------------------


def test_every_level_from_zero_to_the_top_has_a_chinese_and_an_english_label() -> None:
    rulebook = default_rulebook()
    top = max(rulebook.max_level(kind) for kind in ("owner", "installer"))

    assert top == 4
    for n in range(top + 1):
        label = rulebook.level_labels[n]
        assert label.zh.strip() and label.en.strip()


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_a_grade_carries_the_label_of_its_level(level: int) -> None:
    rulebook = default_rulebook()

    assert level_of(owner_at(level)).label == rulebook.level_labels[level]
    assert level_of(installer_at(level)).label == rulebook.level_labels[level]


def test_every_heat_tier_and_closed_state_has_a_chinese_and_an_english_label() -> None:
    rulebook = default_rulebook()
    labels = [t.label for t in rulebook.tiers] + [rulebook.cold_label, *rulebook.closed_labels.values()]

    assert [t.value for t in rulebook.tiers] == [90, 70, 50, 30]
    assert set(rulebook.closed_labels) == {"won", "lost"}
    for label in labels:
        assert label.zh.strip() and label.en.strip()


def test_every_criterion_and_event_type_has_a_chinese_and_an_english_label() -> None:
    rulebook = default_rulebook()
    criteria = [c for steps in (*rulebook.levels.values(), rulebook.tiers) for step in steps for c in step.criteria]
    labels = [c.label for c in criteria] + [et.label for et in rulebook.event_types.values()]

    for label in labels:
        assert label.zh.strip() and label.en.strip()


def test_an_unmet_criterion_shows_the_label_of_the_rulebook_it_was_graded_by() -> None:
    def rename_inquiry(data: dict[str, Any]) -> None:
        data["levels"]["installer"][0]["criteria"][2]["label"] = {"zh": "有询价", "en": "Asked for a price"}

    before = criterion(level_of(installer_facts()), "I1.3")
    renamed = criterion(level_of(installer_facts(), edited_rulebook(rename_inquiry)), "I1.3")
    after = criterion(level_of(installer_facts()), "I1.3")

    assert (renamed.met, renamed.evidence, renamed.label.en) == (False, (), "Asked for a price")
    assert before == after and before.label.en == "The customer asked for a quotation"


def _remote_visits_added(data: dict) -> None:
    """A rulebook that adds an attribute with a default to `visit` and asks O1.4's visits
    (and its latest visit) to be on site: events logged before it carry no such attribute."""
    data["event_types"]["visit"]["attributes"]["remote"] = {"type": "bool", "default": False}
    o14 = next(c for c in data["levels"]["owner"][0]["criteria"] if c["id"] == "O1.4")
    o14["when"] = {"all_of": [{"event": "visit", "min_count": 3, "where": {"remote": False}}, {"latest": "visit", "attribute": "remote", "in": [False]}]}


@pytest.mark.parametrize("remote", [None, False, True])
def test_an_attribute_left_out_is_read_as_its_catalogue_default(remote: bool | None) -> None:
    # Events stored before a rulebook added an attribute lack it: they were read as having no
    # value, so three on-site visits logged then no longer met O1.4 after the switch, while
    # the same visits logged afterwards (their default filled in) did.
    rulebook = edited_rulebook(_remote_visits_added)
    extra = {} if remote is None else {"remote": remote}
    visits = [event(i, "visit", days=10 + i, customer=OWNER, reception="neutral", **extra) for i in (1, 2, 3)]

    o14 = criterion(level_of(owner_facts(*visits), rulebook), "O1.4")

    assert o14.met is (remote is not True)
    if o14.met:
        assert set(o14.evidence) == {1, 2, 3}


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (("tender_drafting", "bidding"), "bidding"),
        (("bidding", "awarded"), "awarded"),  # "bidding" is the later text: it won the tie
        (("awarded", "contracted", "bidding"), "contracted"),
        (("contracted", "lost"), "lost"),
        (("lead", "won"), "won"),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_stage_changes_at_one_instant_leave_the_project_at_the_furthest(stages: tuple[str, ...], expected: str, reverse: bool) -> None:
    # An ERP that logs to the day sends two moves with one date; in either arrival order the
    # project is where the later move put it, not at the stage whose name sorts last.
    order = stages[::-1] if reverse else stages
    events = [event(i, "stage_changed", days=3, project=PROJECT, stage=stage) for i, stage in enumerate(order, 1)]

    assert heat_of(project_facts(*events)).stage == expected


@pytest.mark.parametrize(("stages", "expected"), [(("awarded", "on_hold"), "awarded"), (("contracted", "lead", "lost", "on_hold"), "lost"), (("on_hold", "lead"), "lead")])
def test_a_stage_of_a_rulebook_s_own_ranks_below_the_ordered_ones_at_one_instant(stages: tuple[str, ...], expected: str) -> None:
    # `on_hold`, in neither the ordered nor the closed stages, ranked with the closed ones,
    # and a project logged `lost` at the same instant stayed open (the review's find).
    def with_on_hold(data: dict) -> None:
        data["event_types"]["stage_changed"]["attributes"]["stage"]["values"].append("on_hold")

    rulebook = edited_rulebook(with_on_hold)
    events = [event(i, "stage_changed", days=3, project=PROJECT, stage=stage) for i, stage in enumerate(stages, 1)]

    heat = heat_of(project_facts(*events), rulebook)

    assert heat.stage == expected
    assert heat.closed is (expected == "lost")
