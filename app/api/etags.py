"""ETag / If-Match for optimistic concurrency on customers and projects."""

from __future__ import annotations

import re

from app.errors import FieldError, Invalid, PreconditionFailed

_TAG = re.compile(r'^(?:W/)?"(?P<kind>customer|project)-(?P<id>\d+)-v(?P<version>\d+)"$')


def etag(kind: str, id_: int, version: int) -> str:
    return f'"{kind}-{id_}-v{version}"'


def parse_if_match(header: str | None, kind: str, id_: int) -> int | None:
    """The version the caller read, or None when it sent no If-Match (or `*`)."""
    if header is None or header.strip() == "*":
        return None
    match = _TAG.match(header.strip())
    if match is None:
        raise Invalid("If-Match must be an ETag this service returned", errors=[FieldError("If-Match", "not an ETag of this service", "header")])
    if match["kind"] != kind or int(match["id"]) != id_:
        raise PreconditionFailed("If-Match names another resource")
    return int(match["version"])
