"""The condition language of a rulebook: what a criterion asks of the logged facts.

A criterion's `when` is one of these nodes. They are plain frozen data; `evaluation.py`
gives them meaning. The JSON spelling of each node is documented on its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class HasEvent:
    """`{"event": T, "where"?: {attr: value}, "min_count"?: n, "within_days"?: d,
    "on_won_project"?: true}` — at least `min_count` events of type T whose attributes
    equal `where`. `on_won_project` keeps only events on a project this customer won."""

    event_type: str
    where: tuple[tuple[str, Any], ...] = ()
    min_count: int = 1
    within_days: int | None = None
    on_won_project: bool = False
    # The catalogue's default of each `where` attribute that has one: an event stored
    # without the attribute (logged before a rulebook added it) is read as having it.
    defaults: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Latest:
    """`{"latest": T, "attribute": A, "in"|"not_in": [...], "within_days"?: d}` — the newest
    event of type T (by `occurred_at`) has attribute A in (or not in) the set. No such
    event: not met."""

    event_type: str
    attribute: str
    values: frozenset[Any]
    negate: bool = False
    within_days: int | None = None
    default: Any = None  # the catalogue's default of the attribute, as in `HasEvent.defaults`


@dataclass(frozen=True)
class StageReached:
    """`{"stage_reached": S}` — some stage change put the project at S or a later stage of
    the ordered stages (won and lost are outside that order)."""

    stage: str


@dataclass(frozen=True)
class AllOf:
    """`{"all_of": [...]}`"""

    parts: tuple["Condition", ...]


@dataclass(frozen=True)
class AnyOf:
    """`{"any_of": [...]}`"""

    parts: tuple["Condition", ...]


@dataclass(frozen=True)
class OwnedProject:
    """`{"owned_project": <project condition>}` — for an owner: one of its projects
    satisfies the condition."""

    condition: "Condition"


@dataclass(frozen=True)
class LinkedCustomer:
    """`{"bidder"|"winner"|"owner": {"min_level"?: n, "has"?: <customer condition>}}` — for a
    project: some bidder (or the winner, or the owner) is at level ≥ n and its own events
    on this project (or on no project) satisfy `has`."""

    role: str  # "bidder" | "winner" | "owner"
    min_level: int = 0
    has: "Condition | None" = None


Condition = Union[HasEvent, Latest, StageReached, AllOf, AnyOf, OwnedProject, LinkedCustomer]

ROLES = ("bidder", "winner", "owner")


def walk(condition: Condition):
    """Every node of a condition tree, the root first."""
    yield condition
    if isinstance(condition, (AllOf, AnyOf)):
        for part in condition.parts:
            yield from walk(part)
    elif isinstance(condition, OwnedProject):
        yield from walk(condition.condition)
    elif isinstance(condition, LinkedCustomer) and condition.has is not None:
        yield from walk(condition.has)
