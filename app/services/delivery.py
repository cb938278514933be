"""Sending what the outbox queued: at least once, signed (Standard Webhooks), retried on a
schedule, and never by two workers at the same time.

A worker claims one due delivery in a short write transaction by leasing it
(`locked_until`; PostgreSQL skips rows another claim holds, SQLite's write lock
serializes claims), POSTs outside any transaction with a timeout well below the lease,
then records the attempt and the outcome in another short transaction, changing the
delivery only if the claim is still its own. Any number of workers and API processes may
run at once."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence

import httpx
from sqlalchemy import bindparam, case, delete, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import Database, driver_reason
from app.domain.signatures import live_secrets, sign_standard_webhooks
from app.services import outbox
from app.services.egress import Egress
from app.services.paging import page
from app.settings import Settings

log = logging.getLogger("rapport.webhooks")

USER_AGENT = "Rapport-Webhooks/0.1"
EXCERPT_BYTES = 1024
GONE = 410  # the receiver says the endpoint is gone for good: pause at once


def lease_for(settings: Settings) -> timedelta:
    """How long a claim holds: twice what one attempt may take (its timeout, at most 60 s),
    and half a minute for recording it. A worker killed during an attempt leaves its
    delivery leased: it is tried again when the lease runs out (it was a flat 5 minutes,
    a hunt's find), and `redeliver` answers 409 until then, saying when."""
    return timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)


@dataclass(frozen=True)
class Claim:
    """A delivery leased to this worker until `until`, with what it takes to send it."""

    delivery_id: int
    subscription_id: int
    attempts: int
    until: datetime
    url: str
    secrets: tuple[str, ...]  # signed with each: the subscription's, and the one before it during a rotation
    msg_id: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    excerpt: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Failing:
    """The subscriptions whose last attempt from this process failed, the deliveries of
    each that this process's senders have in flight, and the subscription this process
    claimed for last (the next claim is another's turn first: `_claim`).

    A failing subscription gets one sender at a time: its other due deliveries wait while
    one is attempted. Without this, claims taken in `next_attempt_at` order gave every
    sender to a receiver that timed out (each attempt the whole timeout), and every other
    subscription's deliveries waited behind it: 8 messages to a healthy receiver took 21 s
    beside a hanging one. Any other subscription gets a second sender only while no other
    subscription has a delivery due (`claim`); a success lifts the failing one's limit.
    Kept per process, like the senders."""

    def __init__(self) -> None:
        self._claiming = threading.Lock()
        self._lock = threading.Lock()
        self._failing: set[int] = set()
        self._in_flight: dict[int, int] = {}
        self._last = 0  # the subscription of this process's last claim

    def claim(self, db: Database, now: datetime, lease: timedelta) -> Claim | None:
        """`_claim`, passing over the subscriptions that have a delivery in flight, and, when
        no other has one due, over the failing ones among them only. One claim at a time
        in this process, so that two senders cannot both take one.

        So a subscription gets a second sender only while no other has a delivery due: a
        receiver that answers 2xx slowly is never failing, and taking its turns it came to
        hold most senders (a hunt's: 48 slow attempts in 40 s held three quarters of 4
        senders' time, and ten fast receivers got 13 deliveries a second instead of 50)."""
        with self._claiming:
            with self._lock:
                sending = sorted(self._in_flight)
                failing = [sid for sid in sending if sid in self._failing]
            claim = _claim(db, now, lease, passing_over=sending, or_passing_over=failing if sending else None, after=self._last)
            if claim is not None:
                self._last = claim.subscription_id
                with self._lock:
                    self._in_flight[claim.subscription_id] = self._in_flight.get(claim.subscription_id, 0) + 1
            return claim

    def ended(self, claim: Claim, *, ok: bool) -> None:
        with self._lock:
            sid = claim.subscription_id
            self._in_flight[sid] -= 1
            if not self._in_flight[sid]:
                del self._in_flight[sid]
            if ok:
                self._failing.discard(sid)
            else:
                self._failing.add(sid)


