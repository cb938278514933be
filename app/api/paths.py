"""A path or query string that is not UTF-8 text is refused before routing.

The server decodes a path's percent-escapes as UTF-8 and puts U+FFFD in place of every
byte that is not, without a word. An ERP code sent in another encoding (GBK's `%D6%D0` for
中, from a client on a Chinese Windows) then named the same record as every other code that
differed only in such bytes: `PUT /v1/customers/by-ref/GBK-%D6%D0` and
`PUT /v1/customers/by-ref/GBK-%B9%FA` wrote one customer, the second over the first. A
query string is decoded the same way: `?q=%D6%D0` searched for U+FFFD and found nothing,
or `?rep=` named another rep than the one meant. A form hook's query string is the form
tool's, and is left to the hook (a delivery refused here would be lost).

A code path (`…/by-ref/{code}`) that ends in a plain `/` is refused here too (404): the
code takes the rest of the path, so the slash would have become part of another code.

A body sent with a Content-Encoding (gzip, br) is refused here too (415): the service reads
no compressed body, and a plain one labelled compressed was stored as if it were not
(RFC 9110 §8.4 asks for a 415). A form hook's body is kept in its inbox whatever it is."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.limits import HOOKS_PREFIX
from app.api.problems import app_error_response
from app.errors import AppError, FieldError, Invalid, NotFound, UnsupportedMediaType, failed_fields

_ENCODE = "percent-encode each byte of its UTF-8 form"
_BY_REF = b"/by-ref/"


def _undecodable(raw: bytes) -> UnicodeDecodeError | None:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    return None


def not_utf8(raw_path: bytes) -> str | None:
    """Why the percent-decoded path is not UTF-8 text, or None when it is."""
    if b"%" not in raw_path:
        return None  # what is not escaped is ASCII: the server took it from the request line
    exc = _undecodable(raw_path)
    if exc is None:
        return None
    return f"is not UTF-8 text ({exc.reason} at byte {exc.start} of the decoded path): percent-encode each byte of a code's UTF-8 form"


def query_not_utf8(query_string: bytes) -> list[FieldError]:
    """A field error for each query parameter whose name or value, percent-decoded (and `+`
    read as a space), is not UTF-8 text."""
    if b"%" not in query_string and query_string.isascii():
        return []
    errors = []
    for pair in query_string.split(b"&"):
        name, _, value = pair.replace(b"+", b" ").partition(b"=")
        bad_name, bad_value = _undecodable(name), _undecodable(value)
        if bad_name is not None:
            errors.append(FieldError("query", f"a parameter's name is not UTF-8 text ({bad_name.reason}): {_ENCODE}", "query"))
        elif bad_value is not None:
            field = unquote_to_bytes(name).decode("utf-8")
            errors.append(FieldError(field, f"is not UTF-8 text ({bad_value.reason} at byte {bad_value.start} of the decoded value): {_ENCODE}", "query"))
    return errors


class Utf8Path:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await app_error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(scope: Scope) -> AppError | None:
    """Why this request's path, query string or body's encoding is refused before routing, or None."""
    if "\n" in scope["path"]:
        # A route's pattern ends in `$`, which also matches before a last line feed:
        # `/v1/customers/by-ref/C-1%0A` named C-1, and a PUT to it replaced C-1 (a hunt's
        # find). A line feed is in no code and no id: no resource has such a path.
        return NotFound("no resource has a path with a line feed (%0A) in it")
    raw = scope.get("raw_path") or scope["path"].encode()
    raw_path = raw.split(b"?", 1)[0]  # some clients' raw_path carries the query
    if raw_path.endswith(b"/") and _BY_REF in raw_path and raw_path.split(_BY_REF, 1)[1]:
        # Paths end without a slash, but a code takes the rest of the path, slashes and all:
        # `PUT …/by-ref/C-1/` (a client's URL template adding a slash) created a second
        # customer, `C-1/`, beside C-1 (a hunt's find). A code that ends in `/` is sent with
        # it percent-encoded, as openapi.md asks of every `/` in a code. `…/by-ref//` too,
        # which took `/` for the code (a review's find); `…/by-ref/` alone names no code (422).
        bare = scope["path"].rstrip("/")
        return NotFound(f"no such path: {scope['path']} (paths end without a slash: {bare}; a code that ends in / is sent with it as %2F)")
    reason = not_utf8(raw_path)
    errors = [FieldError("path", reason, "path")] if reason is not None else []
    hook = scope["path"].startswith(HOOKS_PREFIX)
    query = scope.get("query_string", b"")
    if not errors and query and not hook:
        errors = query_not_utf8(query)
    if errors:
        return Invalid(failed_fields(len(errors)), errors=errors)
    coding = _compressed(scope["headers"])
    if coding is not None and not hook:
        return UnsupportedMediaType(f"the body is sent with Content-Encoding: {coding}, and this service reads bodies only uncompressed: send it without a Content-Encoding")
    return None


def _compressed(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Content-Encoding of a request that has a body, where it names a coding other than
    `identity` (every such header, every coding in each: `identity` then `gzip` was a body
    read as plain, a review's find); None for a request without a body."""
    codings: list[bytes] = []
    body = False
    for name, value in headers:
        if name == b"content-encoding":
            codings += (c.strip().lower() for c in value.split(b","))
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            body = True
    named = [c for c in codings if c not in (b"", b"identity")]
    return b", ".join(named).decode("latin-1")[:40] if body and named else None
