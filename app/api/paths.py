"""A path that is not UTF-8 text is refused before routing.

The server decodes a path's percent-escapes as UTF-8 and puts U+FFFD in place of every
byte that is not, without a word. An ERP code sent in another encoding (GBK's `%D6%D0` for
中, from a client on a Chinese Windows) then named the same record as every other code that
differed only in such bytes: `PUT /v1/customers/by-ref/GBK-%D6%D0` and
`PUT /v1/customers/by-ref/GBK-%B9%FA` wrote one customer, the second over the first."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import app_error_response
from app.errors import FieldError, Invalid


def not_utf8(raw_path: bytes) -> str | None:
    """Why the percent-decoded path is not UTF-8 text, or None when it is."""
    if b"%" not in raw_path:
        return None  # what is not escaped is ASCII: the server took it from the request line
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text ({exc.reason} at byte {exc.start} of the decoded path): percent-encode each byte of a code's UTF-8 form"
    return None


class Utf8Path:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            reason = not_utf8(raw.split(b"?", 1)[0])  # some clients' raw_path carries the query
            if reason is not None:
                error = Invalid("1 field(s) failed validation; nothing was stored", errors=[FieldError("path", reason, "path")])
                await app_error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
