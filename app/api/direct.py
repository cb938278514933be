"""The two busiest reads, `GET /v1/customers/{id}` and `GET /v1/projects/{id}` (the mobile
app's "show me this customer / this project"), answered without FastAPI's routing and
dependency solving.

On these reads FastAPI's own work was more than half of a request's CPU: matching the path
against the included routers' routes (~18 % of a profiled read) and solving the route's
dependencies (~24 %), against ~27 % for reading, presenting and encoding the record. Served
on SQLite at 16 clients, one process answered 1,490-1,690 customer reads a second with a
p99 of 19-23 ms; answered here (with the round's other changes), 3,150-3,390 with a p99 of
9.4-12 ms, and on PostgreSQL twice as many as before too (docs/performance.md, "The
direct-read round").

What is answered here is what the route answers, by the same code: the key is admitted by
the gate's `admit` (authentication, rate limit, scope), `X-Actor` is checked as the route's
`Reader` checks it, and the answer is the route's own (`customers.read_by_id`,
`projects.read_by_id`); errors get the same problem+json as the app's handlers give them,
and an unexpected one goes on to the server-error handler as it would from the route.
Anything else the route would read (a query string, a path written another way, a root
path), and every request while OpenTelemetry records them, goes to the app unchanged.
tests/api/test_direct.py holds the two to the same status, headers and body. The routes
stay: they serve what is not claimed here, and describe both reads in /openapi.json.

It sits inside the path, HEAD and body-size middleware (app/main.py), so those checks run
first, as they do for the route; a HEAD arrives here as its GET."""

from __future__ import annotations

import re
from typing import Awaitable, Callable

from fastapi import Response
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import customers, projects
from app.api.deps import Context, acting_user
from app.api.gate import admit
from app.api.problems import app_error_response, database_error_response
from app.db.types import MAX_ID
from app.errors import AppError

Read = Callable[[Context, int], Awaitable[Response]]

_READS: dict[str, Read] = {"customers": customers.read_by_id, "projects": projects.read_by_id}
# An id as the routes take it (`schemas.PathId`): digits, no leading zero.
_PATH = re.compile(r"/v1/(customers|projects)/([1-9][0-9]{0,18})")


class DirectReads:
    def __init__(self, app: ASGIApp, context: Context):
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        claimed = _claimed(scope)
        if claimed is None:
            await self.app(scope, receive, send)
            return
        read, ident = claimed
        try:
            response = await self._read(scope, read, ident)
        except AppError as exc:
            response = app_error_response(exc)
        except OperationalError as exc:
            response = database_error_response(exc)
        await response(scope, receive, send)

    async def _read(self, scope: Scope, read: Read, ident: int) -> Response:
        headers = Headers(scope=scope)
        await admit(self.context, headers.get("authorization"), ("read",))
        acting_user(headers.get("x-actor"))  # refused as the route's `Reader` refuses it
        return await read(self.context, ident)


def _claimed(scope: Scope) -> tuple[Read, int] | None:
    """The read and the id, if this request is a plain GET of a customer or a project by id.

    Not while FastAPI's OpenTelemetry records the request (an operator configured a
    provider): the route it names in spans and metrics (`http.route`) is set as the request
    is routed, and a direct read would show as an unrouted request (a review's find)."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"] or scope.get("root_path"):
        return None
    if scope.get("fastapi.telemetry") is not None:
        return None
    found = _PATH.fullmatch(scope["path"])
    if found is None:
        return None
    ident = int(found.group(2))
    return (_READS[found.group(1)], ident) if ident <= MAX_ID else None
