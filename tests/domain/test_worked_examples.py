"""The five worked examples of docs/rulebook.md ("these must hold"), at the domain level.

The parts about history rows (examples 1 and 3: "the history has both changes", "the
project's history names the trigger") are written by the application layer, not by
`app/domain`; here we check what the domain hands that layer: the grades before and after,
and — for the trigger — the linked customer and its level that the heat criterion names.
"""

from __future__ import annotations

from app.domain.evaluation import Related
from app.domain.facts import Event

from .builders import (
    INSTALLER,
    OTHER_INSTALLER,
    OWNER,
    PROJECT,
    criterion,
    event,
    heat_of,
    installer_at,
    installer_events,
    installer_facts,
    level_of,
    met_ids,
    owner_at,
    owner_facts,
    project_facts,
    retract,
)


def example_one_owner_events(last_reception: str = "neutral") -> list[Event]:
    return [
        event(1, "materials_sent", customer=OWNER, items=["samples", "credentials"]),
        event(2, "company_introduced", customer=OWNER),
        event(3, "contact_obtained", customer=OWNER),
        event(4, "impression_confirmed", customer=OWNER),
        event(5, "visit", days=30, customer=OWNER, reception="welcoming", with_manager=False),
        event(6, "visit", days=20, customer=OWNER, reception="neutral", with_manager=False),
        event(7, "visit", days=10, customer=OWNER, reception=last_reception, with_manager=False),
    ]


def level_two_owner_events() -> list[Event]:
    return [
        event(21, "product_understood", customer=OWNER),
        event(22, "private_meeting", customer=OWNER),
        event(23, "info_shared", customer=OWNER, kind="important"),
        event(24, "easy_access", customer=OWNER, includes_manager=False, critical_period=False),
    ]


# --- Example 1 -----------------------------------------------------------------------------


def test_owner_with_the_five_level_one_facts_is_at_level_one() -> None:
    grade = level_of(owner_facts(*example_one_owner_events()))

    assert grade.level == 1
    assert (grade.label.zh, grade.label.en) == ("一级", "Level I")
    assert criterion(grade, "O1.4").evidence == (5, 6, 7)


def test_gap_from_level_one_to_two_lists_o2_1_to_o2_4() -> None:
    grade = level_of(owner_facts(*example_one_owner_events()))

    assert grade.next is not None
    assert grade.next.target == 2
    assert grade.next.missing == ("O2.1", "O2.2", "O2.3", "O2.4")
    assert grade.next.need == 4


def test_retracting_one_visit_drops_the_owner_to_level_zero() -> None:
    events = example_one_owner_events()
    before = level_of(owner_facts(*events))

    events[5] = retract(events[5])
    after = level_of(owner_facts(*events))

    assert (before.level, after.level) == (1, 0)
    assert (after.label.zh, after.label.en) == ("未定级", "Ungraded")
    assert criterion(after, "O1.4").met is False
    assert after.next is not None and after.next.target == 1 and after.next.missing == ("O1.4",)


# --- Example 2 -----------------------------------------------------------------------------


def test_rejecting_third_visit_blocks_level_one_even_with_level_two_met() -> None:
    grade = level_of(owner_facts(*example_one_owner_events(last_reception="rejecting"), *level_two_owner_events()))

    assert grade.level == 0
    assert criterion(grade, "O1.4").met is False
    assert {"O2.1", "O2.2", "O2.3", "O2.4"} <= met_ids(grade)
    assert grade.next is not None and grade.next.target == 1 and grade.next.missing == ("O1.4",)


# --- Example 3 -----------------------------------------------------------------------------


def example_three_project(bidder_level: int, owner_level: int):
    return project_facts(
        event(101, "stage_changed", days=40, project=PROJECT, stage="tender_drafting"),
        event(102, "spec_agreed", days=30, project=PROJECT),
        event(103, "bid_joined", days=20, customer=INSTALLER, project=PROJECT, with_our_product=False),
        owner_level=owner_level,
        levels={INSTALLER: bidder_level},
    )


def test_project_with_level_two_owner_spec_and_level_one_bidder_is_30() -> None:
    owner_level = level_of(owner_at(2)).level
    bidder_level = level_of(installer_at(1)).level

    heat = heat_of(example_three_project(bidder_level, owner_level))

    assert (owner_level, bidder_level) == (2, 1)
    assert heat.percent == 30
    assert (heat.label.zh, heat.label.en) == ("30%成交热度", "30 % deal heat")
    assert {"H30.1", "H30.2", "H30.3", "H30.4"} <= met_ids(heat)


