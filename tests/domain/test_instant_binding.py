"""An instant bound for SQLite in one step (`sqlite_instant`, the cursor's path) is the text
SQLAlchemy's own binding of a `UTCDateTime` writes: rows written either way sort and compare
alike, and read back the same."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from app.db.types import UTCDateTime, sqlite_instant

DIALECT = sqlite.dialect()
SQLALCHEMY = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS))
def test_it_writes_what_sqlalchemy_writes(value: datetime) -> None:
    assert sqlite_instant(value) == SQLALCHEMY(value)


@pytest.mark.parametrize("value", [datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2026, 12, 5, 8, 0, 0, 1, tzinfo=timezone(timedelta(hours=8)))])
def test_whole_seconds_and_other_offsets_keep_sqlalchemy_s_form(value: datetime) -> None:
    assert sqlite_instant(value) == SQLALCHEMY(value)


def test_nothing_binds_as_null_and_a_naive_time_is_refused_as_sqlalchemy_refuses_it() -> None:
    assert sqlite_instant(None) is None is SQLALCHEMY(None)
    for bind in (sqlite_instant, SQLALCHEMY):
        with pytest.raises(ValueError, match="naive"):
            bind(datetime(2026, 12, 5))


@given(st.lists(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=OFFSETS), min_size=1, max_size=4), st.lists(st.integers(0, 3), max_size=12))
def test_an_instant_bound_again_or_after_another_keeps_its_own_text(values: list[datetime], picks: list[int]) -> None:
    # The last instant's text is kept (the same object is bound over and over in a write).
    for i in picks:
        value = values[i % len(values)]
        assert sqlite_instant(value) == SQLALCHEMY(value)
