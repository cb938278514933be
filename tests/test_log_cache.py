"""The logs a process keeps (app/db/log_cache.py), without a database: a log is given back
only with the stamp it was kept with, and the least recently used go first when the
process holds more events than it may."""

from __future__ import annotations

import random
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from app.db.log_cache import LogCache
from app.db.logs import WriteLogs
from app.domain.facts import Event

AT = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def log(n: int, first: int = 1) -> tuple[Event, ...]:
    return tuple(Event(id=i, type="visit", occurred_at=AT, customer_id=1) for i in range(first, first + n))


def test_a_log_is_given_back_only_with_the_stamp_it_was_kept_with() -> None:
    cache = LogCache(100)
    cache.put([(("customer", 1), 7, log(3))])
    assert cache.get(("customer", 1), 7) == log(3)
    assert cache.get(("customer", 1), 8) is None  # the row was stamped anew since
    assert cache.get(("project", 1), 7) is None  # a project is not the customer of the same id


def test_keeping_a_log_again_replaces_the_old_one() -> None:
    cache = LogCache(100)
    cache.put([(("customer", 1), 7, log(3))])
    cache.put([(("customer", 1), 9, log(4))])
    assert cache.get(("customer", 1), 7) is None
    assert cache.get(("customer", 1), 9) == log(4)


def test_the_least_recently_used_logs_go_first() -> None:
    cache = LogCache(12)  # each log counts its events and one more
    cache.put([(("customer", i), 1, log(3)) for i in (1, 2, 3)])
    assert cache.get(("customer", 1), 1) is not None  # 1 used: 2 is now the oldest
    cache.put([(("customer", 4), 1, log(3))])
    assert cache.get(("customer", 2), 1) is None
    assert [cache.get(("customer", i), 1) is not None for i in (1, 3, 4)] == [True, True, True]


def test_a_log_larger_than_the_bound_is_not_kept() -> None:
    cache = LogCache(5)
    cache.put([(("customer", 1), 1, log(2))])
    cache.put([(("customer", 1), 2, log(5))])
    assert len(cache) == 0


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 30)), max_size=60), st.integers(1, 60))
def test_the_events_kept_never_exceed_the_bound(puts: list[tuple[int, int]], bound: int) -> None:
    cache = LogCache(bound)
    for subject, n in puts:
        cache.put([(("customer", subject), n, log(n))])
        assert sum(len(kept) + 1 for _, kept in cache._logs.values()) <= bound


def test_a_cache_of_no_events_keeps_nothing() -> None:
    cache = LogCache(0)
    cache.put([(("customer", 1), 1, ())])
    assert len(cache) == 0


def test_stamps_do_not_repeat_when_the_process_reseeds_random() -> None:
    """A write's new stamp must differ from every earlier one even if whoever runs the
    process seeds `random` (Hypothesis does, per example): a repeated stamp would let a
    process take a stale kept log for the current one."""

    class NoSession:
        info: dict = {}

    stamps = set()
    for _ in range(3):
        random.seed(7)
        logs = WriteLogs(NoSession(), [Event(id=1, type="visit", occurred_at=AT, customer_id=1)], keep=False)  # type: ignore[arg-type]
        stamps.add(logs.stamp(("customer", 1), 0))
    assert len(stamps) == 3 and 0 not in stamps
