"""The shortcuts in `facts.py` pick what the full order picks: by `occurred_at`, then by
`_tie_break` (what the events say), on logs where equal instants are the rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.facts import Event, _tie_break, bidder_ids, bidder_set, latest, winner_id

from .builders import OWNER, at, criterion, event, level_of, owner_facts

# Few instants, customers and attribute values, so that bids tie on everything but one field.
BIDS = st.builds(
    Event,
    id=st.integers(1, 30),
    type=st.sampled_from(["bid_joined", "bid_won", "visit"]),
    occurred_at=st.sampled_from([1, 2, 2, 5]).map(at),
    customer_id=st.sampled_from([None, 11, 12, 13]),
    project_id=st.sampled_from([None, 100]),
    attributes=st.fixed_dictionaries({}, optional={"with_our_product": st.booleans(), "note": st.sampled_from(["a", "b"])}),
    retracted=st.sampled_from([False, False, False, True]),
)


def by_full_order(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.occurred_at, *_tie_break(e)))


@settings(max_examples=300, deadline=None)
@given(st.lists(BIDS, max_size=12))
def test_bidders_come_in_the_order_of_their_first_bid(events: list[Event]) -> None:
    bids = [e for e in events if e.type in ("bid_joined", "bid_won") and e.customer_id is not None and not e.retracted]
    first_seen = list(dict.fromkeys(e.customer_id for e in sorted(bids, key=lambda e: (e.occurred_at, e.type, e.customer_id))))
    assert bidder_ids(tuple(events)) == first_seen
    assert bidder_set(events) == set(first_seen)  # who they are, for callers that need no order


@settings(max_examples=300, deadline=None)
@given(st.lists(BIDS, max_size=12))
def test_latest_is_the_last_in_the_full_order(events: list[Event]) -> None:
    newest = latest(events)
    if not events:
        assert newest is None
    else:
        assert newest is not None and _tie_break(newest) == _tie_break(by_full_order(events)[-1])
        assert newest.occurred_at == by_full_order(events)[-1].occurred_at


@settings(max_examples=300, deadline=None)
@given(st.lists(BIDS, max_size=12))
def test_the_winner_is_the_customer_of_the_last_bid_won(events: list[Event]) -> None:
    won = [e for e in events if e.type == "bid_won" and e.customer_id is not None and not e.retracted]
    assert winner_id(tuple(events)) == (by_full_order(won)[-1].customer_id if won else None)


def test_at_one_instant_what_the_events_say_decides_before_the_project_they_name() -> None:
    """docs/rulebook.md: ties are broken by the events' attributes (the last in text order).
    The project an event names decided first, so a `neutral` visit on a project won over a
    `rejecting` one on none (a hunt's find)."""
    visits = [event(1, "visit", days=3, customer=OWNER, reception="neutral"), event(2, "visit", days=3, customer=OWNER, reception="neutral")]
    on_project = event(3, "visit", days=1, customer=OWNER, project=100, reception="neutral")
    on_none = event(4, "visit", days=1, customer=OWNER, reception="rejecting")
    for pair in ([on_project, on_none], [on_none, on_project]):
        assert latest(pair) is on_none
        grade = level_of(owner_facts(*visits, *pair))
        assert not criterion(grade, "O1.4").met  # the latest visit was rejecting
    welcoming = event(5, "visit", days=1, customer=OWNER, reception="welcoming")
    rejecting_on_project = event(6, "visit", days=1, customer=OWNER, project=100, reception="rejecting")
    assert latest([rejecting_on_project, welcoming]) is welcoming
    assert criterion(level_of(owner_facts(*visits, rejecting_on_project, welcoming)), "O1.4").met
