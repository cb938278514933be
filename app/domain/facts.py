"""What evaluation reads: logged events and the subjects they are linked to.

Frozen inputs built by the caller (from the database or from a test); evaluation never
fetches anything itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterator, Mapping


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    occurred_at: datetime
    customer_id: int | None = None
    project_id: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    retracted: bool = False


@dataclass(frozen=True)
class OwnedProject:
    """One project of an owner, with the project's events an owner criterion may read."""

    project_id: int
    events: tuple[Event, ...]


@dataclass(frozen=True)
class CustomerFacts:
    customer_id: int
    kind: str  # "owner" | "installer"
    events: tuple[Event, ...]  # the customer's own events (customer_id == this customer)
    owned_projects: tuple[OwnedProject, ...] = ()


@dataclass(frozen=True)
class LinkedCustomer:
    """A customer linked to a project (its owner, a bidder, the winner): its current
    level and its own events that are on no project (those on the project are among the
    project's events)."""

    customer_id: int
    level: int
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class ProjectFacts:
    project_id: int
    owner: LinkedCustomer
    events: tuple[Event, ...]  # every event with project_id == this project
    # Bidders and winner by id (and customers whose bids were retracted: evaluation reads
    # only the bidders of live bids).
    linked: Mapping[int, LinkedCustomer] = field(default_factory=dict)


def before(events: tuple[Event, ...], changed: Mapping[int, Event]) -> tuple[Event, ...]:
    """`events` as they stood before a write that stored or retracted `changed` (by id, as
    they stand after it): the events it stored gone, those it retracted live again."""
    if not changed:
        return events
    return tuple(
        e if e.id not in changed else replace(e, retracted=False)
        for e in events
        if e.id not in changed or changed[e.id].retracted
    )


def customer_before(facts: CustomerFacts, changed: Mapping[int, Event]) -> CustomerFacts:
    """A customer's facts as they stood before the write that changed `changed` (`before`)."""
    owned = tuple(replace(p, events=before(p.events, changed)) for p in facts.owned_projects)
    return replace(facts, events=before(facts.events, changed), owned_projects=owned)


def project_before(facts: ProjectFacts, changed: Mapping[int, Event], levels: Mapping[int, int]) -> ProjectFacts:
    """A project's facts as they stood before the write that changed `changed` (`before`),
    its linked customers at `levels` where given (what the write's customers were worth
    without it)."""

    def link(c: LinkedCustomer) -> LinkedCustomer:
        return replace(c, level=levels.get(c.customer_id, c.level), events=before(c.events, changed))

    return replace(facts, owner=link(facts.owner), events=before(facts.events, changed), linked={cid: link(c) for cid, c in facts.linked.items()})


# The event types that make a customer a project's bidder.
BID_TYPES = ("bid_joined", "bid_won")


def bidder_ids(events: tuple[Event, ...] | list[Event]) -> list[int]:
    """Installers that joined the bid or won it, in order of their first such event."""
    # "First" is by `occurred_at`, then type (`bid_joined` before `bid_won`), then customer
    # id: who bid first is a question of when, and a bid's attributes (which `_tie_break`
    # JSON-encodes, and ranks before the customer) never order the bidders.
    first: dict[int, tuple[datetime, str]] = {}
    for e in _bids(events):
        key = (e.occurred_at, e.type)
        if e.customer_id not in first or key < first[e.customer_id]:
            first[e.customer_id] = key
    return sorted(first, key=lambda customer_id: (*first[customer_id], customer_id))


def bidder_set(events: tuple[Event, ...] | list[Event]) -> set[int]:
    """The customers `bidder_ids` names, unordered: for a caller that needs only who they are
    (it need not find each one's first bid, nor sort them)."""
    return {e.customer_id for e in _bids(events)}  # type: ignore[misc]


def bid_customers(events: tuple[Event, ...] | list[Event]) -> set[int]:
    """The customers of every bid, live or retracted: `bidder_set`, and the bidders a project
    had before a retraction."""
    return {e.customer_id for e in events if e.type in BID_TYPES and e.customer_id is not None}


def _bids(events: tuple[Event, ...] | list[Event]) -> Iterator[Event]:
    """The events that make their customer a bidder."""
    return (e for e in events if e.type in BID_TYPES and e.customer_id is not None and not e.retracted)


def winner_id(events: tuple[Event, ...] | list[Event]) -> int | None:
    """The customer of the latest non-retracted `bid_won`, if any."""
    won = [e for e in live(events) if e.type == "bid_won" and e.customer_id is not None]
    newest = latest(won)
    return newest.customer_id if newest else None


def live(events: tuple[Event, ...] | list[Event]) -> list[Event]:
    """The events that count: retracted ones count for nothing."""
    return [e for e in events if not e.retracted]


def _tie_break(e: Event) -> tuple[str, str, int, int, int]:
    # Between events at the same instant: what they say, never the id first. Ids follow
    # arrival, and the same events delivered in any order must grade the same (a phone
    # and the ERP often log to the second, or the day). Their attributes decide, as
    # docs/rulebook.md says; before, the project an event names decided first, so a
    # `neutral` visit on a project won over a `rejecting` one on none (a hunt's find). The
    # id decides only between events that say exactly the same, and then either one gives
    # the same grade.
    attributes = json.dumps(e.attributes, sort_keys=True, ensure_ascii=False, default=str)
    return (e.type, attributes, e.customer_id or 0, e.project_id or 0, e.id)


def latest(events: list[Event], stage_ranks: Mapping[str, int] | None = None) -> Event | None:
    """The newest event by `occurred_at`; equal instants are broken by content (`_tie_break`).
    Given the rulebook's `stage_ranks`, stage changes at one instant are first broken by how
    far along each puts the project (`Rulebook.stage_ranks`): an ERP that logs to the day
    sends `bidding` and `awarded` with one date, and the project had gone back to `bidding`
    (the later text) though it moved on to `awarded`."""
    if not events:
        return None
    newest = max(e.occurred_at for e in events)
    tied = [e for e in events if e.occurred_at == newest]
    if len(tied) == 1:
        return tied[0]
    if stage_ranks is None:
        return max(tied, key=_tie_break)
    return max(tied, key=lambda e: (stage_ranks.get(e.attributes.get("stage"), -1), _tie_break(e)))
