"""The one error shape: RFC 9457 application/problem+json, for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError

log = logging.getLogger("rapport")
PROBLEM = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 409: "Conflict", 413: "Request too large", 415: "Unsupported media type", 422: "The request is not valid", 503: "Service unavailable"}


def problem(status: int, slug: str, title: str, detail: str, errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"urn:rapport:problem:{slug}", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
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


def _field(loc: tuple[Any, ...]) -> tuple[str, str]:
    where = str(loc[0]) if loc else "body"
    path = ".".join(str(p) for p in loc[1:]) or where
    return where, path


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return app_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            where, path = _field(tuple(err.get("loc", ())))
            reason = err.get("msg", "invalid")
            if err.get("type") == "json_invalid":
                # The loc's second part is a character offset, not a field: name the body.
                at = f" at character {path}" if path != where else ""
                path = where
                reason = f"malformed JSON{at}: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
            errors.append({"field": path, "in": where, "reason": reason})
        return problem(422, "validation", "The request is not valid", f"{len(errors)} field(s) failed validation; nothing was stored", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem(exc.status_code, title.lower().replace(" ", "-"), title, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem(503, "unavailable", "Service unavailable", "the database is unavailable; nothing was stored — retry later", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return problem(503, "unavailable", "Service unavailable", "the database connection was lost; retry later", headers={"Retry-After": "5"})
        log.exception("unhandled error")
        return problem(500, "internal", "Internal error", "an unexpected error occurred; nothing was stored")
