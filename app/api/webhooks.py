"""/v1/webhooks/subscriptions — grade-change webhooks out (admin scope).

Each delivery is a Standard Webhooks POST (webhook-id, webhook-timestamp,
webhook-signature) sent at least once from the transactional outbox, retried on a
schedule of about 27 hours; a subscription whose delivery exhausts it is paused."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, AsyncIterator, Callable

from fastapi import APIRouter, FastAPI, Header, Query, Response
from sqlalchemy.orm import Session

from app.api import webhook_schemas as w
from app.api.deps import Admin, ContextDep
from app.api.etags import IfMatch, Precondition, etag, parse_if_match
from app.api.problems import AUTHENTICATED, problem_responses, with_headers
from app.api.gate import Gated
from app.api.schemas import PageLimit, PathId
from app.db import models as m
from app.db.engine import Database
from app.errors import FieldError, Invalid
from app.services import delivery as deliveries
from app.services import outbox as svc
from app.services.egress import Egress
from app.settings import Settings

log = logging.getLogger("rapport")

router = APIRouter(prefix="/v1/webhooks/subscriptions", tags=["webhooks"], route_class=Gated, responses=AUTHENTICATED)
SubscriptionIfMatch = Annotated[Precondition, Header(description="the ETag you read; 412 if the subscription changed since (a pause by the sender included)")]

Cursor = Annotated[str | None, Query(max_length=200)]


def _subscription(sub: m.Subscription) -> w.SubscriptionOut:
    return w.SubscriptionOut(
        id=sub.id,
        url=sub.url,
        description=sub.description,
        event_types=sub.event_types,
        status=sub.status,
        paused_reason=sub.paused_reason,
        paused_at=sub.paused_at,
        deleted_at=sub.deleted_at,
        version=sub.version,
        created_at=sub.created_at,
        updated_at=sub.updated_at,
        previous_secret_until=sub.previous_secret_until,
        failing_since=sub.failing_since,
        failed_attempts=sub.failed_attempts,
    )


def _delivery(entry: deliveries.Logged) -> w.DeliveryOut:
    d = entry.delivery
    return w.DeliveryOut(
        id=d.id,
        msg_id=entry.message.msg_id,
        type=entry.message.type,
        status=d.status,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        created_at=d.created_at,
        finished_at=d.finished_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        payload=entry.message.payload,
        attempts=[
            w.AttemptOut(at=a.at, status_code=a.status_code, error=a.error, duration_ms=a.duration_ms, response_excerpt=a.response_excerpt)
            for a in entry.attempts
        ],
    )


def _check_target(settings: Settings, url: str) -> None:
    """422 for a URL whose host is an address webhooks may not go to (app/services/egress.py)."""
    problem = Egress.from_settings(settings).url_problem(url)
    if problem is not None:
        raise Invalid("webhooks cannot be sent there", errors=[FieldError("url", problem)])


@router.post("", status_code=201, response_model=w.SubscriptionCreatedOut, responses={201: with_headers("ETag", "Location"), **problem_responses(400, 413)})
def create_subscription(body: w.SubscriptionIn, ctx: ContextDep, caller: Admin, response: Response) -> w.SubscriptionCreatedOut:
    """Subscribe a URL to grade changes. The answer holds the signing secret — the only
    time it is shown: keep it where the receiver can read it."""

    _check_target(ctx.settings, body.url)

    def write(session: Session) -> w.SubscriptionCreatedOut:
        sub = svc.create_subscription(session, body.model_dump(exclude_none=True), now=ctx.clock())
        response.headers["Location"] = f"{router.prefix}/{sub.id}"
        response.headers["ETag"] = etag("subscription", sub.id, sub.version)
        return w.SubscriptionCreatedOut(**_subscription(sub).model_dump(), secret=sub.secret)

    return ctx.db.transaction(write)


@router.get("", response_model=w.SubscriptionPage)
def list_subscriptions(
    ctx: ContextDep,
    caller: Admin,
    status: Annotated[w.SubscriptionStatus | None, Query(description="default: active and paused (deleted ones only when asked for)")] = None,
    limit: PageLimit = 50,
    cursor: Cursor = None,
) -> w.SubscriptionPage:
    """List subscriptions, oldest first; follow `next_cursor` for more."""
    with ctx.db.session(write=False) as session:
        rows, next_cursor = svc.list_subscriptions(session, status=status, limit=limit, cursor=cursor)
        return w.SubscriptionPage(items=[_subscription(sub) for sub in rows], next_cursor=next_cursor)


@router.get("/{subscription_id}", response_model=w.SubscriptionOut, responses={200: with_headers("ETag"), **problem_responses(404)})
def get_subscription(subscription_id: PathId, ctx: ContextDep, caller: Admin, response: Response) -> w.SubscriptionOut:
    """One subscription (never its secret); `paused_reason` says why it is paused. Its ETag
    serves a later PATCH's If-Match."""
    with ctx.db.session(write=False) as session:
        sub = svc.get_subscription(session, subscription_id)
        response.headers["ETag"] = etag("subscription", sub.id, sub.version)
        return _subscription(sub)


@router.patch("/{subscription_id}", response_model=w.SubscriptionOut, responses={200: with_headers("ETag"), **problem_responses(400, 404, 409, 412, 413)})
def update_subscription(
    subscription_id: PathId,
    body: w.SubscriptionPatch,
    ctx: ContextDep,
    caller: Admin,
    response: Response,
    if_match: SubscriptionIfMatch = None,
) -> w.SubscriptionOut:
    """Change the URL, description or event types; pause or resume. Resuming makes every
    waiting delivery due at once (409 for a deleted subscription)."""

    if body.url is not None:
        _check_target(ctx.settings, body.url)
    version = parse_if_match(if_match, "subscription", subscription_id)

    def write(session: Session) -> w.SubscriptionOut:
        changes = body.model_dump(exclude_unset=True)
        sub = svc.update_subscription(session, subscription_id, changes, actor=caller.actor, if_match=version, now=ctx.clock())
        response.headers["ETag"] = etag("subscription", sub.id, sub.version)
        return _subscription(sub)

    return ctx.db.transaction(write)


