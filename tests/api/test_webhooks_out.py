"""/v1/webhooks/subscriptions: grade changes pushed to a receiver — signed, at least once,
retried with back-off, paused (not dropped) when the receiver keeps failing, with a
delivery log and manual redelivery. The receiver is a real HTTP server on loopback."""

from __future__ import annotations

import base64
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, Callable, Iterator, get_args

import httpx
import pytest
from sqlalchemy import func, select

from app.api.webhook_schemas import EventType
from app.db import models as m
from app.main import create_app
from app.services import delivery as deliveries
from app.services import outbox
from app.services.delivery import deliver_due
from app.settings import Settings
from app.startup import initialize
from tests.api.conftest import ADMIN, Api, Client
from tests.api.expectations import all_pages, assert_if_match_guards_patch, assert_problem
from tests.api.scenarios import at, issue_key, owner_level_one_events
from tests.conftest import Clock, empty_tables
from tests.test_delivery import Receiver, verify

BASE = "/v1/webhooks/subscriptions"
LEVEL = "customer.level_changed"
HEAT = "project.heat_changed"
SCHEDULE = [1, 2, 4, 8, 16]
LEASE = timedelta(minutes=5)


@pytest.fixture
def settings(db_url: str) -> Settings:
    """The tests deliver by calling the worker themselves, on the test clock, to receivers
    on this machine."""
    return Settings(database_url=db_url, bootstrap_key=ADMIN, deliver_in_process=False, webhook_retry_schedule=SCHEDULE, webhook_allow_loopback=True)


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    r = Receiver(now=lambda: clock().timestamp())
    yield r
    r.close()


@pytest.fixture
def deliver(app, clock: Clock) -> Iterator[Any]:  # noqa: ANN001
    """Run the delivery worker once over everything due now (as `rapport worker` would)."""
    ctx = app.state.context
    with httpx.Client(timeout=5) as http:
        yield lambda: deliver_due(ctx.db, now=clock, client=http, limit=100, lease=LEASE, schedule=ctx.settings.webhook_retry_schedule)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def subscribe(api, receiver: Receiver, types: list[str], **fields: Any) -> dict[str, Any]:  # noqa: ANN001
    r = api.post(BASE, json={"url": receiver.url, "event_types": types, **fields})
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    return r.json()


def log(api, sub: dict[str, Any], **params: Any) -> list[dict[str, Any]]:  # noqa: ANN001
    return all_pages(api, f"{BASE}/{sub['id']}/deliveries", **params)


def retry_until_settled(api, sub: dict[str, Any], clock: Clock, deliver) -> dict[str, Any]:  # noqa: ANN001
    """Deliver; while the (only) delivery is pending and its subscription active, jump to its next attempt."""
    while True:
        deliver()
        (item,) = log(api, sub)
        if item["status"] != "pending" or api.get(f"{BASE}/{sub['id']}").json()["status"] != "active":
            return item
        clock.now = parse(item["next_attempt_at"])


# --- the required story ------------------------------------------------------------------


