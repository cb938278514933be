"""A write PostgreSQL rolls back and asks to retry (deadlock, serialization failure) is run
again, counts once, and if it keeps failing the caller gets a 503 to retry, not a 500."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from app.services import events as svc
from tests.test_retry import FakeDriverError

AT = "2026-11-19T10:00:00+08:00"


def collide(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make record_event store its event, then fail as a deadlock would, `times` times."""
    real = svc.record_event
    runs: list[int] = []

    def record_then_deadlock(session, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        recorded = real(session, *args, **kwargs)
        session.flush()
        runs.append(recorded.event.id)
        if len(runs) <= times:
            raise OperationalError("UPDATE customers …", {}, FakeDriverError("40P01"))
        return recorded

    monkeypatch.setattr(svc, "record_event", record_then_deadlock)
    return runs


def test_a_write_rolled_back_by_a_deadlock_is_run_again_and_counts_once(api, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    customer = api.create_customer()
    runs = collide(monkeypatch, times=1)
    r = api.post("/v1/events", json={"type": "visit", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"reception": "neutral"}},
                 headers={"Idempotency-Key": "visit-1"})
    assert r.status_code == 201, r.text
    assert len(runs) == 2
    events = api.get("/v1/events", params={"customer_id": customer["id"]}).json()["items"]
    assert [e["id"] for e in events] == [r.json()["id"]]
    again = api.post("/v1/events", json={"type": "visit", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"reception": "neutral"}},
                     headers={"Idempotency-Key": "visit-1"})
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["id"] == r.json()["id"]


def test_a_write_that_keeps_colliding_answers_503_with_retry_after_and_stores_nothing(api, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    customer = api.create_customer()
    runs = collide(monkeypatch, times=3)
    body = {"type": "visit", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"reception": "neutral"}, "external_id": "v-9"}
    r = api.post("/v1/events", json=body, headers={"Idempotency-Key": "visit-9"})
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json" and r.headers["Retry-After"] == "1"
    assert r.json()["type"] == "urn:rapport:problem:unavailable" and "nothing was stored" in r.json()["detail"]
    assert len(runs) == 3
    assert api.get("/v1/events", params={"customer_id": customer["id"]}).json()["items"] == []
    monkeypatch.undo()
    # The key was not spent on the failure: the client's retry does the work.
    retried = api.post("/v1/events", json=body, headers={"Idempotency-Key": "visit-9"})
    assert retried.status_code == 201, retried.text
