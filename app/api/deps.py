"""Request dependencies: the service context, the caller's scope (its key was
authenticated by the route's gate, app/api/gate.py), the acting user."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Callable

from fastapi import Depends, Request

from app.api.limits import RateLimiter
from app.api.present import Presenter
from app.db.engine import Database
from app.domain.rulebook import Rulebook
from app.domain.validation import MAX_ACTOR, reserved_actor
from app.errors import FieldError, Forbidden, Invalid, Unauthorized
from app.services.keys import Key, authenticate, has_scope, hash_secret
from app.services.known_keys import KnownKeys
from app.settings import Settings


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Context:
    """Everything a request handler needs, built once per app (not per request)."""

    settings: Settings
    db: Database
    rulebook: Rulebook
    presenter: Presenter
    clock: Callable[[], datetime] = utc_now
    limiter: RateLimiter | None = None  # None: no rate limit
    known_keys: KnownKeys | None = None  # None: every request reads its key (switched off, or in-memory SQLite)
    # Idempotency-Keys whose claims this process could not free (the database was away):
    # (API key id, key, lease), freed with its next keyed request (app/api/idempotency.py).
    unreleased: set[tuple[int, str, datetime]] = field(default_factory=set)
    # And the answers of keyed writes that committed but whose answer could not be stored
    # after (a batch's): (API key id, key, lease) → the answer, stored with its next keyed
    # request, if that claim still holds the key.
    unstored: dict[tuple[int, str, datetime], Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    key_id: int
    key_name: str
    scopes: tuple[str, ...]
    actor: str


async def get_context(request: Request) -> Context:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hand-off per request.
    return request.app.state.context


ContextDep = Annotated[Context, Depends(get_context)]


BEARER = {"WWW-Authenticate": 'Bearer realm="rapport"'}


def _secret(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send Authorization: Bearer <api key>", headers=BEARER)
    return authorization[7:].strip()


async def api_key(db: Database, authorization: str | None, known: KnownKeys | None = None) -> Key:
    """The key an Authorization header names, or Unauthorized."""
    secret = _secret(authorization)
    # One statement, not a Session, on the event loop: this runs before every request that
    # `known` does not answer. It is also the request's first use of the database.
    key = await authenticate(db, secret, known) if secret else None
    if key is None:
        raise Unauthorized("the API key is unknown or revoked", headers=BEARER)
    return key


def known_api_key(known: KnownKeys, authorization: str | None) -> Key | None:
    """The key an Authorization header names if this process remembers it (no database: the
    event loop may ask), else None; Unauthorized for a header that names no key."""
    secret = _secret(authorization)
    return known.get(hash_secret(secret)) if secret else None


def check_scope(key: Key, scope: str) -> None:
    if not has_scope(key.scopes, scope):
        raise Forbidden(f"this key has scopes {', '.join(key.scopes)}; this needs {scope}")


def header_parameter(name: str, title: str, description: str, *, max_length: int | None = None) -> dict[str, Any]:
    """An optional text header as the OpenAPI schema shows it, for a header a route reads from
    the request itself: what FastAPI writes for a `Header` parameter of that name."""
    text: dict[str, Any] = {"type": "string"} if max_length is None else {"type": "string", "maxLength": max_length}
    schema = {"anyOf": [text, {"type": "null"}], "description": description, "title": title}
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


# `X-Actor` on every route with a `Caller` (added by the route's gate, app/api/gate.py).
ACTOR_PARAMETER = header_parameter("x-actor", "X-Actor", "the user acting through this key (e.g. the rep's id)", max_length=MAX_ACTOR)


class CallerWith:
    """The `Caller` of a route that needs `scope`. The route's gate (app/api/gate.py) has
    authenticated the key and checked this scope before the body was read.

    It reads `X-Actor` itself rather than as a FastAPI `Header` parameter: a parameter of
    a dependency made FastAPI validate it through pydantic on every request, with or
    without the header, ~50 µs of CPU per request (a scratch app: a dependency with the
    parameter against one with only the request)."""

    def __init__(self, scope: str):
        self.scope = scope

    async def __call__(self, request: Request) -> Caller:
        key: Key | None = getattr(request.state, "api_key", None)
        if key is None:  # not a gated /v1 route: nothing was authenticated
            raise Unauthorized("send Authorization: Bearer <api key>", headers=BEARER)
        actor = acting_user(request.headers.get("x-actor")) or f"key:{key.name}"
        return Caller(key.id, key.name, key.scopes, actor)


def acting_user(value: str | None) -> str | None:
    """`X-Actor` as the client meant it. HTTP hands headers over as Latin-1, and clients send
    names like 王芳 as UTF-8 bytes: they are read as UTF-8, and bytes that are not (GBK's, from
    a client on a Chinese Windows) are refused, as they are in a path, rather than stored as
    a name nobody wrote. Counted as the caller's characters, not as the header's bytes: 王
    is three bytes and one character."""
    if value is None or not value.strip():
        return None
    try:
        actor = value.encode("latin-1").decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        reason = f"is not UTF-8 text ({exc.reason} at byte {exc.start}): send the name's UTF-8 bytes"
        raise Invalid("the X-Actor header is not valid", errors=[FieldError("x-actor", reason, "header")]) from None
    if len(actor) > MAX_ACTOR:
        raise Invalid("the X-Actor header is not valid", errors=[FieldError("x-actor", f"String should have at most {MAX_ACTOR} characters", "header")])
    reserved = reserved_actor(actor)
    if reserved:
        raise Invalid("the X-Actor header is not valid", errors=[FieldError("x-actor", reserved, "header")])
    return actor


Reader = Annotated[Caller, Depends(CallerWith("read"))]
Writer = Annotated[Caller, Depends(CallerWith("write"))]
Admin = Annotated[Caller, Depends(CallerWith("admin"))]
