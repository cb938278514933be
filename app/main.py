"""The application factory."""

from __future__ import annotations

import gc
import logging
import re
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, AsyncIterator, Callable
from urllib.parse import unquote_plus
from datetime import datetime

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api import customers, events, forms, meta, problems, projects, threads, webhooks
from app.api.deps import Context, utc_now
from app.api.direct import DirectReads
from app.api.gate import SECURITY_SCHEMES
from app.db.types import MAX_ID
from app.api.head import HeadAsGet
from app.api.paths import Utf8Path
from app.logs import log_to_stderr
from app.api.limits import HOOKS_PREFIX, BodyLimit, RateLimiter
from app.api.present import Presenter
from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services.known_keys import KnownKeys
from app.settings import Settings, get_settings

DESCRIPTION = """Rapport keeps a B2B sales team's customers (project owners 项目甲方 and
installation contractors 安装公司), projects and logged interaction events, and derives from
the events each customer's **relationship level** (0, I–IV) and each project's **deal heat**
(0/30/50/70/90/100 %) by a versioned rulebook — explained criterion by criterion, with every
change kept for audit.

Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 problem+json."""


def _serving(settings: Settings, inner: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The server's lifespan: `inner`'s, with the worker threads `settings` asks for
    (app/api/threads.py), after moving everything built so far (routes, the rulebook,
    SQLAlchemy's mappers and statement caches: ~140,000 objects) out of the garbage
    collector's reach with gc.freeze(). Otherwise its occasional full collection walks all
    of them, a 90 ms pause felt by every request in flight (a gen-2 pass measured every
    ~2,000 event POSTs on this machine)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        gc.collect()
        gc.freeze()
        try:
            async with threads.serving(settings), inner(app):
                yield
        finally:
            gc.unfreeze()  # collectable again once the server stops (one process may build many apps)

    return run


def _listening(known: KnownKeys | None, inner: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """`inner`'s lifespan, while `known` listens for changes to the API keys (if there is one)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        stop = known.start() if known is not None else None
        try:
            async with inner(app):
                yield
        finally:
            if stop is not None:
                stop()

    return run


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now) -> FastAPIOffline:
    """Build the app. The rulebook is loaded and validated here: a broken one refuses to start."""
    settings = settings or get_settings()
    rulebook = load_rulebook(settings.rulebook_path)
    db = Database.from_settings(settings, serving=True)
    known = KnownKeys.of(db.engine) if settings.remember_keys else None
    lifespan = _serving(settings, _listening(known, webhooks.lifespan(settings, db, clock)))
    # No 307 from a path with a trailing slash to the one without: a 404 that names it
    # (app/api/problems.py).
    app = FastAPIOffline(title="Rapport", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, redirect_slashes=False, telemetry=_telemetry(settings))
    app.state.context = Context(
        settings=settings,
        db=db,
        rulebook=rulebook,
        presenter=Presenter(rulebook),
        clock=clock,
        limiter=RateLimiter.from_settings(settings),
        known_keys=known,
    )
    problems.install(app)
    # The innermost: the path, HEAD and body-size checks run before a direct read too.
    app.add_middleware(DirectReads, context=app.state.context)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(HeadAsGet)
    app.add_middleware(Utf8Path)
    app.add_middleware(problems.CutShort)  # the outermost: a request the shutdown cancels
    # The busiest routes first: this FastAPI matches a request against the routes of each
    # included router in turn, and every route tried before the match costs 1-3 µs (a POST
    # /v1/events passed the 17 routes of meta, customers and projects first: 37 µs).
    for module in (events, customers, projects, meta, forms, webhooks):
        app.include_router(module.router)
    _declare_security(app)
    log_to_stderr()
    _redact_access_log()
    return app


def _telemetry(settings: Settings) -> dict[str, bool] | None:
    """FastAPI's own OpenTelemetry (RAPPORT_OPENTELEMETRY). Left on, it asks on every request
    whether a provider has been configured: about 2 % of a customer read's instructions in
    the server (3-5 % of a served read's py-spy samples), for traces nobody had asked for."""
    return None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


def _declare_security(app: FastAPIOffline) -> None:
    """Name the API key's scheme in the schema, which every keyed operation's `security`
    refers to (app/api/gate.py): clients generated from it send the key, and /docs offers
    to take one."""
    built = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = built()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            _integral_bounds(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _integral_bounds(node: Any) -> None:
    """FastAPI's schema model keeps a bound as a float: an integer's largest id became
    9.223372036854776e+18, one more than the largest a request may send. An integer's bounds
    go back to integers (MAX_ID exactly)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                if isinstance(node.get(key), float):
                    node[key] = MAX_ID if node[key] == float(MAX_ID) else int(node[key])
        for value in node.values():
            _integral_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integral_bounds(value)


class _RedactTokens(logging.Filter):
    """A form hook may carry its secret as ?token=…: keep it out of the access log. On a
    hook's path every query value is hidden: a tool that put the secret under a near-miss
    name (`TOKEN=`, `token%00=`) was refused, and its URL, secret and all, logged (a hunt's
    find). Elsewhere, any parameter whose name holds "token"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "=" in a for a in record.args):
            record.args = tuple(_without_secrets(a) if isinstance(a, str) else a for a in record.args)
        return True


# Every query parameter; its name as the server reads it (unquoted: `%74oken` is `token`).
_TOKEN = re.compile(r"((?:^|[?&])([^=&?\s]*)=)([^&\s]*)")


def _without_secrets(text: str) -> str:
    path, mark, query = text.partition("?")
    if not mark:
        return text
    if HOOKS_PREFIX in path:  # (behind a root_path too) each name kept (what the tool sent), each value hidden, a bare item too
        return path + mark + "&".join(f"{item.partition('=')[0]}=***" if "=" in item else "***" for item in query.split("&"))
    return path + mark + _TOKEN.sub(_redacted, query)


def _redacted(found: re.Match[str]) -> str:
    return f"{found.group(1)}***" if "token" in unquote_plus(found.group(2)).casefold() else found.group(0)


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactTokens) for f in access.filters):
        access.addFilter(_RedactTokens())
