"""Small builders for the facts that evaluation reads, so a test states only what matters.

Every event happens `days` before `AS_OF` (the instant the tests grade at). Customer 1 is
the owner, 11–13 are installers, project 100 is the one being graded, 200 another one.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, Callable, Iterable

from app.domain.evaluation import CriterionResult, HeatGrade, LevelGrade, evaluate_heat, evaluate_level
from app.domain.facts import CustomerFacts, Event, LinkedCustomer, OwnedProject, ProjectFacts
from app.domain.rulebook import Rulebook, load_rulebook, parse_rulebook

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)

OWNER = 1
INSTALLER = 11
OTHER_INSTALLER = 12
THIRD_INSTALLER = 13
PROJECT = 100
OTHER_PROJECT = 200


@cache
def default_rulebook() -> Rulebook:
    return load_rulebook()


def default_rulebook_data() -> dict[str, Any]:
    """A fresh, editable copy of the default rulebook's JSON data."""
    return copy.deepcopy(dict(default_rulebook().source))


def edited_rulebook(edit: Callable[[dict[str, Any]], None]) -> Rulebook:
    """The default rulebook with `edit` applied to a copy of its JSON data."""
    data = default_rulebook_data()
    edit(data)
    return parse_rulebook(data)


def at(days: float) -> datetime:
    """The instant `days` before AS_OF."""
    return AS_OF - timedelta(days=days)


def event(
    id: int,
    type: str,
    *,
    days: float = 10,
    customer: int | None = None,
    project: int | None = None,
    retracted: bool = False,
    **attributes: Any,
) -> Event:
    return Event(
        id=id,
        type=type,
        occurred_at=at(days),
        customer_id=customer,
        project_id=project,
        attributes=attributes,
        retracted=retracted,
    )


def retract(e: Event) -> Event:
    return replace(e, retracted=True)


def owner_facts(*events: Event, projects: dict[int, Iterable[Event]] | None = None) -> CustomerFacts:
    """The owner's own events, and the events of the projects it owns."""
    return CustomerFacts(
        customer_id=OWNER,
        kind="owner",
        events=tuple(events),
        owned_projects=tuple(OwnedProject(pid, tuple(evs)) for pid, evs in (projects or {}).items()),
    )


def installer_facts(*events: Event, customer: int = INSTALLER) -> CustomerFacts:
    return CustomerFacts(customer_id=customer, kind="installer", events=tuple(events))


def project_facts(
    *events: Event,
    owner_level: int = 0,
    levels: dict[int, int] | None = None,
    off_project: dict[int, Iterable[Event]] | None = None,
) -> ProjectFacts:
    """Project 100 with its events; `levels` are the current levels of the installers linked
    to it, `off_project` their own events that are on no project."""
    linked_ids = set(levels or {}) | set(off_project or {})
    return ProjectFacts(
        project_id=PROJECT,
        owner=LinkedCustomer(OWNER, owner_level),
        events=tuple(events),
        linked={
            cid: LinkedCustomer(cid, (levels or {}).get(cid, 0), tuple((off_project or {}).get(cid, ())))
            for cid in sorted(linked_ids)
        },
    )


def level_of(facts: CustomerFacts, rulebook: Rulebook | None = None, as_of: datetime = AS_OF) -> LevelGrade:
    return evaluate_level(rulebook or default_rulebook(), facts, as_of)


def heat_of(facts: ProjectFacts, rulebook: Rulebook | None = None, as_of: datetime = AS_OF) -> HeatGrade:
    return evaluate_heat(rulebook or default_rulebook(), facts, as_of)


def criterion(grade: LevelGrade | HeatGrade, criterion_id: str) -> CriterionResult:
    (found,) = [c for c in grade.criteria if c.id == criterion_id]
    return found


def met_ids(grade: LevelGrade | HeatGrade) -> set[str]:
    return {c.id for c in grade.criteria if c.met}


