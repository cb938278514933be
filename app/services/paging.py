"""Cursor pagination by id: stable under inserts, opaque to callers."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Sequence, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from app.errors import FieldError, Invalid

T = TypeVar("T")


def encode_cursor(last_id: int, descending: bool = False) -> str:
    raw = json.dumps({"after": last_id, "desc": descending}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, bool]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data: Any = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, desc = data["after"], data.get("desc", False)
        if isinstance(after, bool) or not isinstance(after, int) or not isinstance(desc, bool):
            raise ValueError
        return after, desc
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Invalid("the cursor is not one this service issued", errors=[FieldError("cursor", "malformed cursor", "query")]) from None


def page(session: Session, query: Select, id_column: Any, *, limit: int, cursor: str | None, descending: bool = False) -> tuple[Sequence[Any], str | None]:
    """One page of `query` ordered by `id_column`, and the cursor of the next page (None at the end)."""
    if cursor is not None:
        after, cursor_desc = decode_cursor(cursor)
        if cursor_desc != descending:
            raise Invalid("the cursor was issued for the other sort order", errors=[FieldError("cursor", "order differs", "query")])
        query = query.where(id_column < after if descending else id_column > after)
    query = query.order_by(id_column.desc() if descending else id_column).limit(limit + 1)
    rows = session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1].id, descending) if more and rows else None)
