"""Typed application errors. One handler (app/api/problems.py) turns each into RFC 9457
problem+json; nothing else builds error responses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    location: str = "body"  # where the field is: body, query, header or path


class ReleaseMismatch(Exception):
    """The stored grades were made by another release's grading than this one's, and this
    command may not re-grade them (only `rapport serve` and `rapport migrate` do: app/services/
    state.py `sync_grading`). Not an API error: the CLI answers it, exit status 2."""


class MigrationsUnusable(Exception):
    """The migrations cannot be run: their folder is not found, or the database's schema is
    at a revision they do not know (a newer release migrated it). Nothing was changed. (Not
    an API error: the CLI answers it, exit status 2.)"""


class AppError(Exception):
    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class Invalid(AppError):
    status, slug, title = 422, "validation", "The request is not valid"


# The most errors one problem lists (app/api/problems.py `problem`; a batch item's, app/api/
# bodies.py). A body of 100,000 unknown fields was answered with as many errors, 7 MB, and a
# 16 MB batch with 114 MB (a hunt's): the detail counts them all, the list names the first.
MAX_LISTED = 20


def failed_fields(count: int) -> str:
    """The detail of a 422 that lists `count` fields in its `errors` (at most `MAX_LISTED`)."""
    listed = f" (the first {MAX_LISTED} are listed)" if count > MAX_LISTED else ""
    return f"{count} field(s) failed validation{listed}; nothing was stored"


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict"


class PreconditionFailed(AppError):
    status, slug, title = 412, "precondition-failed", "The resource has changed"


class PreconditionRequired(AppError):
    status, slug, title = 428, "precondition-required", "If-Match is required"


class Unauthorized(AppError):
    status, slug, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "The API key lacks the scope for this"


class TooLarge(AppError):
    status, slug, title = 413, "too-large", "The request is too large"


class UnsupportedMediaType(AppError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class TooManyRequests(AppError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class RulebookChanged(AppError):
    """This process's rulebook is no longer the database's active one: it grades nothing
    until it is restarted with the active one (app/grading.py, `in_force`)."""

    status, slug, title = 503, "rulebook-changed", "The active rulebook changed"
