"""Delivering webhooks: queued in the grade change's own transaction, signed, sent at least
once, retried on the schedule, paused when it runs out, and never sent by two workers at
the same time — against a real HTTP receiver on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import httpx
import pytest
from sqlalchemy import event, func, insert, select, text, update

from app.db import models as m
from app.db.engine import Database, make_engine
from app.domain.rulebook import load_rulebook
from app.errors import Conflict
from app.services import outbox
from app.services.batch import record_batch
from app.services.customers import create_customer
from app.services.delivery import USER_AGENT, Failing, Outcome, _claim, _record, deliver_due, end_deleted, lease_for
from app.services.egress import Egress
from app.services.events import NewEvent, record_event
from app.settings import Settings
from app.startup import prepare
from tests.conftest import Clock, empty_tables, is_postgres

RULEBOOK = load_rulebook()
LEASE = timedelta(minutes=5)
SCHEDULE = (1.0, 2.0, 4.0, 8.0, 16.0)
INSTALLER_LEVEL_ONE = [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}), ("impression_confirmed", {}),
                       ("visit", {"reception": "neutral"}), ("visit", {"reception": "welcoming"}), ("visit", {"reception": "welcoming"})]


# --- a receiver, as the README tells one to write it -------------------------------------


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: int = 300) -> dict[str, Any]:
    """The verification example of docs/webhooks-out.md (stdlib only)."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        raise ValueError("webhook-timestamp is too far from now")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for signature in headers["webhook-signature"].split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(body)
    raise ValueError("no valid signature")


class Receiver:
    """A webhook receiver on loopback (stdlib http.server in a thread). It answers with the
    statuses queued in `answers` (then 200), verifies every signature, and applies each
    message once by deduplicating on webhook-id — as a receiver should."""

    def __init__(self, now: Callable[[], float]):
        self.now = now
        self.secret = ""
        self.answers: list[int] = []
        self.answer_body = b"ok"
        self.headers_extra: dict[str, str] = {}
        self.delay = 0.0
        self.on_request: Callable[[], None] | None = None
        self.requests: list[dict[str, Any]] = []
        self.applied: dict[str, dict[str, Any]] = {}  # webhook-id -> payload, first time only
        self.effects: list[str] = []  # what applying did: one entry per message applied
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0  # of one message
        self.at_once = 0
        self.most_at_once = 0  # of all messages
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/rapport"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def times_seen(self, msg_id: str) -> int:
        return sum(1 for r in self.requests if r["headers"]["webhook-id"] == msg_id)

    def _handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        msg_id = headers["webhook-id"]
        with self._lock:
            self.in_flight[msg_id] = self.in_flight.get(msg_id, 0) + 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight[msg_id])
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
            status = self.answers.pop(0) if self.answers else 200
        try:
            payload = verify(self.secret, headers, body, now=self.now())
            if self.on_request is not None:
                self.on_request()
            time.sleep(self.delay)
            with self._lock:
                self.requests.append({"headers": dict(headers), "body": body})
                if 200 <= status < 300 and msg_id not in self.applied:
                    self.applied[msg_id] = payload
                    self.effects.append(payload["type"])
            return status, self.answer_body
        finally:
            with self._lock:
                self.in_flight[msg_id] -= 1
                self.at_once -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, answer = receiver._handle(headers, body)
                except ValueError as exc:
                    status, answer = 401, str(exc).encode()
                self.send_response(status)
                for name, value in receiver.headers_extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    r = Receiver(now=lambda: clock().timestamp())
    yield r
    r.close()


# --- set-up ------------------------------------------------------------------------------


@pytest.fixture
def db(database: Database) -> Database:
    empty_tables(database.engine)
    return database


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def subscribe(db: Database, receiver: Receiver, clock: Clock, types: tuple[str, ...] = ("webhook.test",)) -> int:
    with db.session(write=True) as s:
        sub = outbox.create_subscription(s, {"url": receiver.url, "event_types": list(types)}, now=clock())
    receiver.secret = sub.secret
    return sub.id


def queue(db: Database, clock: Clock, n: int = 1, type_: str = "webhook.test") -> list[str]:
    """Queue `n` messages of `type_`; return their msg_ids."""
    with db.session(write=True) as s:
        messages = [outbox.enqueue(s, type_, {"type": type_, "data": {"n": i}}, clock()) for i in range(n)]
    return [msg.msg_id for msg in messages if msg is not None]


def deliver(db: Database, clock: Clock, http: httpx.Client, *, schedule: tuple[float, ...] = SCHEDULE, limit: int = 100) -> int:
    return deliver_due(db, now=clock, client=http, limit=limit, lease=LEASE, schedule=schedule)


def stored(db: Database, model: type, **where: Any) -> list[Any]:
    """Rows as stored now, in id order, readable after the session is gone."""
    with db.session(write=False) as s:
        rows = list(s.scalars(select(model).filter_by(**where).order_by(model.id)))
        s.expunge_all()
        return rows


def deliveries(db: Database) -> list[m.Delivery]:
    return stored(db, m.Delivery)


def attempts(db: Database) -> list[m.DeliveryAttempt]:
    return stored(db, m.DeliveryAttempt)