def owner_events(up_to_level: int) -> tuple[Event, ...]:
    """The owner's own events that meet every criterion of levels 1..`up_to_level` (the
    project-side criteria of levels III and IV come from `owner_projects`)."""
    by_level = {
        1: (
            event(1, "materials_sent", customer=OWNER, items=["samples", "credentials"]),
            event(2, "company_introduced", customer=OWNER),
            event(3, "contact_obtained", customer=OWNER),
            event(4, "visit", days=30, customer=OWNER, reception="welcoming", with_manager=False),
            event(5, "visit", days=20, customer=OWNER, reception="neutral", with_manager=False),
            event(6, "visit", days=10, customer=OWNER, reception="neutral", with_manager=False),
            event(7, "impression_confirmed", customer=OWNER),
        ),
        2: (
            event(21, "product_understood", customer=OWNER),
            event(22, "private_meeting", customer=OWNER),
            event(23, "info_shared", customer=OWNER, kind="important"),
            event(24, "easy_access", customer=OWNER, includes_manager=False, critical_period=False),
        ),
        3: (
            event(31, "deep_relationship", customer=OWNER),
            event(32, "info_shared", customer=OWNER, kind="competitors"),
            event(33, "easy_access", customer=OWNER, includes_manager=True, critical_period=True),
        ),
        4: (
            event(41, "exclusive", customer=OWNER),
            event(42, "opens_doors", customer=OWNER),
            event(43, "advocates", customer=OWNER),
        ),
    }
    return tuple(e for level in range(1, up_to_level + 1) for e in by_level[level])


def owner_projects(up_to_level: int) -> dict[int, tuple[Event, ...]]:
    """The owner's project events that meet the project-side criteria up to that level."""
    if up_to_level < 3:
        return {}
    brand = "sole" if up_to_level >= 4 else "listed"
    return {
        PROJECT: (
            event(301, "stage_changed", project=PROJECT, stage="bidding"),
            event(302, "tender_brand", project=PROJECT, status=brand),
        )
    }


def owner_at(level: int) -> CustomerFacts:
    return owner_facts(*owner_events(level), projects=owner_projects(level))


def installer_events(up_to_level: int, customer: int = INSTALLER) -> tuple[Event, ...]:
    """Events of one installer that meet every criterion of levels 1..`up_to_level`."""
    c = customer
    by_level = {
        1: (
            event(1, "materials_sent", customer=c, items=["price_list"]),
            event(2, "company_introduced", customer=c),
            event(3, "inquiry_received", customer=c),
            event(4, "visit", days=30, customer=c, reception="neutral", with_manager=False),
            event(5, "visit", days=20, customer=c, reception="welcoming", with_manager=False),
            event(6, "visit", days=10, customer=c, reception="neutral", with_manager=False),
            event(7, "impression_confirmed", customer=c),
        ),
        2: (
            event(21, "product_understood", customer=c),
            event(22, "rep_accepted", customer=c),
            event(23, "order_placed", customer=c, amount=12000),
            event(24, "info_shared", customer=c, kind="bid_projects"),
            event(25, "easy_access", customer=c, includes_manager=True, critical_period=False),
        ),
        3: (
            event(31, "deep_relationship", customer=c),
            event(32, "info_shared", customer=c, kind="core"),
            event(33, "prefers_us", customer=c),
            event(34, "bid_joined", customer=c, project=OTHER_PROJECT, with_our_product=True),
            event(35, "attended_promotion", customer=c, event_name="Spring roadshow"),
        ),
        4: (
            event(41, "exclusive", customer=c),
            event(42, "opens_doors", customer=c),
            event(43, "advocates", customer=c),
            event(44, "accepts_worse_terms", customer=c),
            event(45, "bid_won", customer=c, project=OTHER_PROJECT),
            event(46, "switched_to_us", customer=c, project=OTHER_PROJECT),
        ),
    }
    return tuple(e for level in range(1, up_to_level + 1) for e in by_level[level])


def installer_at(level: int, customer: int = INSTALLER) -> CustomerFacts:
    return installer_facts(*installer_events(level, customer), customer=customer)
