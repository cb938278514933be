"""ETag / If-Match for optimistic concurrency on customers, projects, forms and webhook
subscriptions: the tag names the resource and the version it was read at."""

from __future__ import annotations

import re

from app.errors import FieldError, Invalid, PreconditionFailed
from app.services.records import NoneMatch

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


# A list of entity-tags (RFC 9110 §8.8.3), each possibly weak.
_TAGS = re.compile(r'^\s*(?:W/)?"[^"]*"\s*(?:,\s*(?:W/)?"[^"]*"\s*)*$')
_ONE_TAG = re.compile(r'(?:W/)?"[^"]*"')


def parse_if_none_match(header: str | None, kind: str) -> NoneMatch | None:
    """If-None-Match on a `PUT` by code: `*` (create, never replace) or a list of ETags
    (replace unless the stored record is still one of these); weak tags compare as strong
    ones, as RFC 9110 §13.1.2 asks. A tag of another resource matches nothing."""
    if header is None:
        return None
    if header.strip() == "*":
        return NoneMatch(True, frozenset())
    if _TAGS.match(header) is None:
        raise Invalid("If-None-Match must be * or a list of ETags", errors=[FieldError("If-None-Match", "neither * nor a list of ETags", "header")])
    tags = (_TAG.match(t) for t in _ONE_TAG.findall(header))
    return NoneMatch(False, frozenset((t["id"], int(t["version"])) for t in tags if t is not None and t["kind"] == kind))
