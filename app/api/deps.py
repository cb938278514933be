"""Request dependencies: the service context, authentication by scope, the acting user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Callable

from fastapi import Depends, Header, Request

from app.api.present import Presenter
from app.db.engine import Database
from app.domain.rulebook import Rulebook
from app.errors import Forbidden, Unauthorized
from app.services.keys import authenticate, has_scope
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


@dataclass(frozen=True)
class Caller:
    key_id: int
    key_name: str
    scopes: tuple[str, ...]
    actor: str


def get_context(request: Request) -> Context:
    return request.app.state.context


ContextDep = Annotated[Context, Depends(get_context)]

BEARER = {"WWW-Authenticate": 'Bearer realm="rapport"'}


def _caller(scope: str) -> Callable[..., Caller]:
    def dependency(
        ctx: ContextDep,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
        x_actor: Annotated[str | None, Header(max_length=100, description="the user acting through this key (e.g. the rep's id)")] = None,
    ) -> Caller:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("send Authorization: Bearer <api key>", headers=BEARER)
        secret = authorization[7:].strip()
        with ctx.db.session(write=False) as session:
            key = authenticate(session, secret) if secret else None
            if key is None:
                raise Unauthorized("the API key is unknown or revoked", headers=BEARER)
            if not has_scope(key, scope):
                raise Forbidden(f"this key has scopes {', '.join(key.scopes)}; this needs {scope}")
            actor = _header_text(x_actor) or f"key:{key.name}"
            return Caller(key.id, key.name, tuple(key.scopes), actor)

    return dependency


def _header_text(value: str | None) -> str | None:
    """A header value as the client meant it: HTTP hands headers over as Latin-1, and
    clients send names like 王芳 as UTF-8 bytes."""
    if value is None or not value.strip():
        return None
    try:
        return value.encode("latin-1").decode("utf-8").strip()
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value.strip()


Reader = Annotated[Caller, Depends(_caller("read"))]
Writer = Annotated[Caller, Depends(_caller("write"))]
Admin = Annotated[Caller, Depends(_caller("admin"))]