def deliver_due(
    db: Database,
    *,
    now: Callable[[], datetime],
    client: httpx.Client,
    limit: int,
    lease: timedelta,
    schedule: Sequence[float],
    failing: Failing | None = None,
) -> int:
    """Attempt up to `limit` due deliveries, one claim at a time; return how many were
    attempted. `schedule` holds the seconds to wait before each retry; after the last
    retry fails the delivery is `failed` and its subscription paused, as it is once its
    receiver has failed every attempt for the schedule's whole length, as many times as a
    delivery is tried (`_receivers_run`). Senders running at once share one `failing`."""
    failing = failing or Failing()
    attempted = 0
    while attempted < limit:
        claim = failing.claim(db, now(), lease)
        if claim is None:
            break
        outcome = None
        try:
            outcome = _post(client, claim, now)
            _record(db, claim, outcome, now(), schedule)
        finally:
            failing.ended(claim, ok=outcome is not None and outcome.ok)
        attempted += 1
    return attempted


def body_of(message: m.OutboxMessage) -> bytes:
    """The bytes sent (and signed): the same on every attempt and on either database."""
    return json.dumps(message.payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


# A delivery a claim may take: pending, due, and not leased (`now` is bound at each claim).
_CLAIMABLE = (
    m.Delivery.status == "pending",
    m.Delivery.next_attempt_at <= bindparam("now"),
    (m.Delivery.locked_until.is_(None)) | (m.Delivery.locked_until < bindparam("now")),
)
# The active subscription after `after` (by id), but those `passing_over`, with a claimable
# delivery: one probe of ix_webhook_deliveries_subscription_due for each subscription passed.
# Its earliest, not EXISTS: PostgreSQL answered an EXISTS by walking the subscription's
# deliveries by id, finished ones included, to the first claimable one.
_NEXT_DUE = (
    select(m.Subscription.id)
    .where(
        m.Subscription.status == "active",
        m.Subscription.id > bindparam("after"),
        m.Subscription.id.not_in(bindparam("passing_over", expanding=True)),
        select(m.Delivery.id)
        .where(m.Delivery.subscription_id == m.Subscription.id, *_CLAIMABLE)
        .order_by(m.Delivery.next_attempt_at, m.Delivery.id)
        .limit(1)
        .scalar_subquery()
        .is_not(None),
    )
    .order_by(m.Subscription.id)
    .limit(1)
)
# The earliest claimable delivery of subscription `sid`, if it is still active. On PostgreSQL
# a delivery another claim has just locked is skipped for the next one.
_FIRST = (
    select(m.Delivery)
    .join(m.Subscription, m.Subscription.id == m.Delivery.subscription_id)
    .where(m.Delivery.subscription_id == bindparam("sid"), m.Subscription.status == "active", *_CLAIMABLE)
    .order_by(m.Delivery.next_attempt_at, m.Delivery.id)
    .limit(1)
    .with_for_update(of=m.Delivery, skip_locked=True)
)


def _claim(
    db: Database, now: datetime, lease: timedelta, *, passing_over: Sequence[int] = (), or_passing_over: Sequence[int] | None = None, after: int = 0
) -> Claim | None:
    """Lease the earliest due delivery of the next active subscription after `after` that has
    one, in turn by id and round again, but none of `passing_over`'s; if there is none, and
    `or_passing_over` is given, the same but none of its subscriptions' (in one transaction).

    Subscriptions take turns, one delivery each. Taking the earliest due delivery of all
    read every paused subscription's backlog first (148,000 queued made a claim read 28,962
    rows), and once that subscription was resumed, its backlog, due since long before, went
    out before anything queued for the others: a hunt saw no healthy receiver get any of 60
    new events in 3 minutes. Ordered by the earliest delivery of each subscription instead,
    a batch's messages, all due at one instant, went to one subscription after another."""
    with db.session(write=True) as session:
        delivery = _next(session, now, passing_over, after)
        if delivery is None and or_passing_over is not None:
            delivery = _next(session, now, or_passing_over, after)
        if delivery is None:
            return None
        delivery.locked_until = now + lease
        subscription = session.get(m.Subscription, delivery.subscription_id)
        message = session.get(m.OutboxMessage, delivery.message_id)
        assert subscription is not None and message is not None
        # The subscription's secret, and the one a rotation replaced while its grace lasts.
        secrets = tuple(live_secrets(subscription.secret, subscription.previous_secret, subscription.previous_secret_until, now))
        return Claim(delivery.id, subscription.id, delivery.attempts, delivery.locked_until, subscription.url, secrets, message.msg_id, body_of(message))


def _next(session: Session, now: datetime, passing_over: Sequence[int], after: int) -> m.Delivery | None:
    """`_claim`'s round of the subscriptions from the one after `after`: the delivery to take."""
    params = {"now": now, "passing_over": list(passing_over)}
    sid, wrapped = after, False
    while True:
        sid = session.scalar(_NEXT_DUE, {**params, "after": sid})
        if sid is None:
            if wrapped or after == 0:
                return None
            sid, wrapped = 0, True  # round again from the first
            continue
        if wrapped and sid > after:  # round the whole circle: every one's is taken
            return None
        delivery = session.scalar(_FIRST, {"now": now, "sid": sid})
        if delivery is not None:
            return delivery


def _post(client: httpx.Client, claim: Claim, now: Callable[[], datetime]) -> Outcome:
    at = now()
    timestamp = int(at.timestamp())
    headers = {
        "webhook-id": claim.msg_id,
        "webhook-timestamp": str(timestamp),
        # Standard Webhooks: space-separated signatures; a receiver accepts any it can verify.
        "webhook-signature": " ".join(sign_standard_webhooks(secret, claim.msg_id, timestamp, claim.body) for secret in claim.secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    started = time.monotonic()
    try:
        with client.stream("POST", claim.url, content=claim.body, headers=headers, follow_redirects=False) as response:
            excerpt = _excerpt(response)
            return Outcome(at, response.status_code, None, _ms_since(started), excerpt)
    except httpx.HTTPError as exc:
        return Outcome(at, None, f"{type(exc).__name__}: {exc}"[:500], _ms_since(started), None)
    except Exception as exc:  # noqa: BLE001 - e.g. httpx.InvalidURL, which is no HTTPError
        # A failed attempt like any other: logged, retried on the schedule, and pausing the
        # subscription in the end. Escaping, it left the delivery pending with nothing
        # logged, claimed again each time its lease ran out, for ever.
        log.exception("webhook delivery %s: the attempt failed", claim.delivery_id)
        return Outcome(at, None, f"{type(exc).__name__}: {exc}"[:500], _ms_since(started), None)


def _excerpt(response: httpx.Response) -> str | None:
    """At most EXCERPT_BYTES of the body: a receiver cannot make the worker read more. The
    status is the answer: a body that stalls or breaks off after it (the attempt's time up)
    leaves what was read, and the attempt counts by its status, not as a failure."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= EXCERPT_BYTES:
                break
    except httpx.HTTPError:
        pass
    # PostgreSQL text cannot hold NUL.
    return bytes(data[:EXCERPT_BYTES]).decode("utf-8", "replace").replace("\x00", "\ufffd") or None


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _record(db: Database, claim: Claim, outcome: Outcome, now: datetime, schedule: Sequence[float]) -> None:
    with db.session(write=True) as session:
        # The subscription's row first, then the delivery's (the attempt's row locks it, for
        # its foreign key): the order a resume, a redelivery or a delete takes them in.
        run = _receivers_run(session, claim.subscription_id, outcome)
        # The attempt happened, whoever holds the delivery now: the log says so.
        session.add(
            m.DeliveryAttempt(
                delivery_id=claim.delivery_id,
                at=outcome.at,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                response_excerpt=outcome.excerpt,
            )
        )
        delivery = session.scalar(
            select(m.Delivery)
            .where(
                m.Delivery.id == claim.delivery_id,
                m.Delivery.status == "pending",
                m.Delivery.locked_until == claim.until,
                m.Delivery.attempts == claim.attempts,
            )
            .with_for_update()
        )
        if delivery is None:
            # The lease ran out and another worker took over, or an admin re-queued or
            # deleted it meanwhile: their state wins.
            log.warning("delivery %s: claim lost before its outcome was recorded", claim.delivery_id)
            return
        delivery.attempts += 1
        delivery.locked_until = None
        delivery.last_status_code, delivery.last_error = outcome.status_code, outcome.error
        if outcome.ok:
            delivery.status, delivery.finished_at = "succeeded", now
            return
        last = f"HTTP {outcome.status_code}" if outcome.status_code is not None else outcome.error
        if outcome.status_code != GONE and delivery.attempts <= len(schedule):
            delivery.next_attempt_at = now + timedelta(seconds=schedule[delivery.attempts - 1])
            # Retried, unless this receiver has failed every attempt for as long as the whole
            # schedule, and as many times as a delivery is tried: one that hangs while new
            # messages come has each retry wait behind them (each attempt its whole
            # timeout), and its deliveries ran out of retries far later than the schedule
            # says, or never.
            failing_since, failed = run
            span = timedelta(seconds=sum(schedule))
            if failing_since is None or failed <= len(schedule) or now - failing_since < span:
                return
            reason = f"no delivery has succeeded since {outbox.utc_text(failing_since)}: {failed} attempts failed, for longer than the retry schedule ({span}; last: {last}, delivery {delivery.id})"
        else:
            delivery.status, delivery.finished_at = "failed", now
            if outcome.status_code == GONE:
                reason = f"the receiver answered 410 Gone to delivery {delivery.id}"
            else:
                reason = f"delivery {delivery.id} failed {delivery.attempts} times since {outbox.utc_text(delivery.created_at)} (last: {last})"
        _pause(session, delivery.subscription_id, reason, now)


def _receivers_run(session: Session, subscription_id: int, outcome: Outcome) -> tuple[datetime | None, int]:
    """The subscription's run of failed attempts with this outcome counted: (when its first
    began, how many), (None, 0) when there is none. One UPDATE of the subscription's row,
    computed from the row as it is when its lock is granted, so outcomes recorded at once by
    several senders or processes each count. Times are when the attempts began: a success
    ends a run that began before it (with any failure of it that began after it and was
    recorded first: the run keeps no time per attempt, so such a pause comes that much
    later, never sooner), not one that began after it; a failure that began before the
    receiver was last known good (a success, a resume, a new URL) counts for nothing."""
    s = m.Subscription
    at = bindparam("at", outcome.at, type_=s.good_at.type)
    if outcome.ok:
        ended = s.failing_since <= at
        values = {
            "good_at": case((or_(s.good_at.is_(None), s.good_at < at), at), else_=s.good_at),
            "failing_since": case((ended, None), else_=s.failing_since),
            "failed_attempts": case((ended, 0), else_=s.failed_attempts),
        }
    else:
        counts = or_(s.good_at.is_(None), s.good_at <= at)
        values = {
            "failing_since": case((~counts, s.failing_since), (or_(s.failing_since.is_(None), s.failing_since > at), at), else_=s.failing_since),
            "failed_attempts": case((counts, s.failed_attempts + 1), else_=s.failed_attempts),
        }
    # synchronize_session off: no subscription object is loaded in this session.
    statement = update(s).where(s.id == subscription_id).values(**values).returning(s.failing_since, s.failed_attempts)
    row = session.execute(statement, execution_options={"synchronize_session": False}).one()
    return row.failing_since, row.failed_attempts


def _pause(session: Session, subscription_id: int, reason: str, now: datetime) -> None:
    subscription = outbox.get_subscription(session, subscription_id, lock=True)
    if subscription.status != "active":
        return
    outbox.pause(subscription, reason, now)
    log.warning("webhook subscription %s paused: %s", subscription.id, reason)


# --- the delivery log ------------------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    """A delivery with its message and every attempt, oldest attempt first."""

    delivery: m.Delivery
    message: m.OutboxMessage
    attempts: list[m.DeliveryAttempt]


def deliveries_page(session: Session, subscription_id: int, *, status: str | None, limit: int, cursor: str | None) -> tuple[list[Logged], str | None]:
    """A subscription's deliveries, newest first (404 if the subscription does not exist)."""
    outbox.get_subscription(session, subscription_id)
    query = select(m.Delivery).where(m.Delivery.subscription_id == subscription_id)
    if status is not None:
        query = query.where(m.Delivery.status == status)
    rows, next_cursor = page(session, query, m.Delivery.id, limit=limit, cursor=cursor, descending=True)
    return logged(session, rows), next_cursor


def logged(session: Session, deliveries: Sequence[m.Delivery]) -> list[Logged]:
    """Attach messages and attempts to deliveries (two queries, whatever their number)."""
    if not deliveries:
        return []
    messages = {
        msg.id: msg for msg in session.scalars(select(m.OutboxMessage).where(m.OutboxMessage.id.in_({d.message_id for d in deliveries})))
    }
    attempts: dict[int, list[m.DeliveryAttempt]] = {d.id: [] for d in deliveries}
    for attempt in session.scalars(
        select(m.DeliveryAttempt).where(m.DeliveryAttempt.delivery_id.in_(attempts)).order_by(m.DeliveryAttempt.id)
    ):
        attempts[attempt.delivery_id].append(attempt)
    return [Logged(d, messages[d.message_id], attempts[d.id]) for d in deliveries]


# --- keeping the log bounded -------------------------------------------------------------

PRUNE_BATCH = 500
PRUNE_EVERY_SECONDS = 600
# What one round of the worker prunes at most, so a long log does not hold deliveries up.
PRUNE_AT_ONCE = 20 * PRUNE_BATCH


def end_deleted(db: Database, *, now: datetime) -> int:
    """End as failed the pending deliveries of deleted subscriptions; return how many.

    Deleting a subscription ends its pending deliveries, but on PostgreSQL a write that read
    the subscription as live before the delete and commits after it queues one the delete
    could not see (a hunt found one on every subscription deleted under writes). It is never
    sent (only active subscriptions' deliveries are claimed), and pruning keeps a pending
    one for good: the worker ends it here, as the delete would have, when it prunes."""
    deleted = select(m.Subscription.id).where(m.Subscription.status == outbox.DELETED)
    with db.session(write=True) as session:
        return session.execute(
            update(m.Delivery)
            .where(m.Delivery.status == "pending", m.Delivery.subscription_id.in_(deleted))
            .values(status="failed", last_error=outbox.DELETED_REASON, finished_at=now, locked_until=None)
        ).rowcount


def prune(db: Database, *, before: datetime, batch: int = PRUNE_BATCH, at_most: int | None = None) -> int:
    """Delete the deliveries that ended (succeeded or failed) before `before`, with their
    attempts, and the outbox messages no delivery refers to any more; return how many
    deliveries went (at most about `at_most`, if given). A pending delivery stays, however
    old, and so does its message.

    In transactions of at most `batch` deliveries, so that the first prune of a long log
    holds no lock for long. The deliveries are locked before anything is deleted (and
    checked again once locked): one an admin re-queues meanwhile is pending again, and stays."""
    gone = 0
    while at_most is None or gone < at_most:
        with db.session(write=True) as session:
            rows = session.execute(
                select(m.Delivery.id, m.Delivery.message_id)
                .where(m.Delivery.finished_at < before)  # set when it ends; a pending (or re-queued) one has none
                .order_by(m.Delivery.finished_at, m.Delivery.id)
                .limit(batch)
                .with_for_update()
            ).all()
            ids = [row.id for row in rows]
            if ids:
                session.execute(delete(m.DeliveryAttempt).where(m.DeliveryAttempt.delivery_id.in_(ids)))
                session.execute(delete(m.Delivery).where(m.Delivery.id.in_(ids)))
                left = select(m.Delivery.id).where(m.Delivery.message_id == m.OutboxMessage.id).exists()
                session.execute(delete(m.OutboxMessage).where(m.OutboxMessage.id.in_(sorted({row.message_id for row in rows})), ~left))
        gone += len(ids)
        if len(ids) < batch:
            break
    return gone


# --- running -----------------------------------------------------------------------------


def run_worker(db: Database, settings: Settings, stop: threading.Event, *, clock: Callable[[], datetime]) -> None:
    """Deliver until `stop` is set, `webhook_concurrency` deliveries at a time (each sender a
    thread; a subscription that is failing gets one sender at a time, `Failing`, so a
    receiver that answers slowly, or not at all until the timeout, holds up one sender, not
    every other subscription's deliveries). An attempt under way is finished
    first. Every PRUNE_EVERY_SECONDS (and at the start) the delivery log is pruned of what
    ended more than `webhook_log_days` ago, PRUNE_AT_ONCE deliveries at a time between
    deliveries."""
    failing = Failing()  # shared by the senders, as the client is
    with Egress.from_settings(settings).client(settings.webhook_timeout_seconds) as client:  # thread-safe: shared
        senders = [
            threading.Thread(target=_send, args=(db, settings, stop, clock, client, failing), name=f"rapport-webhooks-{i}", daemon=True)
            for i in range(1, settings.webhook_concurrency)
        ]
        for sender in senders:
            sender.start()
        try:
            _send(db, settings, stop, clock, client, failing, prune_every=PRUNE_EVERY_SECONDS)
        finally:
            for sender in senders:
                sender.join()


def _send(
    db: Database, settings: Settings, stop: threading.Event, clock: Callable[[], datetime], client: httpx.Client, failing: Failing, *, prune_every: float | None = None
) -> None:
    """One sender: claim a due delivery, send it, record it, until `stop`; and, given
    `prune_every`, prune the log that often."""
    keep = timedelta(days=settings.webhook_log_days)
    lease = lease_for(settings)
    next_prune = time.monotonic()
    while not stop.is_set():
        if prune_every is not None and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + prune_every
            try:
                ended = end_deleted(db, now=clock())
                if ended:
                    log.info("webhook log: %d deliveries of deleted subscriptions ended as failed", ended)
                pruned = prune(db, before=clock() - keep, at_most=PRUNE_AT_ONCE)
                if pruned:
                    log.info("webhook log: %d finished deliveries older than %d days deleted", pruned, settings.webhook_log_days)
                if pruned >= PRUNE_AT_ONCE:  # more to go: again after this round of deliveries
                    next_prune = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the next round tries again; delivering goes on
                _failed("pruning the webhook log failed", exc)
        try:
            sent = deliver_due(db, now=clock, client=client, limit=1, lease=lease, schedule=settings.webhook_retry_schedule, failing=failing)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is briefly away: keep going
            _failed("webhook delivery round failed; trying again", exc)
            sent = 0
        if not sent:
            stop.wait(settings.webhook_poll_seconds)


def _failed(what: str, exc: Exception) -> None:
    """A round that failed: the database away or busy (SQLite's write lock held by a long
    command) is a warning of one line, as the API's 503 logs it; anything else keeps its
    traceback. Each busy round logged an ERROR with a full traceback (a hunt's find)."""
    if isinstance(exc, OperationalError):
        log.warning("%s: the database is unavailable or busy: %s", what, driver_reason(exc))
    else:
        log.exception(what)


def start_thread(db: Database, settings: Settings, *, clock: Callable[[], datetime]) -> Callable[[], None]:
    """Run the worker in a daemon thread of this process; returns the function that stops it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(db, settings, stop), kwargs={"clock": clock}, name="rapport-webhooks", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=settings.webhook_timeout_seconds + 5)

    return halt
