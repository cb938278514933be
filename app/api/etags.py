"""ETag / If-Match for optimistic concurrency on customers, projects, forms and webhook
subscriptions: the tag names the resource and the version it was read at."""

from __future__ import annotations

import re

from app.errors import FieldError, Invalid, PreconditionFailed

# An id is a number, or a form's slug (lower-case letters, digits, '-' and '_').
_TAG = re.compile(r'^(?:W/)?"(?P<kind>customer|project|form|subscription)-(?P<id>[a-z0-9][a-z0-9_-]*)-v(?P<version>\d+)"$')


def etag(kind: str, id_: int | str, version: int) -> str:
    return f'"{kind}-{id_}-v{version}"'


def parse_if_match(header: str | None, kind: str, id_: int | str) -> int | None:
    """The version the caller read, or None when it sent no If-Match (or `*`)."""
    if header is None or header.strip() == "*":
        return None
    match = _TAG.match(header.strip())
    if match is None:
        raise Invalid("If-Match must be an ETag this service returned", errors=[FieldError("If-Match", "not an ETag of this service", "header")])
    if match["kind"] != kind or match["id"] != str(id_):
        raise PreconditionFailed("If-Match names another resource")
    return int(match["version"])
