"""While the server runs, requests run their database work on `worker_threads` threads at
most, batches on `batch_threads` threads of their own, and reads on threads of their own
(app/api/threads.py)."""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest
from anyio import to_thread

from app.api import events as events_api
from app.main import create_app
from app.services import events as event_svc
from app.settings import Settings
from tests.api.conftest import ADMIN
from tests.conftest import is_postgres

AT = "2026-11-19T10:00:00+08:00"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, bootstrap_key=ADMIN, worker_threads=1, batch_threads=1)


def _held(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> tuple[threading.Event, threading.Event]:
    """Make `module.name` wait, once entered, until released: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(module, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(10), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, held)
    return entered, release


def _visit(customer_id: int, external_id: str) -> dict[str, Any]:
    return {"type": "visit", "customer_id": customer_id, "occurred_at": AT, "attributes": {"reception": "welcoming"}, "source": "erp", "external_id": external_id}


def test_a_batch_in_progress_leaves_single_requests_their_thread(app, api, client, portal, monkeypatch) -> None:  # noqa: ANN001
    customer = api.create_customer()["id"]
    # Held while it reads its items, before its transaction: on SQLite a write transaction
    # would hold the process's one writer's turn, which a single event must wait for.
    entered, release = _held(monkeypatch, events_api, "json_items")
    with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        batch = client.send_soon("POST", "/v1/events/batch", json=[_visit(customer, "B1")])
        try:
            assert entered.wait(5)
            # The process's one worker thread is free while the batch holds its own.
            single = client.send_soon("POST", "/v1/events", json=_visit(customer, "S1"))
            answer = single.result(timeout=5)
            assert answer.status_code == 201, answer.text
        finally:
            release.set()
        assert batch.result(timeout=10).status_code == 200
    assert [e["external_id"] for e in api.get("/v1/events").json()["items"]] == ["S1", "B1"]


def test_requests_beyond_the_worker_threads_wait_their_turn(app, api, client, portal, monkeypatch) -> None:  # noqa: ANN001
    customer = api.create_customer()["id"]
    entered, release = _held(monkeypatch, event_svc, "record_event")
    with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        assert portal.call(_tokens) == 1
        first = client.send_soon("POST", "/v1/events", json=_visit(customer, "S1"))
        try:
            assert entered.wait(5)
            second = client.send_soon("PATCH", f"/v1/customers/{customer}", json={"region": "华东"})
            with pytest.raises(FutureTimeout):
                second.result(timeout=0.3)  # the one thread is taken
            # Reads have threads of their own.
            assert client.send_soon("GET", f"/v1/customers/{customer}/history").result(timeout=5).status_code == 200
        finally:
            release.set()
        assert first.result(timeout=10).status_code == 201
        assert second.result(timeout=10).status_code == 200
    assert portal.call(_tokens) == 40  # anyio's default again once the server stops


def test_a_read_by_key_waits_for_no_worker_thread(app, api, client, portal, monkeypatch) -> None:  # noqa: ANN001
    """A customer, project or event read by its id or code runs on the event loop on SQLite
    (`indexed_read`) and on a read thread on PostgreSQL (`run_read`): writes holding every
    worker thread do not hold it up."""
    customer = api.create_customer(kind="owner", external_ref="C-LOOP")["id"]
    project = api.create_project(customer, external_ref="P-LOOP")["id"]
    event = client.post("/v1/events", json=_visit(customer, "S0")).json()["id"]
    before = client.get(f"/v1/customers/{customer}").json()
    entered, release = _held(monkeypatch, event_svc, "record_event")
    reads = [f"/v1/customers/{customer}", "/v1/customers/by-ref/C-LOOP", f"/v1/projects/{project}", "/v1/projects/by-ref/P-LOOP", f"/v1/events/{event}"]
    with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        first = client.send_soon("POST", "/v1/events", json=_visit(customer, "S1"))
        try:
            assert entered.wait(5)
            pending = [client.send_soon("GET", path) for path in reads]
            answers = [read.result(timeout=5) for read in pending]
            assert [a.status_code for a in answers] == [200] * 5
            # Read while the event is being recorded: the customer as it was before it.
            assert answers[0].json() == before
        finally:
            release.set()
        assert first.result(timeout=10).status_code == 201
        assert [read.result(timeout=10).status_code for read in pending] == [200] * 5


def test_liveness_waits_for_no_worker_thread(app, api, client, portal, monkeypatch) -> None:  # noqa: ANN001
    """`/healthz` answers while every worker thread is taken, on either engine: a busy
    process is alive, and an orchestrator must not restart it for being busy."""
    customer = api.create_customer()["id"]
    entered, release = _held(monkeypatch, event_svc, "record_event")
    with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        first = client.send_soon("POST", "/v1/events", json=_visit(customer, "S1"))
        try:
            assert entered.wait(5)
            health = client.send_soon("GET", "/healthz").result(timeout=5)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
        finally:
            release.set()
        assert first.result(timeout=10).status_code == 201


@pytest.mark.parametrize(
    ("url", "threads"),
    [("sqlite:///rapport.db", 4), ("sqlite://", 4), ("postgresql+psycopg://postgres@127.0.0.1:5432/rapport", 2), ("postgresql://db.internal/rapport", 2)],
)
def test_worker_threads_default_to_what_suits_the_engine(url: str, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPPORT_WORKER_THREADS", raising=False)
    assert Settings(database_url=url).request_threads() == threads
    # Set, it is what it says on either engine.
    assert Settings(database_url=url, worker_threads=7).request_threads() == 7


def test_a_server_runs_the_engines_default_when_worker_threads_is_not_set(migrated: str, db_url: str, clock: Any, portal: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPPORT_WORKER_THREADS", raising=False)
    served = create_app(Settings(database_url=db_url, bootstrap_key=ADMIN), clock=clock)
    try:
        with portal.wrap_async_context_manager(served.router.lifespan_context(served)):
            assert portal.call(_tokens) == (2 if is_postgres(db_url) else 4)
    finally:
        served.state.context.db.dispose()


def _tokens() -> float:
    return to_thread.current_default_thread_limiter().total_tokens
