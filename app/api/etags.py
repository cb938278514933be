"""ETag / If-Match for optimistic concurrency on customers, projects, forms and webhook
subscriptions: the tag names the resource and the version it was read at."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header

from app.errors import FieldError, Invalid
from app.services.records import NoneMatch, Versions

# An id is a number, or a form's slug (lower-case letters, digits, '-' and '_'). A version is
# a 64-bit count, at most 19 digits: one of 4,301 was more than int() converts, a 500 (a hunt's find).
_TAG = re.compile(r'^(?:W/)?"(?P<kind>customer|project|form|subscription)-(?P<id>[a-z0-9][a-z0-9_-]*)-v(?P<version>0|[1-9][0-9]{0,18})"$')
# A list of entity-tags (RFC 9110 §8.8.3), each possibly weak.
_TAGS = re.compile(r'^[ \t]*(?:W/)?"[^"]*"[ \t]*(?:,[ \t]*(?:W/)?"[^"]*"[ \t]*)*$')
_ONE_TAG = re.compile(r'(?:W/)?"[^"]*"')

# An optional If-Match or If-None-Match as a route declares it: every line of it. A list
# header may come as several lines, which mean one list (RFC 9110 §5.3); declared as one
# string, a route saw only the first (a review's find: a second If-None-Match line was
# dropped, and the PUT it should have stopped replaced the record).
Precondition = list[str] | None
IfMatch = Annotated[Precondition, Header(description="optional: the ETag you read; 412 if it changed since")]
IfNoneMatch = Annotated[
    Precondition, Header(description="optional: `*` to create only (412 if the code exists), or ETags not to write over (412 if the record is still at one)")
]


def _joined(lines: Precondition) -> str | None:
    return None if lines is None else ", ".join(lines)


def etag(kind: str, id_: int | str, version: int) -> str:
    return f'"{kind}-{id_}-v{version}"'


def _listed(header: str) -> list[re.Match[str] | None] | None:
    """Each tag of a list of ETags (one, or several with commas), matched as one this
    service gives (None where it is not); None if `header` is no list of ETags."""
    if _TAGS.match(header) is None:
        return None
    return [_TAG.match(t) for t in _ONE_TAG.findall(header)]


def parse_if_match(lines: Precondition, kind: str, id_: int | str) -> Versions | None:
    """The versions of this resource the caller read (one ETag, or a list of them: RFC 9110
    §13.1.1), or None when it sent no If-Match (or `*`). Each tag must be one this service
    gives (a version is compared as the text it was sent as: `v04` is no tag of ours). Tags
    of other resources name no version of this one: none at all is a 412 once the resource
    is found (`check_version`), not before (a missing one is a 404, a deleted subscription's
    DELETE is done already)."""
    header = _joined(lines)
    if header is None or header.strip() == "*":
        return None
    tags = _listed(header)
    if tags is None or None in tags:
        raise Invalid("If-Match must be an ETag this service returned", errors=[FieldError("If-Match", "not an ETag of this service", "header")])
    return frozenset(int(t["version"]) for t in tags if t is not None and t["kind"] == kind and t["id"] == str(id_))


def parse_if_none_match(lines: Precondition, kind: str) -> NoneMatch | None:
    """If-None-Match on a `PUT` by code: `*` (create, never replace) or a list of ETags
    (replace unless the stored record is still one of these); weak tags compare as strong
    ones, as RFC 9110 §13.1.2 asks. A tag of another resource matches nothing."""
    header = _joined(lines)
    if header is None:
        return None
    if header.strip() == "*":
        return NoneMatch(True, frozenset())
    tags = _listed(header)
    if tags is None:
        raise Invalid("If-None-Match must be * or a list of ETags", errors=[FieldError("If-None-Match", "neither * nor a list of ETags", "header")])
    return NoneMatch(False, frozenset((t["id"], int(t["version"])) for t in tags if t is not None and t["kind"] == kind))
