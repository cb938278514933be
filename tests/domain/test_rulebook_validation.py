"""The default rulebook loads; a broken one is refused with every problem's place and reason."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest

from app.domain.evaluation import evaluate_heat
from app.domain.rulebook import RulebookError, load_rulebook, parse_rulebook
from app.services.outbox import heat_tier

from .builders import AS_OF, PROJECT, default_rulebook, default_rulebook_data, event, project_facts

Edit = Callable[[dict[str, Any]], None]


def problems_of(edit: Edit) -> list[tuple[str, str]]:
    data = default_rulebook_data()
    edit(data)
    with pytest.raises(RulebookError) as refused:
        parse_rulebook(data)
    return refused.value.problems


def owner_criterion(level_index: int, criterion_index: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda data: data["levels"]["owner"][level_index]["criteria"][criterion_index]


# --- The default ------------------------------------------------------------------------------


def test_default_rulebook_loads_with_both_customer_kinds_and_four_tiers() -> None:
    rulebook = load_rulebook()

    assert rulebook.max_level("owner") == 4
    assert rulebook.max_level("installer") == 4
    assert [t.value for t in rulebook.tiers] == [90, 70, 50, 30]
    assert rulebook.ordered_stages == ("lead", "tender_drafting", "bidding", "awarded", "contracted")
    assert dict(rulebook.closed_stages) == {"won": 100, "lost": 0}


def test_default_rulebook_holds_the_criteria_of_rulebook_md() -> None:
    rulebook = load_rulebook()
    ids = {kind: [c.id for step in steps for c in step.criteria] for kind, steps in rulebook.levels.items()}

    assert ids["owner"] == [f"O{n}" for n in ("1.1 1.2 1.3 1.4 1.5 2.1 2.2 2.3 2.4 3.1 3.2 3.3 3.4 3.5 4.1 4.2 4.3 4.4".split())]
    assert ids["installer"] == [f"I{lvl}.{i}" for lvl in range(1, 5) for i in range(1, 6)]
    assert [c.id for t in rulebook.tiers for c in t.criteria] == [
        "H90.1", "H90.2", "H70.1", "H70.2", "H70.3", "H50.1", "H50.2", "H50.3", "H50.4", "H30.1", "H30.2", "H30.3", "H30.4",
    ]  # fmt: skip


def test_default_rulebook_catalogue_matches_rulebook_md_scopes() -> None:
    types = load_rulebook().event_types

    assert len(types) == 29
    assert {n for n, t in types.items() if t.customer == "required" and t.project == "required"} == {
        "switched_to_us", "bid_joined", "bid_won", "product_accepted", "contract_signed",
    }  # fmt: skip
    assert {n for n, t in types.items() if t.customer == "forbidden"} == {
        "stage_changed", "tender_brand", "spec_agreed", "owner_stance", "competitor_strategy_known",
    }  # fmt: skip
    assert {n for n, t in types.items() if t.project == "optional"} == {"visit", "info_shared", "order_placed", "advocates"}
    assert {n for n, t in types.items() if t.customer_kind == "installer"} == {
        "switched_to_us", "bid_joined", "bid_won", "product_accepted", "contract_signed",
    }  # fmt: skip


def test_parsing_the_default_data_again_gives_the_same_rulebook() -> None:
    assert parse_rulebook(default_rulebook_data()) == default_rulebook()


# --- Broken rulebooks, each with its exact place and reason -----------------------------------------


def set_key(get: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Edit:
    return lambda data: get(data).__setitem__(key, value)


def nested_any_of(depth: int) -> dict[str, Any]:
    condition: dict[str, Any] = {"event": "materials_sent"}
    for _ in range(depth - 1):
        condition = {"any_of": [condition]}
    return condition


def swap_owner_levels_two_and_three(data: dict[str, Any]) -> None:
    levels = data["levels"]["owner"]
    levels[1], levels[2] = levels[2], levels[1]


def swap_tiers_seventy_and_fifty(data: dict[str, Any]) -> None:
    tiers = data["heat"]["tiers"]
    tiers[1], tiers[2] = tiers[2], tiers[1]


def never_won(no_type: str) -> list[tuple[str, str]]:
    """The problems of the default rulebook's criteria on a won project or a winner, where
    `no_type` says why no event makes one ("there is no event type bid_won…")."""
    return [
        ("levels.installer[3].criteria[4].when.on_won_project", f"{no_type}, so no project is ever won"),
        ("heat.tiers[0].criteria[1].when", f"{no_type}, so a project never has a winner"),
        ("heat.tiers[2].criteria[2].when", f"{no_type}, so a project never has a winner"),
    ]


BROKEN = [
    pytest.param(
        set_key(lambda d: owner_criterion(0, 0)(d)["when"], "event", "gift_sent"),
        [("levels.owner[0].criteria[0].when.event", "unknown event type 'gift_sent'")],
        id="unknown event type in a criterion",
    ),
    pytest.param(
        set_key(lambda d: owner_criterion(1, 2)(d)["when"], "where", {"colour": "red"}),
        [("levels.owner[1].criteria[2].when.where.colour", "event type 'info_shared' has no attribute 'colour'")],
        id="attribute not on the event type",
    ),
    pytest.param(
        set_key(lambda d: owner_criterion(1, 2)(d)["when"], "where", {"kind": "gossip"}),
        [("levels.owner[1].criteria[2].when.where.kind", "'gossip' is not one of important, competitors, bid_projects, core")],
        id="enum value not allowed in where",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "in", ["only"]),
        [("heat.tiers[0].criteria[0].when.in[0]", "'only' is not one of absent, listed, sole")],
        id="enum value not allowed in latest",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["owner"][1]["criteria"][3]["when"]["any_of"][1], "where", {"with_manager": "yes"}),
        [("levels.owner[1].criteria[3].when.any_of[1].where.with_manager", "must be true or false")],
        id="bool attribute compared to a string",
    ),
    pytest.param(
        set_key(owner_criterion(1, 0), "id", "O1.1"),
        [("levels.owner[1].criteria[0].id", "criterion id 'O1.1' used twice (first at levels.owner[0].criteria[0].id)")],
        id="duplicate criterion id within a kind",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][0]["criteria"][0], "id", "O1.1"),
        [("levels.installer[0].criteria[0].id", "criterion id 'O1.1' used twice (first at levels.owner[0].criteria[0].id)")],
        id="duplicate criterion id across kinds",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][3]["criteria"][0], "id", "H90.1"),
        [("heat.tiers[3].criteria[0].id", "criterion id 'H90.1' used twice (first at heat.tiers[0].criteria[0].id)")],
        id="duplicate criterion id across tiers",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["owner"][1], "level", 3),
        [("levels.owner[1].level", "levels must be numbered 1, 2, 3… in order; expected 2")],
        id="level numbered out of sequence",
    ),
    pytest.param(
        swap_owner_levels_two_and_three,
        [
            ("levels.owner[1].level", "levels must be numbered 1, 2, 3… in order; expected 2"),
            ("levels.owner[2].level", "levels must be numbered 1, 2, 3… in order; expected 3"),
        ],
        id="levels listed out of order",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["owner"][0], "at_least", 6),
        [("levels.owner[0].at_least", "cannot exceed the number of criteria (5)")],
        id="at_least greater than the criteria count",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][1], "at_least", 0),
        [("heat.tiers[1].at_least", "must be a whole number ≥ 1")],
        id="at_least zero",
    ),
    pytest.param(
        lambda d: d["level_labels"]["2"].pop("en"),
        [("level_labels.2.en", "is required")],
        id="level label without English",
    ),
    pytest.param(
        lambda d: owner_criterion(0, 0)(d)["label"].pop("zh"),
        [("levels.owner[0].criteria[0].label.zh", "is required")],
        id="criterion label without Chinese",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["cold_label"], "en", "  "),
        [("heat.cold_label.en", "must be a non-empty string")],
        id="blank label",
    ),
    pytest.param(
        lambda d: d["level_labels"].pop("4"),
        [("level_labels.4", "missing label for this level")],
        id="no label for the top level",
    ),
    pytest.param(
        set_key(lambda d: d, "colour", "blue"),
        [("colour", "unknown key")],
        id="unknown top-level key",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "weight", 2),
        [("levels.owner[0].criteria[0].weight", "unknown key")],
        id="unknown key in a criterion",
    ),
    pytest.param(
        set_key(lambda d: owner_criterion(0, 0)(d)["when"], "since", "2024"),
        [("levels.owner[0].criteria[0].when.since", "unknown key")],
        id="unknown key in a condition",
    ),
    pytest.param(
        swap_tiers_seventy_and_fifty,
        [("heat.tiers", "tiers must be listed from the highest percent down, each percent once")],
        id="tiers not descending",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][2], "percent", 70),
        [("heat.tiers", "tiers must be listed from the highest percent down, each percent once")],
        id="two tiers with the same percent",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][0], "percent", 100),
        [("heat.tiers", "tier percents must be between 1 and 99")],
        id="tier at 100 percent",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][3]["criteria"][0]["when"], "stage_reached", "won"),
        [("heat.tiers[3].criteria[0].when.stage_reached", "unknown stage; ordered stages are lead, tender_drafting, bidding, awarded, contracted")],
        id="stage_reached a closed stage",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "when", {"bidder": {"min_level": 1}}),
        [("levels.owner[0].criteria[0].when", "bidder applies only to heat tiers")],
        id="bidder condition in a level",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "when", {"stage_reached": "bidding"}),
        [("levels.owner[0].criteria[0].when", "stage_reached applies to a project (use owned_project for an owner)")],
        id="stage_reached directly in an owner level",
    ),
    pytest.param(
        set_key(lambda d: owner_criterion(0, 0)(d)["when"], "on_won_project", True),
        [("levels.owner[0].criteria[0].when.on_won_project", "applies to installer criteria on events that carry a project")],
        id="on_won_project outside installer criteria",
    ),
    pytest.param(
        set_key(lambda d: owner_criterion(0, 0)(d)["when"], "within_days", 0),
        [("levels.owner[0].criteria[0].when.within_days", "must be a whole number ≥ 1")],
        id="within_days zero",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "not_in", ["absent"]),
        [("heat.tiers[0].criteria[0].when", "needs exactly one of in / not_in")],
        id="latest with both in and not_in",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "when", {"evnt": "materials_sent"}),
        [("levels.owner[0].criteria[0].when", "unknown condition; expected one of event, latest, stage_reached, all_of, any_of, owned_project, bidder, winner, owner")],
        id="misspelt condition",
    ),
    pytest.param(
        set_key(lambda d: d["event_types"]["bid_won"], "customer_kind", "partner"),
        [("event_types.bid_won.customer_kind", "must be one of owner, installer")],
        id="unknown customer kind on an event type",
    ),
    pytest.param(
        lambda d: d["levels"].pop("installer"),
        [("levels.installer", "is required")],
        id="installer levels missing",
    ),
    # The rest were found by a hunt: each was accepted, then failed or could never be met.
    pytest.param(
        lambda d: d.update(version="v" * 65),
        [("version", "at most 64 characters (every history row stores it)")],
        id="version longer than its column (PostgreSQL refused every grade change)",
    ),
    pytest.param(
        lambda d: d["event_types"].update({"t" * 65: {"label": {"zh": "长", "en": "Long"}, "customer": "optional", "project": "optional"}}),
        [("event_types." + "t" * 65, "a type name has 1 to 64 characters (every event stores it)")],
        id="event type name longer than its column",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "when", {"event": "materials_sent", "where": {"items": "samples"}}),
        [("levels.owner[0].criteria[0].when.where.items", "'items' holds a list of values, which no single value equals: a condition on it could never be met")],
        id="where on a list attribute",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][2]["criteria"][2]["when"], "winner", {"min_level": 9}),
        [("heat.tiers[2].criteria[2].when.winner.min_level", "at most 4, the highest level of its customers' kind: no winner could meet it")],
        id="a linked customer's level above the highest",
    ),
    # Criteria that could never be met (a hunt's list): refused as the list attribute is.
    pytest.param(
        set_key(owner_criterion(0, 0), "when", {"event": "bid_joined"}),
        [("levels.owner[0].criteria[0].when.event", "only installers log events of this type, never an owner: a condition on it could never be met")],
        id="an owner level asking for an installer's event",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][0]["criteria"][0], "when", {"event": "tender_brand"}),
        [("levels.installer[0].criteria[0].when.event", "an event of this type never names a customer (its customer is forbidden): a condition on it could never be met")],
        id="a level asking for a project's event",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][3]["criteria"][2], "when", {"latest": "materials_sent", "attribute": "items", "not_in": ["samples"]}),
        [
            ("heat.tiers[3].criteria[2].when.latest", "an event of this type is never on a project (its project is forbidden): a condition on it could never be met"),
            ("heat.tiers[3].criteria[2].when.not_in[0]", "'items' holds a list of values, which no single value equals: a condition on it could never be met"),
        ],
        id="a tier asking for a customer's event",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][1]["criteria"][2]["when"], "where", {"amount": "x"}),
        [("levels.installer[1].criteria[2].when.where.amount", "'amount' is a number: 'x' would never equal one")],
        id="a text where a number is",
    ),
    pytest.param(
        lambda d: (d["stages"]["closed"].__setitem__("cancelled", 0), d["heat"].__setitem__("closed_labels", {"cancelled": {"zh": "取消", "en": "Cancelled"}})),
        [("stages.closed.cancelled", "'cancelled' is not a value of stage_changed.stage, so no project is ever closed so")],
        id="a closed stage no event can set",
    ),
    pytest.param(
        lambda d: (d["stages"]["closed"].__setitem__("on_hold", 10), d["event_types"]["stage_changed"]["attributes"]["stage"]["values"].append("on_hold")),
        [("stages.closed.on_hold", "has no label: give one in heat.closed_labels.on_hold")],
        id="a closed stage without a label (its projects were shown as Cold (0 %))",
    ),
    pytest.param(
        lambda d: d["heat"].__setitem__("closed_labels", {"won": {"zh": "赢", "en": "Won"}, "paused": {"zh": "暂停", "en": "Paused"}}),
        [("heat.closed_labels.won", "give it as heat.won_label"), ("heat.closed_labels.paused", "not a closed stage (stages.closed)")],
        id="a label for won, and one for a stage that is not closed",
    ),
    pytest.param(
        lambda d: d["heat"].__setitem__("closed_labels", ["on_hold"]),
        [("heat.closed_labels", "must be an object of closed stage name to label")],
        id="closed labels that are not an object",
    ),
    pytest.param(
        set_key(owner_criterion(2, 0), "when", {"owned_project": {"winner": {"has": {"event": "contract_signed"}}}}),
        [("levels.owner[2].criteria[0].when.owned_project", "winner applies only to heat tiers, not inside owned_project: an owner's level reads its projects' events, not their customers")],
        id="a winner inside owned_project (accepted, it was never met)",
    ),
    pytest.param(
        set_key(owner_criterion(2, 0), "when", {"owned_project": {"any_of": [{"stage_reached": "bidding"}, {"bidder": {"min_level": 1}}]}}),
        [("levels.owner[2].criteria[0].when.owned_project.any_of[1]", "bidder applies only to heat tiers, not inside owned_project: an owner's level reads its projects' events, not their customers")],
        id="a bidder inside an any_of inside owned_project",
    ),
    pytest.param(
        lambda d: d["event_types"].pop("stage_changed"),
        [("event_types.stage_changed", "needed: a project's stage (and whether it is won or lost) is the enum attribute `stage` of its latest stage_changed event, on the project")],
        id="no stage_changed type",
    ),
    pytest.param(
        lambda d: d["event_types"].pop("bid_won"),
        never_won("there is no event type bid_won"),
        id="no bid_won type",
    ),
    # A hunt's finds: each was accepted, and the criterion could never be met (or, for the
    # null attribute, it read an attribute named "?").
    pytest.param(
        lambda d: d["event_types"]["bid_won"].__setitem__("customer", "forbidden"),
        never_won("there is no event type bid_won that names a customer on a project"),
        id="a bid_won that names no customer",
    ),
    pytest.param(
        lambda d: d["event_types"]["bid_won"].__setitem__("project", "forbidden"),
        never_won("there is no event type bid_won that names a customer on a project"),
        id="a bid_won on no project",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "attribute", None),
        [("heat.tiers[0].criteria[0].when.attribute", "must be an attribute name")],
        id="a latest of a null attribute",
    ),
    pytest.param(
        lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"].pop("attribute"),
        [("heat.tiers[0].criteria[0].when.attribute", "is required")],
        id="a latest without an attribute: one problem, not two",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0], "when", {"latest": "tender_brand", "attribute": "status", "not_in": ["absent", "listed", "sole"]}),
        [("heat.tiers[0].criteria[0].when.not_in", "lists every value of 'status', which an event of this type always has: a condition on it could never be met")],
        id="a not_in of every value of a required enum",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][1]["criteria"][2]["when"], "where", {"amount": -1}),
        [("levels.installer[1].criteria[2].when.where.amount", "'amount' must be ≥ 0: -1 would never equal one, as no event can carry it")],
        id="a where value below the attribute's minimum",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][1]["criteria"][2]["when"], "where", {"order_ref": "x" * 501}),
        [("levels.installer[1].criteria[2].when.where.order_ref", "'order_ref' at most 500 characters: " + repr("x" * 501)[:60] + "… would never equal one, as no event can carry it")],
        id="a where text longer than an attribute holds",
    ),
    pytest.param(
        set_key(lambda d: d["levels"]["installer"][1]["criteria"][2]["when"], "where", {"order_ref": "a\x00b"}),
        [("levels.installer[1].criteria[2].when.where.order_ref", "'order_ref' must not contain the NUL character (U+0000): 'a\\x00b' would never equal one, as no event can carry it")],
        id="a where text with a NUL",
    ),
    pytest.param(
        set_key(owner_criterion(0, 2), "when", {"event": "contact_obtained", "within_days": 1_000_000}),
        [("levels.owner[0].criteria[2].when.within_days", "at most 36500 days (leave within_days out for no window)")],
        id="a window longer than dates go back (it crashed every grade that read it)",
    ),
    pytest.param(
        lambda d: d["level_labels"].__setitem__("²", {"zh": "二", "en": "II"}),
        [("level_labels.²", "keys are level numbers")],
        id="a level label under a digit that is not ASCII (it crashed the validation)",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][3]["criteria"][0], "when", {"owner": {"has": {"event": "bid_joined"}}}),
        [("heat.tiers[3].criteria[0].when.owner.has.event", "only installers log events of this type, never an owner: a condition on it could never be met")],
        id="an owner asked for an installer's event inside a tier",
    ),
    pytest.param(
        set_key(lambda d: d["heat"]["tiers"][3]["criteria"][0], "when", {"bidder": {"has": {"event": "bid_won"}}}),
        [],
        id="a bidder asked for an installer's event is fine",
    ),
    pytest.param(
        lambda d: d["levels"]["installer"].extend({"level": n, "label": {"zh": str(n), "en": str(n)}, "criteria": [{"id": f"X{n}", "label": {"zh": "x", "en": "x"}, "when": {"event": "exclusive"}}]} for n in range(5, 11))
        or d["level_labels"].update({str(n): {"zh": str(n), "en": str(n)} for n in range(5, 11)}),
        [("levels.installer", "at most 9 levels")],
        id="more levels than the customer list's level filter takes",
    ),
    pytest.param(
        lambda d: d["event_types"]["order_placed"]["attributes"]["amount"].__setitem__("min", float("inf")),
        [("event_types.order_placed.attributes.amount.min", "must be a finite number")],
        id="a minimum of 1e400, which JSON reads as infinity (every event was refused as below it)",
    ),
    pytest.param(
        lambda d: d["event_types"]["order_placed"]["attributes"]["amount"].__setitem__("min", float("-inf")),
        [("event_types.order_placed.attributes.amount.min", "must be a finite number")],
        id="a minimum of -1e400",
    ),
    pytest.param(
        lambda d: d["event_types"]["order_placed"]["attributes"]["amount"].__setitem__("min", 10**13 + 1),
        [("event_types.order_placed.attributes.amount.min", "must be from -10000000000000 to 10000000000000 (10¹³), the range of a number attribute")],
        id="a minimum no number attribute can reach",
    ),
    pytest.param(
        lambda d: d["event_types"]["order_placed"]["attributes"]["amount"].__setitem__("min", -(10**13)),
        [],
        id="a minimum at the bound is fine",
    ),
    pytest.param(
        lambda d: d["event_types"]["order_placed"]["attributes"]["amount"].__setitem__("default", 1e300),
        [("event_types.order_placed.attributes.amount.default", "must be ≤ 10000000000000 (10¹³)")],
        id="a default past the bound of a number attribute",
    ),
    pytest.param(
        set_key(owner_criterion(0, 2), "when", {"event": "order_placed", "where": {"amount": float("inf")}}),
        [("levels.owner[0].criteria[2].when.where.amount", "'amount' is a number from -10¹³ to 10¹³: inf would never equal one")],
        id="a where value of 1e400",
    ),
    pytest.param(
        set_key(owner_criterion(0, 2), "when", {"event": "order_placed", "where": {"amount": 10**20}}),
        [("levels.owner[0].criteria[2].when.where.amount", "'amount' is a number from -10¹³ to 10¹³: 100000000000000000000 would never equal one")],
        id="a where value beyond the bound",
    ),
    pytest.param(
        lambda d: d["level_labels"].__setitem__("0" * 4999 + "1", {"zh": "一", "en": "I"}),
        [("level_labels." + "0" * 4999 + "1", "keys are level numbers")],
        id="a level label under a number longer than Python converts (it crashed the validation)",
    ),
    # A hunt's finds of 2026-12-08: a lone surrogate ended start-up in a traceback (the
    # digest encodes the rulebook as UTF-8), a label under "01" replaced level 1's, and a
    # not_in of true and false was refused for an enum but not for a bool.
    pytest.param(
        lambda d: d["title"].__setitem__("en", "x\ud800y"),
        [("title.en", "must be Unicode: it holds a lone surrogate escape such as \\ud800 (half an emoji)")],
        id="a lone surrogate in a label",
    ),
    pytest.param(
        set_key(owner_criterion(0, 2), "when", {"event": "order_placed", "where": {"order_ref": "a\udc00"}}),
        [("levels.owner[0].criteria[2].when.where.order_ref", "must be Unicode: it holds a lone surrogate escape such as \\ud800 (half an emoji)")],
        id="a lone surrogate in a where value",
    ),
    pytest.param(
        lambda d: d["level_labels"].__setitem__("01", {"zh": "壹", "en": "One"}),
        [("level_labels.01", "keys are level numbers without leading zeros: 1")],
        id="a level label under 01 beside 1",
    ),
    pytest.param(
        set_key(owner_criterion(2, 4), "when", {"latest": "easy_access", "attribute": "critical_period", "not_in": [True, False]}),
        [("levels.owner[2].criteria[4].when.not_in", "lists every value of 'critical_period', which an event of this type always has: a condition on it could never be met")],
        id="a not_in of true and false of a bool with a default",
    ),
    pytest.param(
        set_key(owner_criterion(0, 0), "when", nested_any_of(17)),
        [("levels.owner[0].criteria[0].when" + ".any_of[0]" * 16, "conditions nest at most 16 deep")],
        id="conditions nested too deep (GET /v1/rulebook could not answer them)",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), BROKEN)
def test_broken_rulebook_is_refused_with_place_and_reason(edit: Edit, expected: list[tuple[str, str]]) -> None:
    if not expected:  # the control case: the same kind of edit, right
        data = default_rulebook_data()
        edit(data)
        parse_rulebook(data)
        return
    assert problems_of(edit) == expected



def test_a_closed_stage_of_its_own_shows_its_label_and_its_percent() -> None:
    data = default_rulebook_data()
    data["stages"]["closed"]["on_hold"] = 10
    data["event_types"]["stage_changed"]["attributes"]["stage"]["values"].append("on_hold")
    data["heat"]["closed_labels"] = {"on_hold": {"zh": "暂停", "en": "On hold"}}
    rulebook = parse_rulebook(data)

    grade = evaluate_heat(rulebook, project_facts(event(1, "stage_changed", project=PROJECT, stage="on_hold")), AS_OF)

    assert (grade.percent, grade.closed, grade.label.en) == (10, True, "On hold")
    assert heat_tier(rulebook, grade.percent, grade.stage, grade.closed) == ("on_hold", rulebook.closed_labels["on_hold"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"version": "a", "version": "b"}', "not valid JSON: the key 'version' is given twice in one object"),
        ('{"min": NaN}', "not valid JSON: NaN is no JSON number"),
        ('{"min": -Infinity}', "not valid JSON: -Infinity is no JSON number"),
    ],
)
def test_what_python_reads_but_json_has_not_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    # A key given twice was read as its last value; NaN as a minimum that nothing is below.
    path = tmp_path / "rulebook.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RulebookError) as refused:
        load_rulebook(path)

    assert refused.value.problems == [(str(path), reason)]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"x": ' + "9" * 5000 + "}", id="a number"),
        pytest.param('{"x": [-' + "9" * 5000 + "]}", id="a negative number in a list"),
    ],
)
def test_a_number_longer_than_python_converts_is_refused_not_crashed_on(tmp_path: Path, text: str) -> None:
    # Python refuses to convert an integer of more than 4300 digits: `rapport migrate` ended
    # in a traceback and exit status 1 instead of naming the problem.
    path = tmp_path / "rulebook.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RulebookError) as refused:
        load_rulebook(path)

    assert refused.value.problems == [(str(path), "not valid JSON: a number of 5000 digits (at most 4300 are read)")]


def test_a_minimum_of_1e400_in_a_file_is_refused(tmp_path: Path) -> None:
    data = default_rulebook_data()
    data["event_types"]["order_placed"]["attributes"]["amount"]["min"] = "MIN"
    path = tmp_path / "rulebook.json"
    path.write_text(json.dumps(data).replace('"MIN"', "1e400"), encoding="utf-8")

    with pytest.raises(RulebookError) as refused:
        load_rulebook(path)

    assert refused.value.problems == [("event_types.order_placed.attributes.amount.min", "must be a finite number")]


def test_a_default_of_minus_zero_is_stored_as_zero() -> None:
    # PostgreSQL's jsonb has no -0: an event given the default read back 0.0 there, -0.0 on SQLite.
    data = default_rulebook_data()
    data["event_types"]["contract_signed"]["attributes"]["amount"]["default"] = -0.0

    default = parse_rulebook(data).event_types["contract_signed"].attributes["amount"].default

    assert (default, math.copysign(1, default)) == (0.0, 1.0)


def test_every_problem_is_reported_at_once() -> None:
    def break_three_things(data: dict[str, Any]) -> None:
        data["colour"] = "blue"
        data["levels"]["owner"][0]["at_least"] = 9
        data["level_labels"]["1"].pop("zh")

    assert problems_of(break_three_things) == [
        ("colour", "unknown key"),
        ("level_labels.1.zh", "is required"),
        ("levels.owner[0].at_least", "cannot exceed the number of criteria (5)"),
    ]


def test_error_message_lists_each_problem_with_its_place() -> None:
    data = default_rulebook_data()
    data["colour"] = "blue"

    with pytest.raises(RulebookError, match=r"invalid rulebook \(1 problem\(s\)\):\n  colour: unknown key"):
        parse_rulebook(data)


def test_a_rulebook_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(RulebookError) as refused:
        parse_rulebook(["not", "a", "rulebook"])

    assert refused.value.problems == [("(root)", "must be an object")]


# --- Files -------------------------------------------------------------------------------------------


def test_a_file_that_is_not_json_is_refused_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "rulebook.json"
    path.write_text('{"version": \n  oops}', encoding="utf-8")

    with pytest.raises(RulebookError) as refused:
        load_rulebook(path)

    assert refused.value.problems == [(f"{path}:2:3", "not valid JSON: Expecting value")]


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    with pytest.raises(RulebookError) as refused:
        load_rulebook(path)

    assert refused.value.problems == [(str(path), "cannot be read: No such file or directory")]


def test_a_valid_file_loads_like_the_default(tmp_path: Path) -> None:
    path = tmp_path / "copy.json"
    path.write_text((Path(__file__).parents[2] / "app/domain/rulebooks/default.json").read_text(encoding="utf-8"), encoding="utf-8")

    assert load_rulebook(path) == default_rulebook()


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"version": "é"}'.encode("latin-1"))

    with pytest.raises(RulebookError):
        load_rulebook(path)


# --- Malformed values must be refused, never crash the loader or later event checks ---------------------


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(set_key(lambda d: owner_criterion(0, 0)(d)["when"], "event", ["materials_sent"]), id="event as a list"),
        pytest.param(set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "latest", ["tender_brand"]), id="latest as a list"),
        pytest.param(set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "attribute", ["status"]), id="attribute as a list"),
        pytest.param(set_key(lambda d: d["heat"]["tiers"][0]["criteria"][0]["when"], "in", [["sole"]]), id="in holding a list"),
    ],
)
def test_a_malformed_condition_is_refused_not_crashed_on(edit: Edit) -> None:
    data = default_rulebook_data()
    edit(data)

    with pytest.raises(RulebookError):
        parse_rulebook(data)


def test_a_non_numeric_minimum_is_refused() -> None:
    data = default_rulebook_data()
    data["event_types"]["order_placed"]["attributes"]["amount"]["min"] = "0"

    with pytest.raises(RulebookError):
        parse_rulebook(data)


def test_a_default_of_the_wrong_type_is_refused() -> None:
    data = default_rulebook_data()
    data["event_types"]["visit"]["attributes"]["with_manager"]["default"] = "no"

    with pytest.raises(RulebookError):
        parse_rulebook(data)


def test_a_non_boolean_required_flag_is_refused() -> None:
    data = default_rulebook_data()
    data["event_types"]["visit"]["attributes"]["with_manager"]["required"] = "false"

    with pytest.raises(RulebookError):
        parse_rulebook(data)


def test_a_rulebook_digest_follows_its_content_not_its_layout() -> None:
    data = default_rulebook_data()
    reordered = dict(reversed(list(data.items())))
    assert parse_rulebook(reordered).digest == default_rulebook().digest

    for edit in (lambda d: d.update(version=d["version"] + "x"), lambda d: d["levels"]["installer"][0].update(at_least=1), lambda d: d["title"].update(en="Other")):
        changed = default_rulebook_data()
        edit(changed)
        assert parse_rulebook(changed).digest != default_rulebook().digest


def test_a_file_nested_deeper_than_json_can_read_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")

    with pytest.raises(RulebookError) as raised:
        load_rulebook(path)

    assert raised.value.problems == [(str(path), "not valid JSON: nested too deeply")]


def test_a_rulebook_sixteen_conditions_deep_is_accepted() -> None:
    data = default_rulebook_data()
    owner_criterion(0, 0)(data)["when"] = nested_any_of(16)
    assert parse_rulebook(data).version == data["version"]