@router.post("/{subscription_id}/rotate-secret", response_model=w.SubscriptionCreatedOut, responses={200: with_headers("ETag"), **problem_responses(404, 409, 412, 413)})
def rotate_secret(
    subscription_id: PathId, ctx: ContextDep, caller: Admin, response: Response, body: w.SubscriptionRotateSecretIn | None = None, if_match: IfMatch = None
) -> w.SubscriptionCreatedOut:
    """Replace the signing secret (shown only in this answer). For `grace_hours` (24 by
    default) deliveries carry a second signature, with the old secret, so the receiver can
    switch to the new one without refusing a delivery; 409 for a deleted subscription. The
    version moves: the answer's ETag serves a later PATCH's If-Match."""
    grace = timedelta(hours=(body or w.SubscriptionRotateSecretIn()).grace_hours)
    version = parse_if_match(if_match, "subscription", subscription_id)

    def write(session: Session) -> w.SubscriptionCreatedOut:
        sub = svc.rotate_secret(session, subscription_id, grace=grace, now=ctx.clock(), if_match=version)
        response.headers["ETag"] = etag("subscription", sub.id, sub.version)
        return w.SubscriptionCreatedOut(**_subscription(sub).model_dump(), secret=sub.secret)

    return ctx.db.transaction(write)


@router.delete("/{subscription_id}", status_code=204, responses=problem_responses(404, 412))
def delete_subscription(subscription_id: PathId, ctx: ContextDep, caller: Admin, if_match: IfMatch = None) -> Response:
    """Stop for good: nothing more is queued or sent, pending deliveries end as failed. The
    subscription stays readable (status `deleted`) with its delivery log. Deleting it again
    is a 204 (an If-Match is not checked then: the deletion it guarded is done)."""
    version = parse_if_match(if_match, "subscription", subscription_id)
    ctx.db.transaction(lambda session: svc.delete_subscription(session, subscription_id, now=ctx.clock(), if_match=version))
    return Response(status_code=204)


@router.get("/{subscription_id}/deliveries", response_model=w.DeliveryPage, responses=problem_responses(404))
def list_deliveries(
    subscription_id: PathId,
    ctx: ContextDep,
    caller: Admin,
    status: w.DeliveryStatus | None = None,
    limit: PageLimit = 50,
    cursor: Cursor = None,
) -> w.DeliveryPage:
    """The delivery log, newest first: each message sent to this subscription, its status
    and every attempt with the receiver's answer."""
    with ctx.db.session(write=False) as session:
        rows, next_cursor = deliveries.deliveries_page(session, subscription_id, status=status, limit=limit, cursor=cursor)
        return w.DeliveryPage(items=[_delivery(entry) for entry in rows], next_cursor=next_cursor)


@router.post("/{subscription_id}/deliveries/{delivery_id}/redeliver", status_code=202, response_model=w.DeliveryOut, responses=problem_responses(404, 409))
def redeliver(subscription_id: PathId, delivery_id: PathId, ctx: ContextDep, caller: Admin) -> w.DeliveryOut:
    """Send a delivery again (same webhook-id), due now with a fresh retry schedule. While
    the subscription is paused it waits for the resume."""

    def write(session: Session) -> w.DeliveryOut:
        delivery = svc.redeliver(session, subscription_id, delivery_id, now=ctx.clock())
        return _delivery(deliveries.logged(session, [delivery])[0])

    return ctx.db.transaction(write)


@router.post("/{subscription_id}/test", status_code=202, response_model=w.DeliveryOut, responses=problem_responses(404, 409))
def send_test(subscription_id: PathId, ctx: ContextDep, caller: Admin) -> w.DeliveryOut:
    """Queue a `webhook.ping` message for this subscription only, to check the receiver."""

    def write(session: Session) -> w.DeliveryOut:
        delivery = svc.ping(session, subscription_id, now=ctx.clock())
        return _delivery(deliveries.logged(session, [delivery])[0])

    return ctx.db.transaction(write)


async def _writes_ended(db: Database) -> None:
    """Wait until the writes still under way have committed or rolled back. A request the
    shutdown cut short (answered 503 `shutting-down`, app/api/problems.py) runs on in its
    thread, and a uvicorn worker process exits without waiting for threads: with
    `--workers 2` a hunt's write was lost that way, its Idempotency-Key held (409) for a
    minute. A single process waited for them at exit already."""
    if db.writes_open:
        log.warning("waiting for %d write(s) under way when the server stopped to commit or roll back", db.writes_open)
        await asyncio.to_thread(db.wait_for_writes)


def lifespan(settings: Settings, db: Database, clock: Callable[[], datetime]) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Deliver webhooks from a thread of this process while it serves, if
    `settings.deliver_in_process` (the single-machine set-up; otherwise run `rapport worker`)."""

    @asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[None]:
        halt = deliveries.start_thread(db, settings, clock=clock) if settings.deliver_in_process else None
        try:
            yield
        finally:
            if halt is not None:
                halt()  # the attempt under way ends first; undelivered messages stay queued
            await _writes_ended(db)
            db.dispose()  # close pooled connections instead of leaving them to die with the process

    return run