def subscription(db: Database, sid: int) -> m.Subscription:
    (sub,) = stored(db, m.Subscription, id=sid)
    return sub


def run_out_the_clock(db: Database, clock: Clock, http: httpx.Client, schedule: tuple[float, ...] = SCHEDULE) -> None:
    """Deliver, jump to the next retry, deliver … until nothing is pending and due."""
    while True:
        deliver(db, clock, http, schedule=schedule)
        pending = [d.next_attempt_at for d in deliveries(db) if d.status == "pending"]
        if not pending or subscription(db, deliveries(db)[0].subscription_id).status != "active":
            return
        clock.now = max(clock.now, min(pending))


def count(db: Database, model: type) -> int:
    with db.session(write=False) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def level_one(session, clock: Clock) -> int:  # noqa: ANN001
    """An installer brought to level I; returns its id."""
    installer = create_customer(session, RULEBOOK, {"name": "上海建工安装", "kind": "installer"}, now=clock()).id
    for i, (type_, attrs) in enumerate(INSTALLER_LEVEL_ONE):
        new = NewEvent(type=type_, customer_id=installer, attributes=attrs, occurred_at=clock() - timedelta(days=7 - i))
        record_event(session, RULEBOOK, new, actor="rep:li.ming", now=clock())
    return installer


# --- the outbox --------------------------------------------------------------------------


def test_a_grade_change_and_its_message_commit_together(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock, (outbox.LEVEL_CHANGED,))

    with db.session(write=True) as s:
        installer = level_one(s, clock)

    (change,) = stored(db, m.GradeChange)
    (message,) = stored(db, m.OutboxMessage)
    assert message.type == outbox.LEVEL_CHANGED and message.msg_id.startswith("msg_")
    assert message.payload["data"]["history_id"] == change.id
    assert message.payload["data"]["customer"]["id"] == installer
    assert (message.payload["data"]["old"], message.payload["data"]["new"]) == (0, 1)
    assert [d.message_id for d in deliveries(db)] == [message.id]


def test_a_grade_change_that_rolls_back_leaves_no_message(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock, (outbox.LEVEL_CHANGED,))

    with pytest.raises(RuntimeError), db.session(write=True) as s:
        level_one(s, clock)
        assert s.scalar(select(func.count()).select_from(m.OutboxMessage)) == 1  # queued inside …
        raise RuntimeError("something later in the same request fails")

    assert (count(db, m.GradeChange), count(db, m.OutboxMessage), count(db, m.Delivery)) == (0, 0, 0)  # … gone with it


def test_without_a_matching_subscription_nothing_is_written_nor_built(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock, (outbox.HEAT_CHANGED,))

    def payload() -> dict[str, Any]:
        raise AssertionError("the payload of a message nobody wants was built")

    with db.session(write=True) as s:
        assert outbox.enqueue(s, outbox.LEVEL_CHANGED, payload, clock()) is None
        level_one(s, clock)

    assert count(db, m.GradeChange) == 1
    assert (count(db, m.OutboxMessage), count(db, m.Delivery)) == (0, 0)


def test_subscriptions_created_at_the_same_time_all_receive(db: Database, receiver: Receiver, clock: Clock) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda _: subscribe(db, receiver, clock), range(8)))

    queue(db, clock)

    assert sorted(d.subscription_id for d in deliveries(db)) == sorted(ids)


def test_paused_subscriptions_keep_accumulating_deleted_ones_get_nothing(db: Database, receiver: Receiver, clock: Clock) -> None:
    active, paused, deleted = (subscribe(db, receiver, clock) for _ in range(3))
    with db.session(write=True) as s:
        outbox.update_subscription(s, paused, {"status": "paused"}, actor="admin", now=clock())
        outbox.delete_subscription(s, deleted, now=clock())

    queue(db, clock, 2)

    assert sorted(d.subscription_id for d in deliveries(db)) == [active, active, paused, paused]


def test_a_delivery_queued_by_a_write_that_committed_after_the_delete_is_ended_by_the_worker(db: Database, receiver: Receiver, clock: Clock, migrated: str) -> None:
    """Found by a hunt on PostgreSQL: a write that read the subscription as live before the
    delete, and committed after it, left a delivery pending on a deleted subscription, one
    never sent and never pruned. The worker's pruning round ends it as the delete would."""
    sid = subscribe(db, receiver, clock)
    if is_postgres(migrated):  # the race itself: the delete cannot see the write's rows
        read, deleted = threading.Event(), threading.Event()

        def write() -> None:  # reads the live subscriptions, as a write's INSERT returns them
            with db.session(write=True) as s:
                wanted = outbox.subscribers(s, "webhook.test")
                read.set()
                deleted.wait(30)
                outbox.enqueue(s, "webhook.test", {"type": "webhook.test", "data": {}}, clock(), wanted=wanted)

        writer = threading.Thread(target=write)
        writer.start()
        assert read.wait(30)
        with db.session(write=True) as s:
            outbox.delete_subscription(s, sid, now=clock())
        deleted.set()
        writer.join(30)
    else:  # SQLite writes one at a time: what such a race would leave
        queue(db, clock)
        with db.session(write=True) as s:
            s.execute(update(m.Subscription).where(m.Subscription.id == sid).values(status="deleted", deleted_at=clock()))
    assert [d.status for d in deliveries(db)] == ["pending"]

    assert end_deleted(db, now=clock()) == 1

    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.last_error) == ("failed", "the subscription was deleted")
    assert end_deleted(db, now=clock()) == 0
    assert receiver.requests == []


