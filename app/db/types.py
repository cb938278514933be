"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")
# The largest id both databases hold (signed 64 bits): a larger number names nothing, and
# reaching the driver it overflows (a 500 for bad input).
MAX_ID = 2**63 - 1
Json = JSON().with_variant(JSONB(), "postgresql")

# An integer of 19 digits or more may lie beyond 64 bits. Looked for as a run of 19 zero
# bytes in the text with every ASCII digit turned into a zero byte and every other byte into
# a one: a table look-up per byte and one substring search, both in C. The regular
# expression `\d{19}` did the same at 8 ns a byte, slower than json.loads reading the text
# (a 500-event batch of 87 KB: 0.76 ms, against 0.39 for json.loads and 0.05 for this).
_DIGITS_TO_ZERO = bytes(0 if 0x30 <= b <= 0x39 else 1 for b in range(256))
_LONG_RUN = bytes(19)


def _has_long_number(text: str | bytes) -> bool:
    # UTF-8 writes every character beyond ASCII with bytes of 0x80 and above, so encoding
    # neither makes nor breaks a run of ASCII digits ("surrogatepass": json reads lone
    # surrogates, and so must this).
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _LONG_RUN in raw.translate(_DIGITS_TO_ZERO)


def loads_json(text: str | bytes) -> Any:
    """What `json.loads(text)` gives, for the JSON columns (the engines' json_deserializer).

    orjson answers where it gives the same: it decodes the logs and grades every write
    reads back several times faster than json, which was a fifth of a batch import's time.
    Where it would differ, json answers: orjson reads an integer beyond 64 bits as a float
    and refuses NaN, Infinity and lone surrogates, which json reads (and json.dumps writes)."""
    if not _has_long_number(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def encode_grade(grade: dict[str, Any]) -> bytes:
    """A stored grade as JSON, keys sorted: one grade, one encoding, whatever the order its
    dicts were built or decoded in (PostgreSQL's jsonb keeps keys in an order of its own)."""
    return orjson.dumps(grade, option=orjson.OPT_SORT_KEYS)


def grade_digest(head: tuple[Any, ...], encoded: bytes) -> int:
    """A signed 64-bit digest of a subject's grade: its `head` (a customer's level; a
    project's heat, stage and closed) and its `encode_grade` JSON. Stored beside the grade
    (`grade_hash`), so a write knows whether a new grade differs without reading or
    comparing the stored one. Changing this function needs a migration that recomputes
    every stored digest (as 2026_12_05 grade_hash computes the first ones)."""
    # The head's text is kept by the head and the types of its values (True and 1 are equal
    # keys, and json writes them apart): a grading pass writes a few heads over and over, and
    # json.dumps of one cost more than the hash (1.8 % of a batch import's CPU).
    key = (head, *map(type, head))
    prefix = _HEAD_TEXT.get(key)
    if prefix is None:
        prefix = json.dumps(list(head)).encode() + b"\n"
        if len(_HEAD_TEXT) < _HEAD_TEXT_MAX:
            _HEAD_TEXT[key] = prefix
    return int.from_bytes(hashlib.blake2b(prefix + encoded, digest_size=8).digest(), "big", signed=True)


# The heads' texts (a rulebook's levels; its tiers by stages by closed): a few dozen.
_HEAD_TEXT: dict[tuple[Any, ...], bytes] = {}
_HEAD_TEXT_MAX = 4096


def _in_utc(value: datetime) -> datetime:
    """An aware instant in UTC; a naive one is refused (its offset is unknown)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(timezone.utc)


def sqlite_instant(value: datetime | None) -> str | None:
    """What `UTCDateTime` binds on SQLite (its `process_bind_param`, then SQLite's DATETIME
    text) in one step: half the CPU of the two (app/db/engine.py binds with it)."""
    global _LAST_INSTANT
    if value is None:
        return None
    last = _LAST_INSTANT
    if value is last[0]:
        return last[1]
    v = _in_utc(value)
    text = "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
    _LAST_INSTANT = (value, text)
    return text


# The last instant `sqlite_instant` bound, and its text: a write binds the same one over and
# over (its `now` as every stored event's recorded_at and every changed grade's date), and
# a datetime never changes. Held by identity (a write binds the one object; comparing
# instants costs more), and referenced, so its id is not reused. One tuple, replaced whole:
# threads see the old pair or the new one.
_LAST_INSTANT: tuple[datetime | None, str | None] = (None, None)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores instants in UTC and always gives back timezone-aware datetimes.

    SQLite keeps no offset, so without this a round trip would return naive times."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        value = _in_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