def test_a_receiver_that_fails_five_times_then_succeeds_applies_the_change_exactly_once(api, clock: Clock, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    owner = api.create_customer("仁济医院基建处", "owner")
    receiver.answers = [500] * 5

    owner_level_one_events(api, owner["id"])
    item = retry_until_settled(api, sub, clock, deliver)

    assert item["status"] == "succeeded" and item["type"] == LEVEL
    assert [a["status_code"] for a in item["attempts"]] == [500] * 5 + [200]
    assert [(parse(b["at"]) - parse(a["at"])).total_seconds() for a, b in pairwise(item["attempts"])] == SCHEDULE
    assert receiver.times_seen(item["msg_id"]) == 6  # every one signed and verified …
    assert len({r["headers"]["webhook-timestamp"] for r in receiver.requests}) == 6  # … each with its own timestamp
    assert receiver.effects == [LEVEL]  # … and applied once

    r = api.post(f"{BASE}/{sub['id']}/deliveries/{item['id']}/redeliver")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["msg_id"] == item["msg_id"]
    deliver()

    assert receiver.times_seen(item["msg_id"]) == 7
    assert receiver.effects == [LEVEL]  # the forced duplicate changed nothing
    (again,) = log(api, sub)
    assert again["status"] == "succeeded" and len(again["attempts"]) == 7


def test_the_receivers_run_of_failures_is_shown_on_the_subscription_until_a_success_ends_it(api, clock: Clock, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    assert (sub["failing_since"], sub["failed_attempts"]) == (None, 0)
    owner = api.create_customer("仁济医院基建处", "owner")
    receiver.answers = [500] * 3
    owner_level_one_events(api, owner["id"])

    seen = []
    for _ in range(4):
        deliver()
        (item,) = log(api, sub)
        now = api.get(f"{BASE}/{sub['id']}")
        seen.append((now.json()["failing_since"], now.json()["failed_attempts"], now.headers["ETag"]))
        if item["status"] == "pending":
            clock.now = parse(item["next_attempt_at"])

    first = item["attempts"][0]["at"]
    assert [a["status_code"] for a in item["attempts"]] == [500, 500, 500, 200]
    assert [(parse(since) if since else None, failed) for since, failed, _ in seen] == [(parse(first), 1), (parse(first), 2), (parse(first), 3), (None, 0)]
    assert {tag for *_, tag in seen} == {f'"subscription-{sub["id"]}-v1"'}  # counting attempts is no change of the subscription


def test_a_level_change_carries_old_new_label_evidence_rulebook_version_and_trigger(api, clock: Clock, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    subscribe(api, receiver, [LEVEL])
    owner = api.create_customer("仁济医院基建处", "owner", external_ref="ERP-0042")
    events = owner_level_one_events(api, owner["id"])

    deliver()

    (payload,) = receiver.applied.values()
    (row,) = api.get(f"/v1/customers/{owner['id']}/history").json()["items"]
    data = payload["data"]
    assert payload["type"] == LEVEL and parse(payload["timestamp"]) == clock.now == parse(data["at"])
    assert data["customer"] == {"id": owner["id"], "name": "仁济医院基建处", "kind": "owner", "external_ref": "ERP-0042"}
    assert (data["old"], data["new"], data["label"]) == (0, 1, {"zh": "一级", "en": "Level I"})
    assert data["rulebook_version"] == row["rulebook_version"] == api.get("/v1/rulebook").json()["version"]
    assert data["trigger"] == row["trigger"] and data["trigger"]["event_id"] == events[-1]["id"]
    assert (data["history_id"], data["actor"]) == (row["id"], "key:bootstrap")
    met = {c["id"]: c["evidence"] for c in row["evidence"]["criteria"] if c["met"]}
    assert {c["id"]: c["evidence"] for c in data["evidence"]["met"]} == met
    assert data["evidence"]["next"] == row["evidence"]["next"]


def test_a_heat_change_is_sent_as_project_heat_changed(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    subscribe(api, receiver, [HEAT])
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"], external_ref="P-2026-07")
    won = api.event("stage_changed", project_id=project["id"], at=at(10), attributes={"stage": "won"})

    deliver()

    (payload,) = receiver.applied.values()
    data = payload["data"]
    assert payload["type"] == HEAT
    assert data["project"] == {"id": project["id"], "name": project["name"], "external_ref": "P-2026-07", "owner_id": owner["id"]}
    assert (data["old"], data["new"], data["tier"], data["label"]) == (0, 100, "won", {"zh": "已成交", "en": "Won"})
    assert data["trigger"] == {"kind": "event", "event_type": "stage_changed", "event_id": won["id"]}


def test_only_the_subscribed_types_are_sent(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [HEAT])
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"])

    deliver()

    assert log(api, sub) == [] and receiver.requests == []


# --- failing receivers: paused, not dropped -------------------------------------------------


def test_a_receiver_that_keeps_failing_pauses_its_subscription_and_nothing_is_lost(api, clock: Clock, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    read_while_active = api.get(f"{BASE}/{sub['id']}").headers["etag"]
    receiver.answers = [500] * (len(SCHEDULE) + 1)
    first = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, first["id"])

    failed = retry_until_settled(api, sub, clock, deliver)

    assert failed["status"] == "failed" and len(failed["attempts"]) == len(SCHEDULE) + 1
    paused = api.get(f"{BASE}/{sub['id']}").json()
    assert paused["status"] == "paused" and f"delivery {failed['id']} failed 6 times" in paused["paused_reason"]
    # An admin who read it before the sender paused it does not undo the pause unawares.
    assert_problem(api.patch(f"{BASE}/{sub['id']}", json={"status": "active"}, headers={"If-Match": read_while_active}), 412)
    assert api.get(f"{BASE}/{sub['id']}").json()["status"] == "paused"

    second = api.create_customer("万科华东区域", "owner")
    owner_level_one_events(api, second["id"])  # queued while paused …
    clock.advance(days=2)
    deliver()
    assert len(receiver.requests) == len(SCHEDULE) + 1  # … not sent

    r = api.patch(f"{BASE}/{sub['id']}", json={"status": "active"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["paused_reason"], r.json()["paused_at"]) == ("active", None, None)
    deliver()
    api.post(f"{BASE}/{sub['id']}/deliveries/{failed['id']}/redeliver")
    deliver()

    assert sorted(p["data"]["customer"]["id"] for p in receiver.applied.values()) == [first["id"], second["id"]]
    assert {d["status"] for d in log(api, sub)} == {"succeeded"}


def test_pausing_by_hand_holds_deliveries_until_resumed(api, clock: Clock, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])

    r = api.patch(f"{BASE}/{sub['id']}", json={"status": "paused"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused" and r.json()["paused_reason"] == "paused by key:bootstrap"
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"])
    clock.advance(hours=3)
    deliver()
    assert receiver.requests == [] and [d["status"] for d in log(api, sub)] == ["pending"]

    api.patch(f"{BASE}/{sub['id']}", json={"status": "active"})
    deliver()

    assert receiver.effects == [LEVEL]


# --- managing subscriptions ------------------------------------------------------------------


def test_a_new_subscription_shows_its_secret_once(api, receiver: Receiver) -> None:  # noqa: ANN001
    r = api.post(BASE, json={"url": receiver.url, "event_types": [LEVEL, HEAT, LEVEL], "description": "CRM sync"})

    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"{BASE}/{created['id']}"
    assert created["secret"].startswith("whsec_") and len(base64.b64decode(created["secret"][6:])) == 32
    assert (created["status"], created["event_types"], created["description"]) == ("active", [LEVEL, HEAT], "CRM sync")
    shown = api.get(r.headers["location"]).json()
    assert "secret" not in shown and shown == {k: v for k, v in created.items() if k != "secret"}
    assert [s["id"] for s in api.get(BASE).json()["items"]] == [created["id"]]


def test_the_api_offers_exactly_the_types_the_outbox_sends() -> None:
    assert get_args(EventType) == outbox.EVENT_TYPES


def test_subscriptions_are_listed_oldest_first_in_pages(api, receiver: Receiver) -> None:  # noqa: ANN001
    ids = [subscribe(api, receiver, [LEVEL])["id"] for _ in range(5)]

    assert [s["id"] for s in all_pages(api, BASE, limit=2)] == ids


def test_patch_changes_url_types_and_description_and_bumps_the_version(api, receiver: Receiver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL], description="old")

    r = api.patch(f"{BASE}/{sub['id']}", json={"url": "https://crm.example.com/hooks", "event_types": [HEAT], "description": None})

    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["url"], body["event_types"], body["description"], body["version"]) == ("https://crm.example.com/hooks", [HEAT], None, 2)


BAD_BODIES = [
    ({"url": "ftp://example.com/hooks", "event_types": [LEVEL]}, "url"),
    ({"url": "/hooks/rapport", "event_types": [LEVEL]}, "url"),
    ({"url": "https://", "event_types": [LEVEL]}, "url"),
    ({"url": "https://example.com:99999/hooks", "event_types": [LEVEL]}, "url"),
    ({"url": "https://example.com/a b", "event_types": [LEVEL]}, "url"),
    # Host names IDNA cannot encode: stored, their deliveries could never be sent.
    ({"url": "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:8801/h", "event_types": [LEVEL]}, "url"),
    ({"url": "http://\u2603.net/", "event_types": [LEVEL]}, "url"),
    ({"url": "http://a\u00adb.example/", "event_types": [LEVEL]}, "url"),
    ({"event_types": [LEVEL]}, "url"),
    ({"url": "https://example.com/hooks"}, "event_types"),
    ({"url": "https://example.com/hooks", "event_types": []}, "event_types"),
    ({"url": "https://example.com/hooks", "event_types": ["customer.deleted"]}, "event_types.0"),
    ({"url": "https://example.com/hooks", "event_types": [LEVEL], "secret": "whsec_bXlzZWNyZXQ="}, "secret"),
    ({"url": "https://example.com/hooks", "event_types": [LEVEL], "description": "x" * 201}, "description"),
    # Credentials were sent as Basic auth and shown in every read of the subscription.
    ({"url": "https://crm:s3cret@example.com/hooks", "event_types": [LEVEL]}, "url"),
    ({"url": "https://token@example.com/hooks", "event_types": [LEVEL]}, "url"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_an_invalid_subscription_is_422_naming_the_field_and_nothing_is_stored(api, body: dict[str, Any], field: str) -> None:  # noqa: ANN001
    assert_problem(api.post(BASE, json=body), 422, field)

    assert api.get(BASE).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [({"url": None}, "url"), ({"url": "http://\U0001f4a9.la/"}, "url"), ({"event_types": None}, "event_types"), ({"event_types": []}, "event_types"), ({"status": "deleted"}, "status"), ({"secret": "x"}, "secret")],
)
def test_an_invalid_patch_is_422_naming_the_field(api, receiver: Receiver, body: dict[str, Any], field: str) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])

    assert_problem(api.patch(f"{BASE}/{sub['id']}", json=body), 422, field)

    assert api.get(f"{BASE}/{sub['id']}").json()["version"] == 1


def test_unknown_subscriptions_and_deliveries_are_404(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    other = subscribe(api, receiver, [LEVEL])
    ping = api.post(f"{BASE}/{other['id']}/test").json()

    assert_problem(api.get(f"{BASE}/999999"), 404)
    assert_problem(api.get(f"{BASE}/999999/deliveries"), 404)
    assert_problem(api.patch(f"{BASE}/999999", json={"status": "paused"}), 404)
    assert_problem(api.delete(f"{BASE}/999999"), 404)
    assert_problem(api.post(f"{BASE}/{sub['id']}/deliveries/999999/redeliver"), 404)
    assert_problem(api.post(f"{BASE}/{sub['id']}/deliveries/{ping['id']}/redeliver"), 404)  # another subscription's
    assert_problem(api.get(f"{BASE}/0"), 422)
    assert_problem(api.get(f"{BASE}/{sub['id']}/deliveries", params={"status": "lost"}), 422, "status")
    assert_problem(api.get(f"{BASE}/{sub['id']}/deliveries", params={"cursor": "nonsense"}), 422, "cursor")


def test_deleting_stops_sending_and_queueing_but_keeps_the_log(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    sent = api.post(f"{BASE}/{sub['id']}/test").json()
    deliver()
    waiting = api.post(f"{BASE}/{sub['id']}/test").json()

    r = api.delete(f"{BASE}/{sub['id']}")
    assert r.status_code == 204, r.text
    assert api.delete(f"{BASE}/{sub['id']}").status_code == 204

    gone = api.get(f"{BASE}/{sub['id']}").json()
    assert (gone["status"], gone["event_types"], gone["paused_reason"], gone["deleted_at"]) == ("deleted", [LEVEL], None, "2026-11-20T09:00:00Z")
    assert api.get(BASE).json()["items"] == []
    assert [s["id"] for s in api.get(BASE, params={"status": "deleted"}).json()["items"]] == [sub["id"]]
    assert [(d["id"], d["status"]) for d in log(api, sub)] == [(waiting["id"], "failed"), (sent["id"], "succeeded")]
    assert log(api, sub)[0]["last_error"] == "the subscription was deleted"
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"])
    deliver()
    assert len(log(api, sub)) == 2 and len(receiver.requests) == 1
    assert_problem(api.patch(f"{BASE}/{sub['id']}", json={"status": "active"}), 409)
    assert_problem(api.post(f"{BASE}/{sub['id']}/deliveries/{sent['id']}/redeliver"), 409)
    assert_problem(api.post(f"{BASE}/{sub['id']}/test"), 409)


# --- the delivery log, redelivery, ping -------------------------------------------------------


def test_the_delivery_log_pages_newest_first_and_filters_by_status(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    pings = [api.post(f"{BASE}/{sub['id']}/test").json()["id"] for _ in range(5)]
    receiver.answers = [503]  # the oldest one fails once
    deliver()

    assert [d["id"] for d in log(api, sub, limit=2)] == pings[::-1]
    (pending,) = log(api, sub, status="pending")
    assert pending["id"] == pings[0]
    assert [(a["status_code"], a["response_excerpt"]) for a in pending["attempts"]] == [(503, "ok")]
    assert pending["last_status_code"] == 503 and pending["finished_at"] is None
    assert [d["id"] for d in log(api, sub, status="succeeded")] == pings[:0:-1]


def test_the_test_endpoint_sends_a_ping_to_that_subscription_only(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    other = subscribe(api, receiver, [LEVEL])
    receiver.secret = sub["secret"]

    r = api.post(f"{BASE}/{sub['id']}/test")
    deliver()

    assert r.status_code == 202, r.text
    assert r.json()["type"] == "webhook.ping" and r.json()["attempts"] == []
    (payload,) = receiver.applied.values()
    assert payload["type"] == "webhook.ping" and payload["data"] == {"subscription_id": sub["id"]}
    assert log(api, other) == []


def test_a_delivery_being_attempted_cannot_be_redelivered_meanwhile(api, receiver: Receiver, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    ping = api.post(f"{BASE}/{sub['id']}/test").json()
    arrived, release = threading.Event(), threading.Event()
    receiver.on_request = lambda: (arrived.set(), release.wait(10))
    worker = threading.Thread(target=deliver)
    worker.start()
    try:
        assert arrived.wait(10)
        refused = api.post(f"{BASE}/{sub['id']}/deliveries/{ping['id']}/redeliver")
        assert "leased to a worker for an attempt until" in assert_problem(refused, 409)["detail"]
        # Retry-After is when the lease ends (the clock stands still here): a worker killed
        # mid-attempt leaves the delivery leased that long, where "10" was said.
        assert refused.headers["Retry-After"] == str(int(LEASE.total_seconds()))
    finally:
        release.set()
        worker.join()

    assert [d["status"] for d in log(api, sub)] == ["succeeded"]


# --- who may ---------------------------------------------------------------------------------


ENDPOINTS = [
    ("GET", BASE),
    ("POST", BASE),
    ("GET", f"{BASE}/1"),
    ("PATCH", f"{BASE}/1"),
    ("DELETE", f"{BASE}/1"),
    ("GET", f"{BASE}/1/deliveries"),
    ("POST", f"{BASE}/1/deliveries/1/redeliver"),
    ("POST", f"{BASE}/1/test"),
    ("POST", f"{BASE}/1/rotate-secret"),
]


@pytest.mark.parametrize("scopes", [["read"], ["write"], ["read", "write"]])
def test_only_admin_keys_manage_webhooks(client_for, app, api, receiver: Receiver, scopes: list[str]) -> None:  # noqa: ANN001
    subscribe(api, receiver, [LEVEL])
    key = client_for(issue_key(app, "-".join(scopes), scopes))
    body = {"url": "https://example.com/hooks", "event_types": [LEVEL]}

    for method, path in ENDPOINTS:
        assert_problem(key.request(method, path, json=body if method in ("POST", "PATCH") else None), 403)
    assert len(api.get(BASE).json()["items"]) == 1


def test_webhook_endpoints_need_a_key(anonymous) -> None:  # noqa: ANN001
    for method, path in ENDPOINTS:
        assert_problem(anonymous.request(method, path), 401)


# --- in process ---------------------------------------------------------------------------------


@contextmanager
def serving(settings: Settings, clock: Clock, portal) -> Iterator[Api]:  # noqa: ANN001
    """An admin client of an app built with `settings`, inside its lifespan (as a server
    runs it: with its delivery thread if `deliver_in_process`)."""
    application = create_app(settings, clock=clock)
    ctx = application.state.context
    empty_tables(ctx.db.engine)
    initialize(ctx.db, settings, ctx.rulebook, now=clock())
    try:
        with portal.wrap_async_context_manager(application.router.lifespan_context(application)):
            client = Client(portal, application, {"Authorization": f"Bearer {ADMIN}"})
            try:
                yield Api(client)
            finally:
                client.close()
    finally:
        ctx.db.dispose()


def test_the_api_process_delivers_by_itself_by_default(migrated: str, db_url: str, clock: Clock, portal, receiver: Receiver) -> None:  # noqa: ANN001
    settings = Settings(database_url=db_url, bootstrap_key=ADMIN, webhook_poll_seconds=0.05, webhook_allow_loopback=True)
    assert settings.deliver_in_process
    with serving(settings, clock, portal) as served:
        subscribe(served, receiver, [LEVEL])
        owner_level_one_events(served, served.create_customer("仁济医院基建处", "owner")["id"])
        deadline = time.monotonic() + 10
        while not receiver.effects and time.monotonic() < deadline:
            time.sleep(0.05)
    assert receiver.effects == [LEVEL]
    assert not any(t.name.startswith("rapport-webhooks") for t in threading.enumerate())  # every sender stopped with the app


# --- where webhooks may go (app/services/egress.py) ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fe80::1]/hooks",
        "http://0.0.0.0:8080/",
        # The same addresses as the resolver also reads them: refused at once too.
        "http://2852039166/latest/meta-data/iam/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://0:8080/",
    ],
)
def test_a_url_naming_a_metadata_or_non_address_is_refused_and_nothing_changes(api, receiver: Receiver, url: str) -> None:  # noqa: ANN001
    refused = api.post(BASE, json={"url": url, "event_types": [LEVEL]})
    assert_problem(refused, 422)
    assert [e["field"] for e in refused.json()["errors"]] == ["url"]
    assert api.get(BASE).json()["items"] == []

    sub = subscribe(api, receiver, [LEVEL])
    changed = api.patch(f"{BASE}/{sub['id']}", json={"url": url})
    assert_problem(changed, 422)
    assert api.get(f"{BASE}/{sub['id']}").json()["url"] == receiver.url


def test_by_default_nothing_is_sent_to_this_machine(migrated: str, db_url: str, clock: Clock, portal, receiver: Receiver) -> None:  # noqa: ANN001
    settings = Settings(database_url=db_url, bootstrap_key=ADMIN, webhook_poll_seconds=0.05)
    assert not settings.webhook_allow_loopback
    with serving(settings, clock, portal) as served:
        # The address itself: refused when the subscription is made.
        refused = served.post(BASE, json={"url": receiver.url, "event_types": ["event.created"]})
        assert_problem(refused, 422)
        assert "loopback" in refused.json()["errors"][0]["reason"]
        # So is the address as the resolver also reads it, written as one number or in part.
        for host in ("127.1", "2130706433", "0x7f000001"):
            numeric = served.post(BASE, json={"url": receiver.url.replace("127.0.0.1", host), "event_types": ["event.created"]})
            assert_problem(numeric, 422, "url")
            assert "is 127.0.0.1, which is a loopback address" in numeric.json()["errors"][0]["reason"]
        # A name for it: refused by the worker, which logs why.
        by_name = receiver.url.replace("127.0.0.1", "localhost")
        sub = served.post(BASE, json={"url": by_name, "event_types": ["event.created"]}).json()
        served.event("visit", customer_id=served.create_customer()["id"], attributes={"reception": "welcoming"})
        deadline = time.monotonic() + 10
        while True:
            logged = served.get(f"{BASE}/{sub['id']}/deliveries").json()["items"]
            if logged and logged[0]["attempts"]:
                break
            assert time.monotonic() < deadline, "no attempt was made"
            time.sleep(0.05)
    error = logged[0]["attempts"][0]["error"]
    assert "refused: localhost resolves to" in error and "loopback" in error, error
    assert receiver.requests == []


# --- keeping the log bounded (app/services/delivery.py `prune`) ---------------------------------


def _log_rows(app) -> dict[str, int]:  # noqa: ANN001
    with app.state.context.db.session(write=False) as session:
        return {name: session.scalar(select(func.count()).select_from(model)) for name, model in (("messages", m.OutboxMessage), ("deliveries", m.Delivery), ("attempts", m.DeliveryAttempt))}


def _two_receivers_one_failing(api, receiver: Receiver, clock: Clock, deliver) -> Receiver:  # noqa: ANN001
    """Two subscriptions to event.created, two events: three deliveries succeed, and the
    first event's delivery to the second receiver fails once (pending, with one attempt).
    Returns the second receiver (the caller closes it)."""
    failing = Receiver(now=lambda: clock().timestamp())
    subscribe(api, receiver, ["event.created"])
    subscribe(api, failing, ["event.created"])
    failing.answers = [500]
    customer = api.create_customer()["id"]
    for _ in range(2):
        api.event("visit", customer_id=customer, attributes={"reception": "welcoming"})
    assert deliver() == 4
    return failing


def test_pruning_drops_what_ended_long_ago_and_keeps_what_is_pending(app, api, receiver: Receiver, clock: Clock, deliver) -> None:  # noqa: ANN001
    failing = _two_receivers_one_failing(api, receiver, clock, deliver)
    assert _log_rows(app) == {"messages": 2, "deliveries": 4, "attempts": 4}
    try:
        db = app.state.context.db
        assert deliveries.prune(db, before=clock()) == 0  # nothing ended before now
        clock.advance(days=31)

        assert deliveries.prune(db, before=clock() - timedelta(days=30)) == 3

        # The pending delivery stays with its attempt, and its message with it; the second
        # event's message, delivered to both, goes.
        assert _log_rows(app) == {"messages": 1, "deliveries": 1, "attempts": 1}
        (sub_ok, sub_failing) = api.get(BASE).json()["items"]
        assert log(api, sub_ok) == []
        (pending,) = log(api, sub_failing)
        assert pending["status"] == "pending" and len(pending["attempts"]) == 1
        # and it is still delivered
        assert deliver() == 1 and failing.times_seen(pending["msg_id"]) == 2
    finally:
        failing.close()


def test_pruning_in_small_transactions_drops_the_same(app, api, receiver: Receiver, clock: Clock, deliver) -> None:  # noqa: ANN001
    failing = _two_receivers_one_failing(api, receiver, clock, deliver)
    failing.close()
    clock.advance(days=2)
    assert deliveries.prune(app.state.context.db, before=clock(), batch=1) == 3
    assert _log_rows(app) == {"messages": 1, "deliveries": 1, "attempts": 1}


def test_the_worker_prunes_the_log(app, api, receiver: Receiver, clock: Clock, deliver, settings: Settings) -> None:  # noqa: ANN001
    subscribe(api, receiver, ["event.created"])
    api.event("visit", customer_id=api.create_customer()["id"], attributes={"reception": "welcoming"})
    assert deliver() == 1
    clock.advance(days=8)
    halt = deliveries.start_thread(app.state.context.db, settings.model_copy(update={"webhook_log_days": 7, "webhook_poll_seconds": 0.05}), clock=clock)
    try:
        deadline = time.monotonic() + 10
        while _log_rows(app)["deliveries"]:
            assert time.monotonic() < deadline, "the worker did not prune"
            time.sleep(0.05)
    finally:
        halt()
    assert _log_rows(app) == {"messages": 0, "deliveries": 0, "attempts": 0}


# --- rotating the signing secret ----------------------------------------------------------------


def _signed_with(receiver: Receiver, clock: Clock, request: int) -> Callable[[str], bool]:
    """Whether the receiver's `request`-th delivery verifies with a secret."""
    headers, body = receiver.requests[request]["headers"], receiver.requests[request]["body"]

    def verifies(secret: str) -> bool:
        try:
            verify(secret, headers, body, now=clock().timestamp())
        except ValueError:
            return False
        return True

    return verifies


def test_rotating_the_secret_signs_with_both_during_the_grace_then_with_the_new_one(api, receiver: Receiver, clock: Clock, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, ["event.created"])
    old = sub["secret"]
    customer = api.create_customer()["id"]

    r = api.post(f"{BASE}/{sub['id']}/rotate-secret")  # no body: the defaults

    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert parse(r.json()["previous_secret_until"]) == clock() + timedelta(hours=24)
    shown = api.get(f"{BASE}/{sub['id']}").json()
    assert "secret" not in shown and shown["version"] == 2 and shown["previous_secret_until"] == r.json()["previous_secret_until"]
    # The answer's ETag is the new version's: a PATCH with it is accepted.
    assert r.headers["ETag"] == api.get(f"{BASE}/{sub['id']}").headers["ETag"]
    assert api.patch(f"{BASE}/{sub['id']}", json={"description": "rotated"}, headers={"If-Match": r.headers["ETag"]}).status_code == 200

    # During the grace period: two signatures, one per secret; a receiver with either verifies.
    receiver.secret = new
    api.event("visit", customer_id=customer, attributes={"reception": "welcoming"})
    assert deliver() == 1
    assert len(receiver.requests[0]["headers"]["webhook-signature"].split()) == 2
    verifies = _signed_with(receiver, clock, 0)
    assert verifies(old) and verifies(new)

    # After it: the new secret's signature only.
    clock.advance(hours=24, seconds=1)
    api.event("visit", customer_id=customer, attributes={"reception": "neutral"})
    assert deliver() == 1
    assert len(receiver.requests[1]["headers"]["webhook-signature"].split()) == 1
    verifies = _signed_with(receiver, clock, 1)
    assert verifies(new) and not verifies(old)


def test_a_rotation_with_no_grace_drops_the_old_secret_at_once(api, receiver: Receiver, clock: Clock, deliver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, ["event.created"])
    old = sub["secret"]
    first = api.post(f"{BASE}/{sub['id']}/rotate-secret", json={"grace_hours": 24}).json()["secret"]

    r = api.post(f"{BASE}/{sub['id']}/rotate-secret", json={"grace_hours": 0})

    assert r.status_code == 200 and r.json()["previous_secret_until"] is None
    receiver.secret = r.json()["secret"]
    api.event("visit", customer_id=api.create_customer()["id"], attributes={"reception": "welcoming"})
    assert deliver() == 1
    verifies = _signed_with(receiver, clock, 0)
    assert verifies(r.json()["secret"]) and not verifies(first) and not verifies(old)


def test_rotating_checks_its_input_and_the_subscription(api, receiver: Receiver) -> None:  # noqa: ANN001
    sub = subscribe(api, receiver, [LEVEL])
    for body in ({"grace_hours": 169}, {"grace_hours": -1}, {"grace": 2}):
        assert_problem(api.post(f"{BASE}/{sub['id']}/rotate-secret", json=body), 422)
    assert_problem(api.post(f"{BASE}/999/rotate-secret", json={}), 404)
    assert api.get(f"{BASE}/{sub['id']}").json()["version"] == 1  # nothing changed
    assert api.delete(f"{BASE}/{sub['id']}").status_code == 204
    assert_problem(api.post(f"{BASE}/{sub['id']}/rotate-secret", json={}), 409)


def test_rotating_and_deleting_take_if_match(api, receiver: Receiver) -> None:  # noqa: ANN001
    """Two admins working from one read: the second's rotation or deletion is a 412, as its
    PATCH would be. An If-Match was ignored there, and a stale read deleted a subscription."""
    sub = subscribe(api, receiver, [LEVEL])
    read = api.get(f"{BASE}/{sub['id']}").headers["etag"]
    rotated = api.post(f"{BASE}/{sub['id']}/rotate-secret", headers={"If-Match": read})
    assert rotated.status_code == 200, rotated.text

    assert_problem(api.post(f"{BASE}/{sub['id']}/rotate-secret", headers={"If-Match": read}), 412)
    assert_problem(api.delete(f"{BASE}/{sub['id']}", headers={"If-Match": read}), 412)
    assert_problem(api.delete(f"{BASE}/{sub['id']}", headers={"If-Match": "garbage"}), 422, "If-Match")
    now = api.get(f"{BASE}/{sub['id']}")
    assert (now.json()["status"], now.headers["etag"]) == ("active", rotated.headers["etag"])

    assert api.delete(f"{BASE}/{sub['id']}", headers={"If-Match": rotated.headers["etag"]}).status_code == 204
    # Deleting again, with the tag read before the first deletion: done already, so 204.
    assert api.delete(f"{BASE}/{sub['id']}", headers={"If-Match": rotated.headers["etag"]}).status_code == 204
    assert api.get(f"{BASE}/{sub['id']}").json()["status"] == "deleted"
    # A subscription that does not exist is a 404, whichever subscription the If-Match names.
    assert_problem(api.delete(f"{BASE}/999", headers={"If-Match": rotated.headers["etag"]}), 404)


# --- sending several at once ----------------------------------------------------------------------


def test_a_slow_receiver_does_not_hold_up_the_others(app, api, receiver: Receiver, clock: Clock, settings: Settings) -> None:  # noqa: ANN001
    slow = Receiver(now=lambda: clock().timestamp())
    slow.delay = 3.0  # answers after 3 s (the timeout is 10 s)
    try:
        subscribe(api, slow, ["event.created"])  # its delivery is the older one: claimed first
        subscribe(api, receiver, ["event.created"])
        api.event("visit", customer_id=api.create_customer()["id"], attributes={"reception": "welcoming"})
        started = time.monotonic()
        halt = deliveries.start_thread(app.state.context.db, settings.model_copy(update={"webhook_concurrency": 2, "webhook_poll_seconds": 0.05}), clock=clock)
        try:
            while not receiver.effects:
                assert time.monotonic() - started < 10, "the fast receiver got nothing"
                time.sleep(0.02)
            fast_after = time.monotonic() - started
            while not slow.effects:
                assert time.monotonic() - started < 10, "the slow receiver got nothing"
                time.sleep(0.02)
        finally:
            halt()
        assert fast_after < 2.0, fast_after  # delivered while the slow receiver was still answering
    finally:
        slow.close()


def test_a_subscription_patch_with_if_match_applies_only_to_the_version_read(api, receiver: Receiver) -> None:  # noqa: ANN001
    created = api.post(BASE, json={"url": receiver.url, "event_types": ["customer.level_changed"], "description": "CRM"})
    assert created.status_code == 201, created.text
    other = subscribe(api, receiver, ["project.heat_changed"])
    path = f"{BASE}/{created.json()['id']}"
    assert_if_match_guards_patch(api, path, created, {"description": "CRM (staging)"}, other_path=f"{BASE}/{other['id']}")
