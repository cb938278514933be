"""The one error shape: RFC 9457 application/problem+json, for every failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.schemas import DAY_REASON, INSTANT_REASON, ProblemOut
from app.db.engine import driver_reason, is_lock_timeout, is_retryable
from app.domain.validation import TOO_MANY_DIGITS, too_many_digits
from app.errors import MAX_LISTED, AppError, failed_fields

log = logging.getLogger("rapport")
PROBLEM = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 409: "Conflict", 413: "Request too large", 415: "Unsupported media type", 422: "The request is not valid", 503: "Service unavailable"}


# What each error status means for a caller, as the OpenAPI document says it.
MEANINGS = {
    400: "the request cannot be read; nothing was stored",
    401: "no API key, or an unknown or revoked one",
    403: "the API key lacks the scope this needs",
    404: "no such resource",
    409: "conflicts with the current state; nothing was stored",
    412: "If-Match names a version that is no longer current; nothing was stored",
    413: "the body is larger than the limit",
    415: "the body's media type is not one this accepts, or it is sent with a Content-Encoding (bodies are read uncompressed only)",
    422: "the request is not valid: `errors` names each field and why; nothing was stored",
    429: "too many requests from this key; retry after Retry-After seconds",
    503: "the database is unavailable or busy, or the server stopped before it answered (`shutting-down`); retry after Retry-After seconds, as sent: nothing was stored, or, when the server stopped, a retry with the same Idempotency-Key or source and external_id counts once",
}


# The headers an answer carries besides its body, as the OpenAPI document declares them
# (a client generated from it can then read an ETag for If-Match, or wait Retry-After).
HEADERS = {
    "ETag": ({"type": "string"}, "the record's version: send it as If-Match to change the record only if nobody has changed it since"),
    "Location": ({"type": "string"}, "the path of the record created, found or recorded"),
    "Retry-After": ({"type": "integer", "minimum": 1}, "seconds to wait before trying again"),
}
# The error statuses that may ask to retry later (409: the same Idempotency-Key is in progress).
RETRY_LATER = (409, 429, 503)


def with_headers(*names: str, **response: Any) -> dict[str, Any]:
    """An OpenAPI response (`response`'s members, if any) that carries these headers. For a
    route's own status FastAPI merges it into the response it declares from the model."""
    return {**response, "headers": {name: {"description": HEADERS[name][1], "schema": HEADERS[name][0]} for name in names}}


def problem_response(description: str, *headers: str) -> dict[str, Any]:
    """One OpenAPI response answered as problem+json (carrying these headers, if any)."""
    response = {"description": description, "content": {PROBLEM: {"schema": ProblemOut.model_json_schema()}}}
    return with_headers(*headers, **response) if headers else response


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's or router's `responses=` for these error statuses, each problem+json (with
    Retry-After where the status may ask to retry later)."""
    return {status: problem_response(MEANINGS[status], *(("Retry-After",) if status in RETRY_LATER else ())) for status in statuses}


# Every route behind an API key can answer these.
AUTHENTICATED = problem_responses(401, 403, 422, 429, 503)
# A `{ref:path}` parameter matches no line feed (`%0A`), so such a path reaches no route at
# all (a carriage return does, and is refused as the other control characters are).
REF_WITH_LINE_BREAK = problem_response("the ref holds a line feed, so the path names no resource")


def problem(status: int, slug: str, title: str, detail: str, errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"urn:rapport:problem:{slug}", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors[:MAX_LISTED]
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def app_error_response(exc: AppError) -> JSONResponse:
    return problem(
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        [{"field": e.field, "in": e.location, "reason": e.reason} for e in exc.errors],
        exc.headers,
    )


def database_error_response(exc: OperationalError) -> JSONResponse:
    """The 503 for a database that did not answer: a lock waited for too long, writes that
    kept colliding, or a database that is away."""
    if is_lock_timeout(exc):
        log.warning("a request waited longer than RAPPORT_LOCK_TIMEOUT_SECONDS for a row another transaction holds")
        detail = "another write holds a record this request needs (a long batch, a regrade, or a transaction left open) for longer than this service waits; nothing was stored — retry"
        return problem(503, "unavailable", "Service unavailable", detail, headers={"Retry-After": "5"})
    if is_retryable(exc):  # still colliding after Database.transaction's retries
        log.warning("write still rolled back by the database after retries (SQLSTATE %s)", exc.orig.sqlstate)  # type: ignore[union-attr]
        return problem(503, "unavailable", "Service unavailable", "the write collided with concurrent writes to the same records; nothing was stored — retry", headers={"Retry-After": "1"})
    # What the driver said tells a full disk from a read-only file from a lost server; the
    # class name alone (OperationalError) told the operator nothing (a soak hunt's).
    log.warning("database unavailable: %s: %s", exc.__class__.__name__, driver_reason(exc))
    return problem(503, "unavailable", "Service unavailable", "the database is unavailable; nothing was stored — retry later", headers={"Retry-After": "5"})


def _field(loc: tuple[Any, ...]) -> tuple[str, str]:
    where = str(loc[0]) if loc else "body"
    path = ".".join(str(p) for p in loc[1:]) or where
    return where, path


# pydantic's failures to read a date or an instant that passed the shape check of
# app/api/schemas.py, said as that check says them.
_UNPARSED = {
    "datetime_parsing": INSTANT_REASON,
    "datetime_from_date_parsing": INSTANT_REASON,
    "datetime_type": INSTANT_REASON,
    "date_parsing": DAY_REASON,
    "date_from_datetime_parsing": DAY_REASON,
    "date_from_datetime_inexact": DAY_REASON,
    "date_type": DAY_REASON,
}


# What pydantic says of a body that is not an object: a text or bytes one is one FastAPI did
# not read as JSON.
_NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


def validation_reason(err: Any, where: str = "body") -> str:
    """A pydantic error's reason as the service says it, wherever a request is validated (a
    request's fields, a batch's items, a CSV row)."""
    kind, ctx = err.get("type"), err.get("ctx") or {}
    if kind == "too_long" and isinstance(err.get("input"), str):
        # A length limit on a type with its own validator (NoNul) is checked after it, as for a list.
        return f"String should have at most {ctx.get('max_length')} characters"
    if kind in _UNPARSED:
        # pydantic's own words misled (a mobile hunt's): "a valid datetime or date, unexpected
        # extra characters" for 24:00, :60 or an offset of +08.
        reason = _UNPARSED[kind]
        if where == "query" and isinstance(err.get("input"), str) and " " in err["input"]:
            reason += " (in a query string, write the offset's + as %2B: a bare + reads as a space)"
        return reason
    if kind == "value_error" and isinstance(ctx.get("error"), ValueError):
        return str(ctx["error"])  # the service's own reason, without pydantic's "Value error, "
    return str(err.get("msg", "invalid"))


class CutShort:
    """The answer to a request the server stopped before it was answered. When uvicorn's
    graceful shutdown runs out of time (`--shutdown-timeout`) it cancels the requests still
    running, and answered each with a bare `500 Internal Server Error` in text/plain; the
    request's work runs on in its thread and may yet commit (a hunt's batch of 1,515 events
    was stored behind that 500). It is answered 503 problem+json instead, saying so. The
    outermost layer of the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as exc:
            if scope["type"] == "http":
                detail = "the server stopped before this request finished: retry it"
                if scope["method"] not in ("GET", "HEAD"):
                    detail = (
                        "the server stopped before this request finished, and it may yet have been stored. Retry it as it was sent: "
                        "an event with the same Idempotency-Key (or source and external_id) counts once, and a change sent with If-Match answers 412 if it was made"
                    )
                answer = problem(503, "shutting-down", "Service unavailable", detail, headers={"Retry-After": "5", "Connection": "close"})
                try:
                    await answer(scope, receive, send)
                except RuntimeError:  # the answer had begun: the server ends the connection
                    raise exc from None
                # Answered: the request ends here, as uvicorn asked, without the error and
                # 80-line traceback it logs for an exception (a hunt's note).
                log.warning("%s %s: the shutdown's time ran out before it finished; answered 503 shutting-down", scope["method"], scope["path"])
                return
            raise


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return app_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            where, path = _field(tuple(err.get("loc", ())))
            if tuple(err.get("loc", ())) == ("body",) and err.get("type") in _NOT_AN_OBJECT and "json" not in request.headers.get("content-type", ""):
                # A JSON body sent without its media type is not read as JSON: pydantic then
                # said "a valid dictionary or object to extract fields from" (a mobile hunt's).
                sent = request.headers.get("content-type")
                reason = f"send the body as JSON, with Content-Type: application/json ({f'not {sent}' if sent else 'none was sent'})"
            elif err.get("type") == "json_invalid":
                # The loc's second part is a character offset, not a field: name the body.
                at = f" at character {path}" if path != where else ""
                path = where
                reason = f"malformed JSON{at}: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
            else:
                reason = validation_reason(err, where)
            errors.append({"field": path, "in": where, "reason": reason})
        return problem(422, "validation", "The request is not valid", failed_fields(len(errors)), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers a JSON body it cannot decode for another reason than a syntax error
        # with a bare 400 ("There was an error parsing the body"): one that is not UTF-8, and
        # one nested deeper than json can read (a hunt found the second). Each is malformed
        # JSON, said as such, as a batch's body says it (app/api/bodies.py).
        cause = exc.__cause__
        if isinstance(cause, (UnicodeDecodeError, RecursionError, ValueError)):
            errors = [{"field": "body", "in": "body", "reason": f"malformed JSON: {_unreadable(cause)}"}]
            return problem(422, "validation", "The request is not valid", failed_fields(1), errors)
        title = TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        elif exc.status_code == 404 and request.url.path.endswith("/") and (bare := request.url.path.rstrip("/")) and allowed_methods(request, bare):
            # No redirect to the path without the slash (create_app): behind a proxy that
            # ends TLS the redirect's URL would be http://, and a client would re-send a
            # POST's body to it. The caller is told which path is served instead.
            detail = f"no such path: {request.url.path} (paths end without a slash: {bare})"
        return problem(exc.status_code, title.lower().replace(" ", "-"), title, detail, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _exc: ClientDisconnect) -> Response:
        # The client hung up while sending its body: nobody reads an answer, nothing was
        # stored, and it is no error of the service's. It was logged as one, with its
        # traceback, and the form hook needs no key (a hunt's find: log flooding).
        log.info("client disconnected before its body arrived: %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        return database_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return problem(503, "unavailable", "Service unavailable", "the database connection was lost; retry later", headers={"Retry-After": "5"})
        log.exception("unhandled error")
        return problem(500, "internal", "Internal error", "an unexpected error occurred; nothing was stored")


def _unreadable(cause: Exception) -> str:
    """Why FastAPI could not read a JSON body (besides a syntax error, which it reports)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if too_many_digits(cause):  # Python's limit (a hunt's: a bare 400)
        return TOO_MANY_DIGITS
    return "cannot be read"


def allowed_methods(request: Request, path: str | None = None) -> list[str]:
    """Every method some route serves at the request's path (or at `path`). Starlette
    answers a 405 with the methods of the first route whose path matched (GET for a
    customer, though PATCH is served there too): RFC 9110 §15.5.6 wants the resource's
    whole set in `Allow`. Asked of the router itself, one method at a time (a 405 or a 404
    is rare; FastAPI's included routers keep their routes to themselves)."""
    routes = request.app.router.routes
    scope = {**request.scope, "path": path} if path is not None else request.scope
    served = [method for method in _METHODS if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)]
    return [m for method in served for m in ((method, "HEAD") if method == "GET" else (method,))]  # HEAD wherever GET (app/api/head.py)


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
