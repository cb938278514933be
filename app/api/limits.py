"""Limits that keep one caller from exhausting the service: the size of a request body
(a pure ASGI middleware) and a token-bucket rate per API key or per form hook."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import app_error_response
from app.errors import TooLarge, TooManyRequests
from app.settings import Settings

BATCH_PATH = "/v1/events/batch"
HOOKS_PREFIX = "/v1/hooks/"


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a request to `path` may send: the batch and the form hook have their own."""
    if path == BATCH_PATH:
        return settings.max_batch_bytes
    if path.startswith(HOOKS_PREFIX):
        return settings.max_hook_bytes
    return settings.max_body_bytes


class _BodyTooLarge(Exception):
    """Raised into the app from `receive` once the body passes the limit."""


class BodyLimit:
    """Answers 413 problem+json to a body over the limit: at once when Content-Length says
    so, else as soon as the streamed (chunked) bytes pass it. Whatever the app was about to
    answer after reading a cut-off body is replaced by the 413."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await app_error_response(TooLarge(f"the body is {declared} bytes; the limit here is {limit} bytes"))(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a body it could not read whole
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await app_error_response(TooLarge(f"the body is larger than the limit of {limit} bytes"))(scope, receive, send)


class RateLimiter:
    """A token bucket per caller (an API key's id, a hook's form id): `burst` requests at
    once, then `per_second` sustained. Kept in this process's memory: with N processes each
    has its own buckets, so a caller's effective limit is N times the setting.

    At most `max_buckets` are kept: the least recently used is dropped first, and it is the
    one that has had longest to refill, so dropping it rarely forgives anything. Requests
    that fail authentication never get a bucket."""

    def __init__(self, per_second: float, burst: int, *, max_buckets: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.burst = burst
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """None when the limit is off (a rate of 0)."""
        return cls(settings.rate_limit_per_second, settings.rate_limit_burst) if settings.rate_limit_per_second > 0 else None

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, caller: Hashable) -> None:
        """Spend one token of `caller`'s bucket, or raise TooManyRequests (429 with Retry-After)."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.per_second)
            allowed = tokens >= 1
            self._buckets[caller] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        if not allowed:
            wait = max(1, math.ceil((1 - tokens) / self.per_second))
            raise TooManyRequests(
                f"more than {self.burst} requests at once or {self.per_second:g} per second from this caller; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
