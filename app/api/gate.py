"""What every /v1 request passes before its route reads the body: the API key and its
scope, then the rate limit. FastAPI parses a JSON body before it runs any dependency, so
checks made in dependencies would answer garbage sent without a key with 422 instead of
401; this route class runs them first, after routing and before the body is touched."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Coroutine, Hashable, Iterable

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import ACTOR_PARAMETER, CallerWith, Context, api_key, check_scope, known_api_key
from app.api.limits import HOOKS_PREFIX, RateLimiter
from app.api.problems import problem_responses
from app.errors import FieldError, Invalid, failed_fields
from app.services.keys import Key


def _scopes(dependant: Dependant) -> list[str]:
    """The scopes the route's `Caller` dependencies need."""
    found = [dependant.call.scope] if isinstance(dependant.call, CallerWith) else []
    return found + [scope for sub in dependant.dependencies for scope in _scopes(sub)]


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters the route and its dependencies take, by the names sent."""
    return frozenset(param.alias for param in dependant.query_params).union(*(_query_names(sub) for sub in dependant.dependencies))


_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def refuse_wide_text(body: bytes) -> None:
    """A body holding a NUL byte is not UTF-8 JSON (JSON has no raw NUL, and UTF-8 writes
    one for no other character): it is UTF-16 or UTF-32, which Python's json reads by
    guessing from the first bytes. A batch hunt found both read and stored, against
    openapi.md's "UTF-8", and UTF-16 NDJSON answered one rejected item per fragment of
    its lines. The form hook is not gated here: a tool's body is read in its charset."""
    at = body.find(b"\x00")
    if at >= 0:
        reason = f"malformed JSON: a NUL byte at byte {at} (JSON has none; a body in UTF-16 or UTF-32 has them: send UTF-8)"
        raise Invalid("the body is not JSON", errors=[FieldError("body", reason)])


def refuse_unknown_query(request: Request, known: frozenset[str]) -> None:
    """A query parameter the route does not take is a 422, as an unknown body field is: a
    misspelt or unsupported filter (`GET /v1/projects?region=East`) would otherwise filter
    nothing and answer every row, as if it had."""
    given = Counter(name for name, _ in request.query_params.multi_items())  # in the order sent
    unknown = [name for name in given if name not in known]
    # One given twice was read as its last value: `?atomic=true&atomic=false` stored part of a
    # batch, `?limit=500&limit=2` passed the limit's check (a hunt's find). No parameter here
    # takes a list, so a second value can only contradict the first.
    repeated = [name for name in given if name in known and given[name] > 1]
    if unknown or repeated:
        takes = ", ".join(sorted(known)) or "none"
        reason = f"this operation takes no query parameter of that name (it takes: {takes})"
        errors = [FieldError(name, reason, "query") for name in unknown]
        errors += [FieldError(name, f"given {given[name]} times: send it once", "query") for name in repeated]
        raise Invalid(failed_fields(len(errors)), errors=errors)


async def admit(ctx: Context, authorization: str | None, scopes: Iterable[str]) -> Key:
    """The API key `authorization` names, once it has spent a token of its rate limit and
    shown it holds `scopes`: Unauthorized, TooManyRequests or Forbidden otherwise. What every
    /v1 route's gate asks, and the direct reads (app/api/direct.py)."""
    known = ctx.known_keys
    # Remembered, and nothing changed since: the key is not read (PostgreSQL: no database at
    # all; SQLite: one read of the keys' stamp; app/services/known_keys.py).
    key = None if known is None else known_api_key(known, authorization)
    if key is None:
        # On the event loop: on SQLite 0.15-0.35 ms of a served POST's CPU less than the
        # hand-off to a worker thread (docs/performance.md, "The state round").
        key = await api_key(ctx.db, authorization, known)
    _spend(ctx.limiter, ("key", key.id))
    for scope in scopes:
        check_scope(key, scope)
    return key


def _spend(limiter: RateLimiter | None, caller: Hashable) -> None:
    if limiter is not None:
        limiter.take(caller)


def spend_hook(limiter: RateLimiter | None, form_id: str, *, refused: bool) -> None:
    """Spend a token of a form hook's bucket (429 if none is left): that of the form's
    authentic deliveries, or (`refused`) the one of every delivery that failed its check,
    apart, so that strangers sending forgeries cannot use up the tools'. Spent after the
    check, which is what tells them apart. Refused deliveries share one bucket: one per
    form id they named gave every made-up id a fresh burst, and 10,000 of them pushed a
    throttled API key's bucket out of the limiter, forgiving it (a hunt's find). An
    authentic delivery names a form that exists, so their buckets are as many as the forms."""
    _spend(limiter, ("form-refused",) if refused else ("form", form_id))


# The name of the API key's scheme in the OpenAPI schema (`components.securitySchemes`).
SECURITY_SCHEME = "apiKey"
SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`rapport keys create`): `Authorization: Bearer <key>`. Its scopes (read, write, admin) decide what it may do.",
    }
}


class Gated(APIRoute):
    """A route under /v1 authenticates its API key (once: `request.state.api_key`), checks
    the scope its `Caller` needs and spends a token of the key's rate limit. A form hook
    authenticates its own signature, on the body, and then spends a token of its form's
    bucket for authentic or for refused deliveries (`spend_hook`, app/api/forms.py).
    A route with a `Caller` reads `X-Actor` (app/api/deps.py), which its schema shows."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if path.startswith("/v1/") and not path.startswith(HOOKS_PREFIX) and set(kwargs.get("methods") or ()) & {"POST", "PUT", "PATCH"}:
            # Any body sent compressed is a 415 (app/api/paths.py), which the schema shows.
            kwargs["responses"] = {**problem_responses(415), **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)
        extra = dict(self.openapi_extra or {})
        if _scopes(self.dependant):
            extra["parameters"] = [*extra.get("parameters", []), ACTOR_PARAMETER]
        if path.startswith("/v1/") and not path.startswith(HOOKS_PREFIX):
            # The key this gate checks, as the schema's security scheme (app/main.py): the
            # gate is no FastAPI security dependency, so FastAPI would show none.
            extra["security"] = [{SECURITY_SCHEME: []}]
        self.openapi_extra = extra or None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        hook = self.path.startswith(HOOKS_PREFIX)
        authenticated = self.path.startswith("/v1/") and not hook
        scopes = _scopes(self.dependant)
        query_names = _query_names(self.dependant)

        async def gated(request: Request) -> Response:
            if authenticated:
                request.state.api_key = await admit(request.app.state.context, request.headers.get("authorization"), scopes)
                if request.scope["query_string"]:
                    refuse_unknown_query(request, query_names)
                if request.method in _WITH_BODY:
                    refuse_wide_text(await request.body())
            return await handler(request)

        return gated
