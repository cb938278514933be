"""The JSON columns' decoder gives what json.loads gives, for any value json.dumps writes:
the faster decoder must never change what was recorded."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from app.db.types import loads_json

# Every character, lone surrogates included; integers of any size; NaN and the infinities
# (json.dumps writes them).
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None, categories=None))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@given(values, st.booleans())
def test_it_reads_what_json_reads(value: object, ensure_ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    # repr tells 1 from 1.0 and True from 1, and shows NaN as nan on both sides.
    assert repr(loads_json(text)) == repr(json.loads(text))


@given(values)
def test_it_reads_bytes_as_psycopg_hands_them_over(value: object) -> None:
    text = json.dumps(value)  # ASCII: a lone surrogate is escaped
    assert repr(loads_json(text.encode())) == repr(json.loads(text))
