"""A write that waits on a record another transaction holds: how long it waits, what it
answers, and that the rest of the process keeps answering meanwhile (a hunt held one
customer's row from psql, and two waiting writes froze their process, /readyz included)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from anyio import to_thread

from app.settings import Settings
from tests.api.expectations import assert_problem, row_counts
from tests.api.scenarios import at
from tests.conftest import held, is_postgres


@pytest.fixture
def settings(db_url: str) -> Settings:
    # One request thread: a single waiting write holds all of them.
    return Settings(database_url=db_url, bootstrap_key="test-admin-secret", lock_timeout_seconds=2, worker_threads=1, sqlite_busy_timeout_ms=2000)


def visit(customer: int) -> dict[str, Any]:
    return {"type": "visit", "customer_id": customer, "occurred_at": at(1), "attributes": {"reception": "neutral"}}


@pytest.fixture
def one_request_thread(portal) -> Iterator[None]:  # noqa: ANN001
    """What `rapport serve` does with `worker_threads` (app/api/threads.py, `serving`), in
    the tests' event loop, which runs no lifespan."""

    async def set_tokens(n: float) -> float:
        limiter = to_thread.current_default_thread_limiter()
        before, limiter.total_tokens = limiter.total_tokens, n
        return before

    before = portal.call(set_tokens, 1)
    yield
    portal.call(set_tokens, before)


def test_readiness_answers_while_every_request_thread_waits_on_a_held_record(api, anonymous, db_url: str, one_request_thread: None) -> None:
    customer = api.create_customer("上海建工安装", "installer")["id"]
    with held(db_url, customer):
        waiting = api.send_soon("POST", "/v1/events", json=visit(customer))
        time.sleep(0.2)  # the write has taken the one request thread and waits
        started = time.monotonic()
        ready = anonymous.get("/readyz")
        answered_in = time.monotonic() - started
        late = waiting.result(30)

    assert ready.status_code == 200, ready.text
    assert answered_in < 0.5, answered_in
    assert late.status_code == 503, late.text


READS = (
    "/v1/customers/{other}",
    "/v1/customers/by-ref/C-2",
    "/v1/customers?kind=owner",
    "/v1/customers/{other}/history",
    "/v1/projects/{project}",
    "/v1/projects?limit=5",
    "/v1/projects/{project}/history",
    "/v1/events?limit=5",
)


@pytest.mark.parametrize("path", READS)
def test_reads_answer_while_every_request_thread_waits_on_a_held_record(api, db_url: str, one_request_thread: None, path: str) -> None:
    """Reads have threads of their own: a rep's app reads on while writes wait for a held
    customer (a write can wait up to the lock timeout, and a few held every request thread)."""
    customer = api.create_customer("上海建工安装", "installer")["id"]
    other = api.create_customer("华东设计院", "owner", external_ref="C-2")["id"]
    project = api.create_project(other)["id"]
    with held(db_url, customer):
        waiting = api.send_soon("POST", "/v1/events", json=visit(customer))
        time.sleep(0.2)  # the write has taken the one request thread and waits
        started = time.monotonic()
        r = api.get(path.format(other=other, project=project))
        answered_in = time.monotonic() - started
        late = waiting.result(30)

    assert r.status_code == 200, r.text
    assert answered_in < 0.5, answered_in
    assert late.status_code == 503, late.text


def test_a_write_that_waits_longer_than_the_lock_timeout_is_a_503_that_stores_nothing(api, app, db_url: str) -> None:
    if not is_postgres(db_url):
        pytest.skip("SQLite's writers wait RAPPORT_SQLITE_BUSY_TIMEOUT_MS for its one write lock, then answer 503 alike")
    customer = api.create_customer("上海建工安装", "installer")["id"]
    before = row_counts(app)

    with held(db_url, customer):
        started = time.monotonic()
        r = api.post("/v1/events", json=visit(customer))
        waited = time.monotonic() - started

    body = assert_problem(r, 503)
    assert "another write holds a record this request needs" in body["detail"]
    assert r.headers["Retry-After"] == "5"
    assert 1.9 < waited < 6, waited  # the lock timeout, once: not retried
    assert row_counts(app) == before
    assert api.post("/v1/events", json=visit(customer)).status_code == 201