def test_bidder_falling_to_level_zero_by_a_retraction_cools_the_project_to_0() -> None:
    owner_level = level_of(owner_at(2)).level
    bidder_events = list(installer_events(1))
    bidder_events[2] = retract(bidder_events[2])  # the inquiry: I1.3 no longer met
    bidder_level = level_of(installer_facts(*bidder_events)).level

    heat = heat_of(example_three_project(bidder_level, owner_level))

    assert bidder_level == 0
    assert heat.percent == 0
    assert (heat.label.zh, heat.label.en) == ("冷(0%)", "Cold (0 %)")
    # The criterion that failed names the trigger: the bidder and the level it fell to.
    h30_4 = criterion(heat, "H30.4")
    assert h30_4.met is False
    assert h30_4.related == (Related("customer", INSTALLER, 0),)
    assert heat.next is not None and heat.next.target == 30 and heat.next.missing == ("H30.4",)


# --- Example 4 -----------------------------------------------------------------------------


def example_four_project(contract_with: int):
    return project_facts(
        event(1, "bid_joined", days=40, customer=INSTALLER, project=PROJECT, with_our_product=True),
        event(2, "bid_joined", days=40, customer=OTHER_INSTALLER, project=PROJECT, with_our_product=True),
        event(3, "bid_won", days=30, customer=INSTALLER, project=PROJECT),
        event(4, "tender_brand", days=20, project=PROJECT, status="sole"),
        event(5, "contract_signed", days=10, customer=contract_with, project=PROJECT, amount=250000),
        levels={INSTALLER: 0, OTHER_INSTALLER: 0},
    )


def test_sole_brand_and_contract_with_the_winner_is_90() -> None:
    heat = heat_of(example_four_project(contract_with=INSTALLER))

    assert heat.percent == 90
    assert criterion(heat, "H90.2").evidence == (5,)
    assert heat.next is None


def test_same_contract_with_an_installer_that_did_not_win_is_not_90() -> None:
    heat = heat_of(example_four_project(contract_with=OTHER_INSTALLER))

    assert heat.percent != 90
    assert criterion(heat, "H90.1").met is True
    assert criterion(heat, "H90.2").met is False


# --- Example 5 (and its mirror, lost) ---------------------------------------------------------


def cold_signals() -> tuple[Event, ...]:
    return (
        event(1, "tender_brand", days=50, project=PROJECT, status="absent"),
        event(2, "owner_stance", days=45, project=PROJECT, stance="refuses"),
        event(3, "bid_joined", days=40, customer=INSTALLER, project=PROJECT, with_our_product=False),
    )


HOT_LEVELS = {INSTALLER: 0}  # the winner is linked to the project, ungraded


def hot_signals() -> tuple[Event, ...]:
    return (
        event(11, "tender_brand", days=50, project=PROJECT, status="sole"),
        event(12, "bid_won", days=40, customer=INSTALLER, project=PROJECT),
        event(13, "contract_signed", days=35, customer=INSTALLER, project=PROJECT),
    )


def test_won_project_is_100_whatever_else_is_logged() -> None:
    for others in ((), cold_signals(), hot_signals()):
        heat = heat_of(project_facts(*others, event(99, "stage_changed", days=1, project=PROJECT, stage="won"), levels=HOT_LEVELS))

        assert heat.percent == 100
        assert heat.closed is True
        assert heat.stage == "won"
        assert (heat.label.zh, heat.label.en) == ("已成交", "Won")
        assert heat.next is None


def test_lost_project_is_0_and_closed_even_with_every_90_criterion_met() -> None:
    heat = heat_of(project_facts(*hot_signals(), event(99, "stage_changed", days=1, project=PROJECT, stage="lost"), levels=HOT_LEVELS))

    assert {"H90.1", "H90.2"} <= met_ids(heat)
    assert heat.percent == 0
    assert heat.closed is True
    assert (heat.label.zh, heat.label.en) == ("已丢单", "Lost")
    assert heat.next is None


def test_retracting_the_won_stage_reopens_the_project() -> None:
    heat = heat_of(project_facts(*hot_signals(), event(99, "stage_changed", days=1, project=PROJECT, stage="won", retracted=True), levels=HOT_LEVELS))

    assert heat.closed is False
    assert heat.percent == 90
