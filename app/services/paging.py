"""What the list endpoints share: cursor pagination by id (stable under inserts, opaque to
callers) and the text filter `q`."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Sequence, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, literal, literal_column, or_, select, tuple_
from sqlalchemy.orm import Session

from app.db.types import MAX_ID
from app.errors import FieldError, Invalid

T = TypeVar("T")


def encode_cursor(last_id: int, of: str, descending: bool = False, tx: int | None = None) -> str:
    """The cursor after `last_id` in the list of `of` (its table)."""
    data: dict[str, Any] = {"after": last_id, "desc": descending, "of": of}
    if tx is not None:
        data["tx"] = tx
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, of: str) -> tuple[int, bool, int | None]:
    """(after this id, descending, after this transaction: None where the cursor names none),
    of a cursor of the list of `of`. A cursor names its list: one of customers was read as
    a position among events (and on PostgreSQL showed the event with the customer's id
    again), one of events among customers (a hunt's find). Those issued before cursors
    named their list (no `of`) are still read."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data: Any = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, desc, tx = data["after"], data.get("desc", False), data.get("tx")
        if data.get("of", of) != of:
            raise Invalid("the cursor was issued for another list", errors=[FieldError("cursor", f"a cursor of {data['of']!r}, not of {of!r}"[:200], "query")])
        # Ids are positive signed 64-bit integers: a larger `after` was not issued here, and
        # would overflow in the driver (a 500) rather than find nothing.
        if not (_stored_int(after) and (tx is None or _stored_int(tx))) or not isinstance(desc, bool):
            raise ValueError
        return after, desc, tx
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Invalid("the cursor is not one this service issued", errors=[FieldError("cursor", "malformed cursor", "query")]) from None


def _stored_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


# The oldest transaction of this database still running on PostgreSQL (in the statement's
# snapshot): every one older has ended, and none that starts from now on can be older. The
# snapshot's own xmin would do, but transaction ids are the whole server's: a transaction
# left open in another database (another application's, an idle session's) held the feed
# back for as long as it lasted (a hunt's find). A running id is passed over only where it
# is seen held by a session of another database (its lock on its own id, pg_locks, and the
# session's database, pg_stat_activity: both readable by every role); one that ended since
# the snapshot, or a prepared transaction, still counts, which errs on the side of waiting.
# pg_locks names a 32-bit xid: compared with the low 32 bits of the snapshot's 64-bit ids,
# which are all within 2^31 of each other. About 0.2 ms a page.
_HORIZON = literal_column(
    """(SELECT coalesce(min(running.xid::text::bigint), pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
 FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid)
 WHERE NOT EXISTS (
   SELECT 1 FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
   WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
     AND l.transactionid::text::bigint = running.xid::text::bigint % 4294967296
     AND a.datname IS DISTINCT FROM current_database()))"""
)


def _before_first_after(tx_column: Any, id_column: Any, after: int) -> Any:
    """The position just before the first transaction that holds a row with an id above
    `after` (past every row, if there is none yet): no row with a larger id is behind it.
    An older transaction can commit a larger id after a newer one's smaller ids, so the
    position of row `after` itself left such rows behind it for good (a review's find). One
    range read of the primary key, from `after` on."""
    rows = id_column.table.alias("positioned")
    first = select(func.min(rows.c[tx_column.key])).where(rows.c[id_column.key] > after).scalar_subquery()
    return tuple_(func.coalesce(first, MAX_ID), literal(0))


def page(
    session: Session, query: Select, id_column: Any, *, limit: int, cursor: str | None, descending: bool = False, tx_column: Any = None
) -> tuple[Sequence[Any], str | None]:
    """One page of `query` ordered by `id_column`, and the cursor of the next page (None at
    the end).

    With `tx_column` (the events), oldest first is by (transaction, id) instead, and on
    PostgreSQL it reads only the rows of transactions older than every one still running.
    There an id is taken when a row is inserted and seen when its transaction commits, so a
    reader that paged past id N by id could never see an id below N that committed later (a
    long batch's). What it has read now can no longer be joined by anything before it: a row
    shows once every transaction older than its own has ended (usually at once; after a
    long batch or `rapport regrade`, when that ends). Newest first stays by id, as fresh as
    the database: it pages back from the present."""
    in_commit_order = tx_column is not None and not descending
    if cursor is not None:
        after, cursor_desc, after_tx = decode_cursor(cursor, id_column.table.name)
        if cursor_desc != descending:
            raise Invalid("the cursor was issued for the other sort order", errors=[FieldError("cursor", "order differs", "query")])
        if in_commit_order:
            # On PostgreSQL a cursor without a transaction (made by hand) starts where no
            # event with a larger id is behind it, repeating any smaller one committed
            # since: "after (0, id)" was every event again (a hunt's find). On SQLite every
            # event's transaction is 0, and its ids come in commit order.
            if after_tx is None and session.get_bind().dialect.name == "postgresql":
                position = _before_first_after(tx_column, id_column, after)
            else:
                position = tuple_(literal(after_tx or 0), literal(after))
            query = query.where(tuple_(tx_column, id_column) > position)
        else:
            query = query.where(id_column < after if descending else id_column > after)
    if in_commit_order:
        if session.get_bind().dialect.name == "postgresql":
            query = query.where(tx_column < _HORIZON)
        query = query.order_by(tx_column, id_column)
    else:
        query = query.order_by(id_column.desc() if descending else id_column)
    rows = session.scalars(query.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if not (more and rows):
        return rows, None
    last = rows[-1]
    return rows, encode_cursor(last.id, id_column.table.name, descending, last.tx if in_commit_order else None)


# What `q` may hold that LIKE would read as a wildcard: escaped, so q is matched as text.
_LIKE_ESCAPE = "\\"
_LIKE_SPECIAL = str.maketrans({ch: _LIKE_ESCAPE + ch for ch in ("\\", "%", "_")})


def containing(session: Session, columns: Sequence[Any], text: str) -> ColumnElement[bool]:
    """Rows where one of `columns` holds `text`, ignoring case, with `%`, `_` and `\\` in
    `text` matched as themselves. Both sides are lower-cased by one function: PostgreSQL's
    lower(), which folds as the database's LC_CTYPE says (a UTF-8 one: Ä→ä, Ａ→ａ; `C`: ASCII
    only), and on SQLite `unicode_lower`, Python's `str.lower` (app/db/engine.py), since
    SQLite's own lower() folds only ASCII and `ÄBC` or full-width `ＡＢＣ` would never match."""
    pattern = f"%{text.translate(_LIKE_SPECIAL)}%"
    if session.get_bind().dialect.name != "sqlite":
        return _folded_like(func.lower, columns, pattern)
    if not _ascii_or_caseless(text):
        return _folded_like(func.unicode_lower, columns, pattern)
    # SQLite's LIKE ignores the case of ASCII letters. For such a text it finds what
    # unicode_lower on both sides finds, without a call into Python per row (a list with q
    # that scans 10,000 customers: 8.6 ms, and 16.4 ms through unicode_lower), except in a
    # value holding one of the two non-ASCII letters Python lower-cases into ASCII: İ
    # (U+0130, into "i" and U+0307) and the Kelvin sign (U+212A, into "k").
    found = [column.like(pattern, escape=_LIKE_ESCAPE) for column in columns]
    if {"i", "k"} & set(text.lower()):
        folded = func.unicode_lower(literal(pattern))
        found += [and_(func.instr(column, "\u0130") + func.instr(column, "\u212a") > 0, func.unicode_lower(column).like(folded, escape=_LIKE_ESCAPE)) for column in columns]
    return or_(*found)


def _folded_like(lower: Any, columns: Sequence[Any], pattern: str) -> ColumnElement[bool]:
    folded = lower(literal(pattern))
    return or_(*(lower(column).like(folded, escape=_LIKE_ESCAPE) for column in columns))


def _ascii_or_caseless(text: str) -> bool:
    """Whether every character of `text` is ASCII or has no case (digits, CJK), and none is
    U+0307, the dot above that Python adds when it lower-cases İ: then lower-casing a value
    can change only ASCII letters of an occurrence of `text` in it, or make one only of
    İ and K (see `containing`)."""
    return all(ch.isascii() or ch.lower() == ch == ch.upper() for ch in text) and "\u0307" not in text