def test_an_event_created_message_names_the_event(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock, (outbox.EVENT_CREATED,))
    with db.session(write=True) as s:
        installer = create_customer(s, RULEBOOK, {"name": "上海建工安装", "kind": "installer"}, now=clock()).id
        new = NewEvent(type="company_introduced", customer_id=installer, occurred_at=clock(), external_id="crm-17", source="crm")
        event = record_event(s, RULEBOOK, new, actor="rep:li.ming", now=clock()).event
        record_event(s, RULEBOOK, new, actor="rep:li.ming", now=clock())  # a retry: no second message
    with db.session(write=False) as s:
        (payload,) = s.scalars(select(m.OutboxMessage.payload)).all()

    assert payload == {
        "type": "event.created",
        "timestamp": "2026-11-20T09:00:00Z",  # UTC with Z, as the API writes every time
        "data": {"event": {"id": event.id, "type": "company_introduced", "customer_id": installer, "project_id": None, "occurred_at": "2026-11-20T09:00:00Z",
                           "attributes": {}, "source": "crm", "external_id": "crm-17", "actor": "rep:li.ming"}},
    }


# --- delivering --------------------------------------------------------------------------


def test_a_delivery_is_posted_signed_as_json_with_the_message_id(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    subscribe(db, receiver, clock)
    (msg_id,) = queue(db, clock)

    assert deliver(db, clock, http) == 1

    (request,) = receiver.requests
    headers = request["headers"]
    assert headers["webhook-id"] == msg_id
    assert headers["webhook-timestamp"] == str(int(clock().timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json" and headers["user-agent"] == USER_AGENT
    assert json.loads(request["body"]) == {"type": "webhook.test", "data": {"n": 0}}
    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.locked_until) == ("succeeded", 1, 200, None)
    assert deliver(db, clock, http) == 0


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    subscribe(db, receiver, clock)
    receiver.secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    queue(db, clock)

    deliver(db, clock, http)

    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.last_status_code) == ("pending", 401)
    assert delivery.next_attempt_at == clock() + timedelta(seconds=SCHEDULE[0])
    assert receiver.effects == []


def test_a_delivery_that_runs_out_of_retries_fails_and_pauses_its_subscription(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    sid = subscribe(db, receiver, clock)
    receiver.answers = [503] * 3
    queue(db, clock)

    run_out_the_clock(db, clock, http, schedule=(1.0, 2.0))

    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 503)
    sub = subscription(db, sid)
    assert sub.status == "paused" and sub.paused_at == clock()
    assert f"delivery {delivery.id} failed 3 times" in (sub.paused_reason or "") and "HTTP 503" in (sub.paused_reason or "")

    (later,) = queue(db, clock)  # it keeps accumulating while paused …
    clock.advance(hours=1)
    assert deliver(db, clock, http) == 0  # … and nothing is sent

    with db.session(write=True) as s:
        outbox.update_subscription(s, sid, {"status": "active"}, actor="admin", now=clock())
    assert deliver(db, clock, http) == 1
    assert later in receiver.applied


def test_410_gone_pauses_the_subscription_at_once(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    sid = subscribe(db, receiver, clock)
    receiver.answers = [410]
    queue(db, clock)

    deliver(db, clock, http)

    assert [(d.status, d.attempts) for d in deliveries(db)] == [("failed", 1)]
    assert "410 Gone" in (subscription(db, sid).paused_reason or "")


def test_a_receiver_that_takes_nothing_is_paused_once_the_schedule_has_passed_whichever_deliveries_were_tried(
    db: Database, receiver: Receiver, clock: Clock, http: httpx.Client
) -> None:
    """A hanging receiver while messages keep coming (two queued for each attempt, each
    attempt taking 1.5 s): every retry waits behind newer messages due before it. A pause
    that waited for one delivery to run out of retries came at 13.5 s on a 2 s, 2 s
    schedule (the hunt's server: none after 150 s); it comes with the first failure once
    4 s have passed since the first, and nothing queued is lost."""
    sid = subscribe(db, receiver, clock)
    receiver.answers = [504] * 1000
    start, queued = clock(), []
    while subscription(db, sid).status == "active" and clock() < start + timedelta(seconds=60):
        queued += queue(db, clock, 2)
        deliver(db, clock, http, schedule=(2.0, 2.0), limit=1)
        clock.advance(seconds=1.5)

    sub = subscription(db, sid)
    assert sub.status == "paused" and sub.paused_at == start + timedelta(seconds=4.5)  # the attempt at 4.5 s
    assert sub.paused_reason and "no delivery has succeeded since 2026-11-20T09:00:00Z" in sub.paused_reason and "HTTP 504" in sub.paused_reason
    assert [d.status for d in deliveries(db)] == ["pending"] * len(queued)  # each keeps its retries

    receiver.answers = []
    with db.session(write=True) as s:
        outbox.update_subscription(s, sid, {"status": "active"}, actor="admin", now=clock())
    assert subscription(db, sid).failing_since is None  # resumed: the whole schedule again
    run_out_the_clock(db, clock, http, schedule=(2.0, 2.0))
    assert set(receiver.applied) == set(queued)


def test_a_success_starts_the_receivers_failing_time_again(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    """Only a run of failures with no success pauses: a 20 s schedule, failures at 0 s and
    from 6 s on, a success at 5 s. The failure at 21 s is 15 s into its run; 27 s is past it."""
    sid = subscribe(db, receiver, clock)
    start = clock()

    def attempt_at(seconds: float, status: int, *, new: bool = True) -> None:
        clock.now = start + timedelta(seconds=seconds)
        if new:
            queue(db, clock)
        receiver.answers = [status]
        assert deliver(db, clock, http, schedule=(10.0, 10.0), limit=1) == 1

    attempt_at(0, 503)
    attempt_at(5, 200)
    assert subscription(db, sid).failing_since is None
    attempt_at(6, 503)
    attempt_at(21, 503)  # the first delivery's second attempt: 21 s after the first failure
    assert (subscription(db, sid).status, subscription(db, sid).failing_since) == ("active", start + timedelta(seconds=6))
    attempt_at(27, 503, new=False)  # the third delivery's second attempt
    sub = subscription(db, sid)
    assert sub.status == "paused" and "since 2026-11-20T09:00:06Z" in (sub.paused_reason or "")
    assert [(d.status, d.attempts) for d in deliveries(db)] == [("pending", 2), ("succeeded", 1), ("pending", 2), ("pending", 0)]


def test_one_attempt_longer_than_the_whole_schedule_is_retried_not_paused(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    """A review's find: the run's time counted from the first attempt's start, so an attempt
    that took longer than a short schedule (10 s against 2 s, 2 s) paused the subscription
    with no retry. A run must also hold as many failed attempts as a delivery gets."""
    sid = subscribe(db, receiver, clock)
    receiver.answers = [504] * 10
    receiver.on_request = lambda: clock.advance(seconds=10)  # each attempt takes 10 s
    queue(db, clock)

    deliver(db, clock, http, schedule=(2.0, 2.0))
    assert subscription(db, sid).status == "active"
    assert [(d.status, d.attempts) for d in deliveries(db)] == [("pending", 1)]


def test_a_failure_that_began_before_a_success_or_a_resume_counts_for_nothing(db: Database, receiver: Receiver, clock: Clock) -> None:
    """Two senders' outcomes can be recorded in another order than their attempts began (a
    review's find: a failure recorded after a later success dated the run before it)."""
    sid = subscribe(db, receiver, clock)
    queue(db, clock, 3)
    start = clock()
    first, second, third = (_claim(db, start, LEASE, after=0) for _ in range(3))
    assert first and second and third

    def outcome(seconds: float, status: int) -> Outcome:
        return Outcome(start + timedelta(seconds=seconds), status, None, 5, None)

    _record(db, second, outcome(1, 200), start + timedelta(seconds=2), (10.0,))
    _record(db, first, outcome(0, 503), start + timedelta(seconds=3), (10.0,))  # began before the success
    sub = subscription(db, sid)
    assert (sub.failing_since, sub.failed_attempts, sub.good_at) == (None, 0, start + timedelta(seconds=1))

    with db.session(write=True) as s:
        outbox.update_subscription(s, sid, {"status": "paused"}, actor="admin", now=start + timedelta(seconds=4))
    with db.session(write=True) as s:
        outbox.update_subscription(s, sid, {"status": "active"}, actor="admin", now=start + timedelta(seconds=5))
    _record(db, third, outcome(3, 503), start + timedelta(seconds=6), (10.0,))  # began before the resume
    assert (subscription(db, sid).failing_since, subscription(db, sid).failed_attempts) == (None, 0)


def test_recording_an_attempt_beside_a_redelivery_does_not_deadlock(db: Database, receiver: Receiver, clock: Clock) -> None:
    """A review's find: recording took the delivery's row (for the attempt's foreign key)
    before the subscription's, and a redelivery takes them the other way round. PostgreSQL
    then aborted the recording: the attempt went unlogged and was made again."""
    if not is_postgres(str(db.engine.url)):
        pytest.skip("SQLite runs one write transaction at a time")
    sid = subscribe(db, receiver, clock)
    queue(db, clock)
    claim = _claim(db, clock(), LEASE)
    assert claim is not None
    failed: list[BaseException] = []

    def record() -> None:
        try:
            _record(db, claim, Outcome(clock(), 503, None, 5, None), clock(), SCHEDULE)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    with db.session(write=True) as admin:
        outbox.get_subscription(admin, sid, lock=True)  # as a redelivery begins
        recording = threading.Thread(target=record)
        recording.start()
        with db.engine.connect() as watch:  # until the recording waits for the subscription
            deadline = time.monotonic() + 10
            while not watch.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar() and time.monotonic() < deadline:
                time.sleep(0.01)
        with pytest.raises(Conflict, match="leased"):
            outbox.redeliver(admin, sid, claim.delivery_id, now=clock())
    recording.join(10)
    assert failed == []
    assert [(a.delivery_id, a.status_code) for a in attempts(db)] == [(claim.delivery_id, 503)]


def test_a_new_url_starts_the_receivers_run_again(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    """A review's find: the run belonged to the subscription, so a new URL's first failure
    could pause it for the failures of the receiver it replaced."""
    sid = subscribe(db, receiver, clock)
    receiver.answers = [503] * 3
    queue(db, clock, 3)
    deliver(db, clock, http, schedule=(1.0, 1.0))
    assert subscription(db, sid).failed_attempts == 3
    with db.session(write=True) as s:
        outbox.update_subscription(s, sid, {"url": receiver.url + "/v2"}, actor="admin", now=clock())
    sub = subscription(db, sid)
    assert (sub.failing_since, sub.failed_attempts, sub.good_at) == (None, 0, clock())


def test_locking_a_subscription_does_not_wait_for_a_write_that_queues_to_it(db: Database, receiver: Receiver, clock: Clock) -> None:
    """A review's find: a write queueing deliveries holds FOR KEY SHARE on their subscription
    (the foreign key); FOR UPDATE waited for it, and a recorder pausing the subscription
    deadlocked with such a write. The lock taken is FOR NO KEY UPDATE, which does not wait."""
    if not is_postgres(str(db.engine.url)):
        pytest.skip("SQLite runs one write transaction at a time")
    sid = subscribe(db, receiver, clock)
    with db.session(write=True) as writing:
        assert queue_in(writing, clock) is not None  # its delivery's foreign key holds the subscription
        with db.session(write=True) as admin:
            admin.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert outbox.get_subscription(admin, sid, lock=True).id == sid


def queue_in(session, clock: Clock) -> m.OutboxMessage | None:  # noqa: ANN001
    return outbox.enqueue(session, "webhook.test", {"type": "webhook.test", "data": {}}, clock())


def test_redirects_are_not_followed(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    subscribe(db, receiver, clock)
    receiver.answers = [302]
    receiver.headers_extra = {"location": "http://127.0.0.1:9/elsewhere"}
    queue(db, clock)

    deliver(db, clock, http)

    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert len(receiver.requests) == 1


def test_the_log_keeps_at_most_1_kb_of_the_receivers_answer(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    subscribe(db, receiver, clock)
    receiver.answer_body = b"\x00" + "答".encode() * 2000
    queue(db, clock)

    deliver(db, clock, http)

    (attempt,) = attempts(db)
    assert attempt.status_code == 200 and attempt.error is None
    assert len((attempt.response_excerpt or "").encode()) <= 1024 + 3  # a cut character becomes U+FFFD
    assert (attempt.response_excerpt or "").startswith("\ufffd答答")  # PostgreSQL text holds no NUL


def test_an_unreachable_receiver_is_logged_as_an_error_and_retried(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    sid = subscribe(db, receiver, clock)
    receiver.close()
    queue(db, clock)

    deliver(db, clock, http)

    (attempt,) = attempts(db)
    assert attempt.status_code is None and "ConnectError" in (attempt.error or "")
    (delivery,) = deliveries(db)
    assert delivery.status == "pending" and delivery.next_attempt_at > clock()
    assert subscription(db, sid).status == "active"


class Dripper:
    """A receiver that answers a byte at a time, `gap` seconds apart, each byte well within
    a read timeout: its status line and headers at once and then its 2,000-byte body, or
    (`drip_headers`) its status line and headers too. Sent in full, an answer would take
    minutes."""

    def __init__(self, *, drip_headers: bool, gap: float = 0.2):
        self.drip_headers, self.gap = drip_headers, gap
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hooks/rapport"

    def close(self) -> None:
        self._done.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            self.requests += 1
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2000\r\n\r\n"
            if not self.drip_headers:
                conn.sendall(head)
            for byte in (head if self.drip_headers else b"") + b"x" * 2000:
                if self._done.wait(self.gap):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the worker hung up: what the test wants


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body-dripped", "headers-dripped"])
def test_an_attempt_ends_when_its_time_is_up_however_slowly_the_receiver_answers(db: Database, clock: Clock, drip_headers: bool) -> None:
    """The timeout bounds the whole attempt, not each read: otherwise a receiver dripping
    its answer held a sender past the claim's lease, and a second sender sent the same
    delivery at the same time. An answer whose status came in time counts by its status."""
    dripper = Dripper(drip_headers=drip_headers)
    with db.session(write=True) as s:
        outbox.create_subscription(s, {"url": dripper.url, "event_types": ["webhook.test"]}, now=clock())
    queue(db, clock)
    try:
        with Egress(allow_loopback=True).client(1.0) as client:
            started = time.monotonic()
            deliver(db, clock, client)
            took = time.monotonic() - started
    finally:
        dripper.close()

    assert dripper.requests == 1
    assert took < 3, took  # in full, the answer takes over 400 s
    (attempt,) = attempts(db)
    (delivery,) = deliveries(db)
    if drip_headers:
        assert attempt.status_code is None and "ReadTimeout" in (attempt.error or "")
        assert delivery.status == "pending" and delivery.next_attempt_at > clock()
    else:
        assert attempt.status_code == 200 and attempt.error is None
        assert attempt.response_excerpt and set(attempt.response_excerpt) == {"x"}  # what came in time
        assert delivery.status == "succeeded"


def test_a_url_the_http_client_cannot_send_to_is_a_failed_attempt_not_a_stuck_delivery(db: Database, clock: Clock, http: httpx.Client) -> None:
    """A subscription stored before the API refused such URLs: its deliveries are logged as
    failed attempts and retried on the schedule, not claimed again for ever unlogged."""
    with db.session(write=True) as s:
        sid = outbox.create_subscription(s, {"url": "http://\u24db\u24de\u24d2\u24d0\u24db.example/h", "event_types": ["webhook.test"]}, now=clock()).id
    queue(db, clock)

    run_out_the_clock(db, clock, http, schedule=(1.0, 2.0))

    assert len(attempts(db)) == 3 and all("InvalidURL" in (a.error or "") for a in attempts(db))
    (delivery,) = deliveries(db)
    assert delivery.status == "failed" and subscription(db, sid).status == "paused"


# --- several workers -----------------------------------------------------------------------


def test_two_workers_never_send_one_delivery_at_the_same_time(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock)
    msg_ids = queue(db, clock, 30)
    receiver.delay = 0.01

    def worker(_: int) -> int:
        with httpx.Client(timeout=5) as client:
            sent = 0
            while n := deliver_due(db, now=clock, client=client, limit=3, lease=LEASE, schedule=SCHEDULE):
                sent += n
            return sent

    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = list(pool.map(worker, range(2)))

    assert sum(sent) == 30
    assert receiver.most_in_flight == 1
    assert sorted(receiver.applied) == sorted(msg_ids)
    assert all(receiver.times_seen(msg_id) == 1 for msg_id in msg_ids)
    assert {d.status for d in deliveries(db)} == {"succeeded"}
    assert len(attempts(db)) == 30


def test_a_failing_receiver_gets_one_sender_and_the_others_are_not_held_up(db: Database, clock: Clock) -> None:
    """Once a subscription's attempt has failed, this process sends it one delivery at a
    time, so the other senders serve the other subscriptions instead of all waiting on a
    receiver that times out (docs/webhooks-out.md)."""
    slow, healthy = Receiver(now=lambda: clock().timestamp()), Receiver(now=lambda: clock().timestamp())
    try:
        subscribe(db, slow, clock)
        healthy_id = subscribe(db, healthy, clock)
        slow.answers, slow.delay = [500] * 100, 0.1
        failing = Failing()
        queue(db, clock)
        with httpx.Client(timeout=5) as client:
            assert deliver_due(db, now=clock, client=client, limit=2, lease=LEASE, schedule=SCHEDULE, failing=failing) == 2
        msg_ids = queue(db, clock, 12)

        def sender(_: int) -> int:
            with httpx.Client(timeout=5) as client:
                sent = 0
                while n := deliver_due(db, now=clock, client=client, limit=1, lease=LEASE, schedule=SCHEDULE, failing=failing):
                    sent += n
                return sent

        with ThreadPoolExecutor(max_workers=4) as pool:
            sent = sum(pool.map(sender, range(4)))
    finally:
        slow.close()
        healthy.close()

    assert sent == 24  # every due delivery of both was attempted once (the retries are not due yet)
    assert slow.most_at_once == 1
    assert set(msg_ids) <= set(healthy.applied)
    assert [d.status for d in deliveries(db) if d.subscription_id == healthy_id] == ["succeeded"] * 13


def test_subscriptions_take_turns_and_each_sends_its_earliest_first(db: Database, receiver: Receiver, clock: Clock) -> None:
    first, second, paused = (subscribe(db, receiver, clock, (f"webhook.{name}",)) for name in ("first", "second", "paused"))
    with db.session(write=True) as s:
        outbox.update_subscription(s, paused, {"status": "paused"}, actor="admin", now=clock())
    queue(db, clock, 2, "webhook.paused")  # the oldest of all, but paused
    times = []
    for _ in range(3):
        clock.advance(minutes=1)
        times.append(clock())
        queue(db, clock, 1, "webhook.first")
    queue(db, clock, 1, "webhook.second")  # the newest: second's turn comes all the same
    turns = Failing()

    claims = list(iter(lambda: turns.claim(db, clock(), LEASE), None))

    by_id = {d.id: d for d in deliveries(db)}
    assert [(c.subscription_id, by_id[c.delivery_id].next_attempt_at) for c in claims] == [
        (first, times[0]), (second, times[2]), (first, times[1]), (first, times[2])]
    assert all(by_id[c.delivery_id].locked_until == clock() + LEASE for c in claims)
    assert [d.locked_until for d in deliveries(db) if d.subscription_id == paused] == [None, None]


def test_a_resumed_subscriptions_backlog_does_not_hold_up_the_others(db: Database, receiver: Receiver, clock: Clock) -> None:
    """Found by a hunt: a subscription resumed after a long pause has a backlog due since
    long before anything queued since, and claims in order of due time sent all of it (31,100
    deliveries, 7 minutes) before anything to the others."""
    resumed, healthy = (subscribe(db, receiver, clock, (f"webhook.{name}",)) for name in ("resumed", "healthy"))
    with db.session(write=True) as s:
        outbox.update_subscription(s, resumed, {"status": "paused"}, actor="admin", now=clock())
    queue(db, clock, 30, "webhook.resumed")
    clock.advance(hours=5)
    with db.session(write=True) as s:
        outbox.update_subscription(s, resumed, {"status": "active"}, actor="admin", now=clock())
    queue(db, clock, 2, "webhook.healthy")
    turns = Failing()

    claims = [turns.claim(db, clock(), LEASE) for _ in range(4)]

    assert [c.subscription_id if c else None for c in claims] == [resumed, healthy, resumed, healthy]


def test_a_batchs_messages_go_to_every_subscription_in_turn(db: Database, receiver: Receiver, clock: Clock) -> None:
    """Found by a hunt: a batch's messages are all due at one instant, and claims taken by
    each subscription's earliest delivery went to one subscription until its share was sent."""
    subscriptions = [subscribe(db, receiver, clock) for _ in range(3)]
    queue(db, clock, 4)
    turns = Failing()

    claims = list(iter(lambda: turns.claim(db, clock(), LEASE), None))

    assert [c.subscription_id for c in claims] == subscriptions * 4


def test_a_subscription_gets_a_second_sender_only_while_no_other_has_a_delivery_due(db: Database, receiver: Receiver, clock: Clock) -> None:
    """Found by a hunt: a receiver that answers 2xx slowly is never failing, and taking its
    turns it came to hold most senders while the fast receivers' deliveries waited."""
    slow, fast = (subscribe(db, receiver, clock, (f"webhook.{name}",)) for name in ("slow", "fast"))
    queue(db, clock, 3, "webhook.slow")
    queue(db, clock, 2, "webhook.fast")
    turns = Failing()

    def claimed() -> Any:
        claim = turns.claim(db, clock(), LEASE)
        assert claim is not None
        return claim

    held = claimed()  # the slow receiver's first: still being sent
    assert held.subscription_id == slow
    for _ in range(2):  # the slow one's turn comes round, but it has a sender already
        claim = claimed()
        assert claim.subscription_id == fast
        turns.ended(claim, ok=True)
    assert claimed().subscription_id == slow  # none other has one due: a second sender
    turns.ended(held, ok=True)


def test_a_claim_passes_over_the_subscriptions_it_is_told_to(db: Database, receiver: Receiver, clock: Clock) -> None:
    first, second = (subscribe(db, receiver, clock, (f"webhook.{name}",)) for name in ("first", "second"))
    queue(db, clock, 1, "webhook.first")
    clock.advance(minutes=1)
    queue(db, clock, 1, "webhook.second")

    assert _claim(db, clock(), LEASE, passing_over=[first, second]) is None
    claim = _claim(db, clock(), LEASE, passing_over=[first])
    assert claim is not None and claim.subscription_id == second
    claim = _claim(db, clock(), LEASE)
    assert claim is not None and claim.subscription_id == first


def test_a_claim_reads_neither_a_paused_backlog_nor_an_active_subscriptions_finished_deliveries(db: Database, receiver: Receiver, clock: Clock, migrated: str) -> None:
    """Found by a hunt: a claim took the earliest due delivery of all and then kept it only
    if its subscription was active, so it read a paused subscription's whole backlog first
    (148,000 queued: 100 ms a claim, 1,000 healthy deliveries in 124 s against 28 s). Nor
    may it walk the deliveries an active subscription has finished (kept 30 days) to learn
    that none is due. The work of a claim, counted in SQLite's virtual-machine steps, must
    grow with neither."""
    if is_postgres(migrated):
        pytest.skip("counts SQLite's VM steps; bench/outbox_claim.py measures both engines")
    healthy, paused, busy = (subscribe(db, receiver, clock, (f"webhook.{name}",)) for name in ("healthy", "paused", "busy"))
    with db.session(write=True) as s:
        outbox.update_subscription(s, paused, {"status": "paused"}, actor="admin", now=clock())
    steps = [0]

    def count_steps(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        cursor.connection.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 10)

    def claim_steps() -> int:  # the busy subscription's turn first: the claim passes it over
        steps[0] = 0
        event.listen(db.engine, "before_cursor_execute", count_steps)
        try:
            claim = _claim(db, clock(), LEASE, after=healthy)
        finally:
            event.remove(db.engine, "before_cursor_execute", count_steps)
        assert claim is not None and claim.subscription_id == healthy
        return steps[0]

    def deliveries_of(sid: int, status: str) -> None:
        at = clock() - timedelta(hours=1)
        with db.session(write=True) as s:
            names = [f"msg_{sid}_{i}" for i in range(3000)]
            s.execute(insert(m.OutboxMessage), [{"msg_id": name, "type": "webhook.old", "payload": {}, "created_at": at} for name in names])
            ids = s.scalars(select(m.OutboxMessage.id).where(m.OutboxMessage.msg_id.in_(names))).all()
            s.execute(insert(m.Delivery), [{"subscription_id": sid, "message_id": mid, "status": status, "attempts": 1, "next_attempt_at": at, "created_at": at,
                                            "finished_at": None if status == "pending" else at} for mid in ids])

    queue(db, clock, 1, "webhook.healthy")
    alone = claim_steps()
    clock.advance(minutes=1)
    deliveries_of(paused, "pending")
    deliveries_of(busy, "succeeded")
    queue(db, clock, 1, "webhook.healthy")

    beside_them = claim_steps()

    assert beside_them < 2 * alone, (alone, beside_them)


def test_a_worker_whose_lease_ran_out_does_not_overwrite_the_new_holder(db: Database, receiver: Receiver, clock: Clock, http: httpx.Client) -> None:
    subscribe(db, receiver, clock)
    queue(db, clock)
    receiver.answers = [500]  # the first worker's attempt fails …
    taken_over: list[int] = []

    def second_worker_takes_over() -> None:
        if not taken_over:  # … and while it hangs, its lease runs out and another succeeds
            taken_over.append(1)
            clock.advance(seconds=LEASE.total_seconds() + 1)
            with httpx.Client(timeout=5) as other:
                taken_over.append(deliver(db, clock, other))

    receiver.on_request = second_worker_takes_over
    deliver(db, clock, http)

    assert taken_over == [1, 1]
    (delivery,) = deliveries(db)
    assert (delivery.status, delivery.attempts) == ("succeeded", 1)
    assert sorted(a.status_code for a in attempts(db)) == [200, 500]  # both attempts are logged


# --- `rapport worker` -----------------------------------------------------------------------


def test_the_worker_command_finishes_the_attempt_under_way_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    prepare(Settings(database_url=url))
    db = Database(make_engine(url))
    clock = Clock(datetime.now(timezone.utc))
    receiver = Receiver(now=time.time)
    try:
        subscribe(db, receiver, clock)
        queue(db, clock)
        release = threading.Event()
        arrived = threading.Event()

        def hold() -> None:
            arrived.set()
            release.wait(10)

        receiver.on_request = hold
        env = {**os.environ, "RAPPORT_DATABASE_URL": url, "RAPPORT_WEBHOOK_POLL_SECONDS": "0.05", "RAPPORT_WEBHOOK_ALLOW_LOOPBACK": "true"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], cwd=Path(__file__).parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            assert arrived.wait(20), "the worker did not deliver"
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            assert worker.poll() is None  # still finishing its attempt
            release.set()
            output, _ = worker.communicate(timeout=20)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0, output
        assert b"worker stopped" in output
        assert [(d.status, d.attempts) for d in deliveries(db)] == [("succeeded", 1)]
    finally:
        receiver.close()
        db.dispose()


def test_a_batch_queues_one_event_created_message_per_created_event(db: Database, receiver: Receiver, clock: Clock) -> None:
    subscribe(db, receiver, clock, (outbox.EVENT_CREATED,))
    with db.session(write=True) as s:
        installer = create_customer(s, RULEBOOK, {"name": "上海建工安装", "kind": "installer"}, now=clock()).id
    items = [NewEvent(type="company_introduced", customer_id=installer, occurred_at=clock(), external_id=f"crm-{i}", source="crm") for i in range(3)]
    with db.session(write=True) as s:
        first = record_batch(s, RULEBOOK, items, atomic=False, actor="erp", now=clock())
    with db.session(write=True) as s:
        record_batch(s, RULEBOOK, items, atomic=False, actor="erp", now=clock())  # re-sent: all duplicates
    with db.session(write=False) as s:
        payloads = s.scalars(select(m.OutboxMessage.payload).order_by(m.OutboxMessage.id)).all()
    assert [p["data"]["event"]["id"] for p in payloads] == [r.event_id for r in first.results]
    assert [p["data"]["event"]["external_id"] for p in payloads] == ["crm-0", "crm-1", "crm-2"]


@pytest.mark.parametrize(("timeout", "lease"), [(10, 50), (60, 150), (0.5, 31)])
def test_a_lease_outlasts_an_attempt_twice_and_no_more_than_needed(timeout: float, lease: float) -> None:
    # A worker killed mid-attempt left its delivery leased for a flat 5 minutes.
    assert lease_for(Settings(database_url="sqlite://", webhook_timeout_seconds=timeout)).total_seconds() == lease


@pytest.mark.parametrize(
    ("failure", "level", "traceback"),
    [("database", "WARNING", False), ("bug", "ERROR", True)],
)
def test_a_round_that_fails_on_a_busy_database_is_a_warning_and_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str, level: str, traceback: bool
) -> None:
    """While a long command held SQLite's write lock, every round of the webhook thread
    logged an ERROR with a full traceback (an operator-commands hunt's find)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from app.services import delivery

    stop = threading.Event()

    def failing_round(*_: Any, **__: Any) -> int:
        stop.set()
        if failure == "database":
            raise OperationalError("SELECT …", {}, sqlite3.OperationalError("database is locked"))
        raise ValueError("a bug")

    monkeypatch.setattr(delivery, "deliver_due", failing_round)
    with caplog.at_level("WARNING", logger="rapport"):
        delivery._send(None, Settings(), stop, lambda: datetime.now(timezone.utc), None, Failing())  # type: ignore[arg-type]

    (record,) = [r for r in caplog.records if r.name.startswith("rapport")]
    assert record.levelname == level
    assert (record.exc_info is not None) == traceback
    if failure == "database":
        assert record.getMessage() == "webhook delivery round failed; trying again: the database is unavailable or busy: database is locked"
