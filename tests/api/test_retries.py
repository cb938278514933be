"""A write PostgreSQL rolls back and asks to retry (deadlock, serialization failure) is run
again, counts once, and if it keeps failing the caller gets a 503 to retry, not a 500."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.services import events as svc
from tests.conftest import is_postgres
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


def _end_the_pooled_connection(app, migrated: str) -> None:  # noqa: ANN001
    """Leave the app's pool holding one connection, which the server then ends (as a
    restart or an idle timeout would)."""
    engine = app.state.context.db.engine
    engine.dispose()  # the pool now holds exactly the connection opened below
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engine.connect() as conn:  # the same pooled connection, still alive
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    admin = create_engine(migrated, poolclass=NullPool)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    admin.dispose()


def test_a_connection_the_database_dropped_in_the_pool_costs_no_request(app, api, migrated: str) -> None:  # noqa: ANN001
    """Without pool_pre_ping, a pooled connection the server has closed (a restart, an idle
    timeout) is found when it is checked out, and a fresh one serves the request."""
    if not is_postgres(migrated):
        pytest.skip("SQLite has no server to drop a connection")
    customer = api.create_customer()
    _end_the_pooled_connection(app, migrated)

    r = api.post("/v1/events", json={"type": "visit", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"reception": "welcoming"}})
    assert r.status_code == 201, r.text
    assert api.get(f"/v1/customers/{customer['id']}").status_code == 200


def test_readiness_is_not_fooled_by_a_connection_the_database_dropped_in_the_pool(app, api, migrated: str) -> None:  # noqa: ANN001
    # /readyz sends no key, so no key check meets the dead connection first: the pool
    # itself finds it, and the database, which is up, is reported ready.
    if not is_postgres(migrated):
        pytest.skip("SQLite has no server to drop a connection")
    _end_the_pooled_connection(app, migrated)

    assert api.get("/readyz").status_code == 200
