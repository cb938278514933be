"""Real server processes against one database: many writers across processes, the database
going away and coming back, kill -9 in the middle of a batch, a graceful SIGTERM, and a key
revoked by the CLI while every process remembers it."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from app.db import models as m
from app.db.engine import Database
from tests.conftest import empty_tables, held, is_postgres, wait_until
from tests.system.processes import Server, Servers, TcpProxy, cli, free_port
from tests.test_concurrency import LEVEL_ONE

PROJECT_MOVES = [("tender_brand", {"status": "listed"}), ("tender_brand", {"status": "sole"}), ("tender_brand", {"status": "absent"}),
                 ("owner_stance", {"stance": "recommends"}), ("owner_stance", {"stance": "refuses"}), ("spec_agreed", {})]
PG_ONLY = "SQLite is one file with one writer inside one machine: several server processes and a database that goes away over the network are PostgreSQL's set-up"


@pytest.fixture
def db(database: Database) -> Database:
    empty_tables(database.engine)
    return database


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def ago(**delta: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat()


def world(client: httpx.Client) -> tuple[int, int, int]:
    """An owner, an installer bidding on the owner's project: (owner, installer, project)."""
    owner = client.post("/v1/customers", json={"name": "市第一医院", "kind": "owner"}).json()["id"]
    installer = client.post("/v1/customers", json={"name": "上海建工安装", "kind": "installer"}).json()["id"]
    project = client.post("/v1/projects", json={"name": "新门诊楼暖通", "owner_id": owner}).json()["id"]
    for type_, attrs, customer in (("bid_joined", {}, installer), ("stage_changed", {"stage": "tender_drafting"}, None)):
        r = client.post("/v1/events", json={"type": type_, "customer_id": customer, "project_id": project, "occurred_at": ago(days=30), "attributes": attrs})
        assert r.status_code == 201, r.text
    return owner, installer, project


def assert_chain(client: httpx.Client, path: str) -> None:
    rows, cursor = [], None
    while True:
        page = client.get(path, params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        rows += page["items"]
        if not (cursor := page.get("next_cursor")):
            break
    assert rows, f"{path} has no history"
    for before, after in zip(rows, rows[1:]):
        assert after["old"] == before["new"], f"{path}: {before} then {after}"


def test_many_writers_across_processes_keep_every_grade_equal_to_a_replay(migrated: str, db: Database, servers: Servers) -> None:
    if not is_postgres(migrated):
        pytest.skip(PG_ONLY)
    pool = servers.start(migrated, workers=2)
    single = servers.start(migrated)
    with pool.client() as c:
        _, installer, project = world(c)
    created: list[int] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + 6

    def hammer(seat: int) -> None:
        rng = random.Random(seat)
        clients = [pool.client(), single.client()]
        try:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                client = clients[n % 2]
                if created and rng.random() < 0.3:
                    with lock:
                        victim = rng.choice(created)
                    r = client.post(f"/v1/events/{victim}/retract", json={"reason": "load test"})
                else:
                    type_, attrs = rng.choice(LEVEL_ONE + PROJECT_MOVES)
                    subject = {"customer_id": installer} if (type_, attrs) in LEVEL_ONE else {"project_id": project}
                    r = client.post("/v1/events", json={"type": type_, "occurred_at": ago(hours=rng.randint(1, 500)), "attributes": attrs, **subject})
                    if r.status_code == 201:
                        with lock:
                            created.append(r.json()["id"])
                with lock:
                    outcomes[f"{r.status_code} {r.text[:200]}" if r.status_code >= 300 else str(r.status_code)] += 1
        finally:
            for client in clients:
                client.close()

    with ThreadPoolExecutor(16) as threads:
        list(threads.map(hammer, range(16)))

    assert all(not key.startswith("5") and int(key[:3]) < 300 for key in outcomes), outcomes
    assert outcomes["201"] > 100 and outcomes["200"] > 20, outcomes
    verified = cli(migrated, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 disagreement(s)" in verified.stdout
    with single.client() as c:  # (verify checks every chain; this one surely moved many times)
        assert_chain(c, f"/v1/customers/{installer}/history")


def test_the_database_going_away_answers_503_stores_nothing_and_the_server_recovers(migrated: str, db: Database, servers: Servers) -> None:
    if not is_postgres(migrated):
        pytest.skip(PG_ONLY)
    target = make_url(migrated)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    try:
        # Four worker threads (PostgreSQL's default is 2), so that all four writes below are in
        # their transactions at once when the database goes away. Keys not remembered: every
        # request reads its key, as all do while the key listener has lost the database.
        server = servers.start(target.set(port=proxy.port).render_as_string(hide_password=False), worker_threads=4, remember_keys=False)
        with server.client() as c:
            customer = c.post("/v1/customers", json={"name": "上海建工安装", "kind": "installer"}).json()["id"]
        visits = [{"type": "visit", "customer_id": customer, "occurred_at": ago(days=1), "attributes": {"reception": "welcoming"}, "source": "erp", "external_id": f"v{i}"}
                  for i in range(4)]
        # Hold the customer's row, so the four writes are surely in flight (waiting for it,
        # inside their transactions) when the database goes away.
        with db.engine.connect() as holder:
            holder.execute(text("SELECT id FROM customers WHERE id = :id FOR UPDATE"), {"id": customer})
            with ThreadPoolExecutor(4) as threads:
                posting = [threads.submit(_post, server, "/v1/events", visit) for visit in visits]
                _wait_for_lock_waiters(db, 4)
                proxy.cut()
                answers = [f.result() for f in posting]
            holder.rollback()
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json" and "Retry-After" in r.headers
            assert r.json()["type"] == "urn:rapport:problem:unavailable"
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 503
        # Requests sent while it is away: their key cannot be read either, and that too is a
        # 503 to retry, not a 500 (the key read's own connection failed outside SQLAlchemy).
        with server.client() as c:
            for r in (c.get(f"/v1/customers/{customer}"), c.post("/v1/events", json=visits[0])):
                assert r.status_code == 503, r.text
                assert r.json()["type"] == "urn:rapport:problem:unavailable" and "Retry-After" in r.headers
        with db.session(write=False) as s:
            assert s.scalar(select(func.count()).select_from(m.Event).where(m.Event.customer_id == customer)) == 0

        proxy.restore()
        deadline = time.monotonic() + 15
        while httpx.get(f"{server.base_url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after the database came back"
            time.sleep(0.2)
        assert server.proc.poll() is None, "the same process serves on"
        with server.client() as c:
            for visit in visits:  # none was stored: each is created now
                r = c.post("/v1/events", json=visit)
                assert r.status_code == 201, r.text
            # The reads too, on connections of their own (the event loop's), opened anew.
            r = c.get(f"/v1/customers/{customer}")
            assert r.status_code == 200 and r.json()["id"] == customer, r.text
        assert cli(migrated, "verify").returncode == 0
    finally:
        proxy.cut()


def _post(server: Server, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    with server.client() as c:
        return c.post(path, json=body, headers=headers)


def _wait_for_lock_waiters(db: Database, count: int) -> None:
    deadline = time.monotonic() + 15
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
    while True:
        with db.engine.connect() as conn:  # a fresh transaction each time: pg_stat_activity is a per-transaction snapshot
            if conn.execute(query).scalar() >= count:
                return
        assert time.monotonic() < deadline, "the writes did not reach the locked row"
        time.sleep(0.05)


def batch(customers: list[int], source: str, size: int = 5000) -> list[dict[str, Any]]:
    return [
        {"type": "visit", "customer_id": customers[i % len(customers)], "occurred_at": ago(days=1 + i % 60), "attributes": {"reception": "welcoming"}, "source": source, "external_id": f"{source}-{i}"}
        for i in range(size)
    ]


def send_in_background(server: Server, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[threading.Thread, list[httpx.Response | Exception]]:
    answer: list[httpx.Response | Exception] = []

    def send() -> None:
        try:
            answer.append(_post(server, path, body, headers))
        except httpx.HTTPError as exc:
            answer.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, answer


def cpu_cost(server: Server, path: str, items: list[dict[str, Any]]) -> float:
    """The CPU seconds the server spends answering `items` at `path`: to learn how far into
    a batch of the same shape a signal lands, whatever the code's speed. Sent twice (the
    second time under other external_ids), and the lower figure counts: a reading of the
    server's CPU can take in work that was not the batch's, and a cost read too high put
    "halfway" after the end (in one CI run on PostgreSQL the batch was answered first)."""
    costs = []
    for send in ("first", "second"):
        start = server.cpu_seconds()
        assert _post(server, path, [{**item, "external_id": f"{item['external_id']}-{send}"} for item in items]).status_code == 200
        costs.append(server.cpu_seconds() - start)
    return min(costs)


def wait_until_working(server: Server, cpu_seconds: float, start: float) -> None:
    """Until the server has spent `cpu_seconds` of CPU since it had spent `start` (read
    before the request was sent: read after, it missed whatever the server did before this
    thread ran again, and on a busy machine the batch was once answered first)."""
    deadline = time.monotonic() + 30
    while server.cpu_seconds() - start < cpu_seconds:
        assert time.monotonic() < deadline and server.proc.poll() is None, server.output()
        time.sleep(0.005)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "non-atomic"])
def test_a_server_killed_during_a_batch_leaves_it_whole_or_absent_and_a_resend_completes_it(migrated: str, db: Database, servers: Servers, atomic: bool) -> None:
    server = servers.start(migrated)
    with server.client() as c:
        customers = [c.post("/v1/customers", json={"name": f"安装公司 {i}", "kind": "installer"}).json()["id"] for i in range(20)]
    items = batch(customers, "erp")
    path = f"/v1/events/batch?atomic={str(atomic).lower()}"
    cost = cpu_cost(server, path, batch(customers, "calibration"))
    start = server.cpu_seconds()
    thread, answer = send_in_background(server, path, items)
    wait_until_working(server, cost / 2, start)  # halfway: a later log makes this batch no cheaper
    assert not answer, "the batch was answered before the kill"
    server.kill()
    thread.join(timeout=30)
    assert answer and isinstance(answer[0], httpx.HTTPError), "the client saw no answer"

    restarted = servers.start(migrated)
    with db.session(write=False) as s:
        stored = s.scalar(select(func.count()).select_from(m.Event).where(m.Event.source == "erp"))
    if atomic:
        assert stored in (0, len(items))
    with restarted.client() as c:
        r = c.post(path, json=items)
    assert r.status_code == 200, r.text
    # Whether the kill landed before, during or after the commit: what was stored is reported
    # as duplicate, the rest is created, and the end state is the batch sent once.
    assert (r.json()["duplicate"], r.json()["created"]) == (stored, len(items) - stored)
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(m.Event).where(m.Event.source == "erp")) == len(items)
    verified = cli(migrated, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_lets_the_request_in_flight_finish_and_keeps_undelivered_webhooks(migrated: str, db: Database, servers: Servers) -> None:
    server = servers.start(migrated, deliver_in_process="true", webhook_poll_seconds=0.1, webhook_timeout_seconds=2, webhook_allow_loopback="true")
    with server.client() as c:
        customers = [c.post("/v1/customers", json={"name": f"安装公司 {i}", "kind": "installer"}).json()["id"] for i in range(5)]
        cost = cpu_cost(server, "/v1/events/batch", batch(customers, "calibration", size=4000))  # before the subscription: no messages
        receiver_down = f"http://127.0.0.1:{free_port()}/hooks"
        assert c.post("/v1/webhooks/subscriptions", json={"url": receiver_down, "event_types": ["event.created"]}).status_code == 201
    items = batch(customers, "erp", size=4000)
    start = server.cpu_seconds()
    thread, answer = send_in_background(server, "/v1/events/batch", items)
    wait_until_working(server, cost / 2, start)
    assert not answer, "the batch was answered before the signal"
    stopped_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert server.proc.wait(timeout=25) == 0, server.output()
    assert time.monotonic() - stopped_at < 25
    response = answer[0]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json()["created"] == len(items)
    with db.session(write=False) as s:
        deliveries = Counter(s.scalars(select(m.Delivery.status)))
        leased = s.scalar(select(func.count()).select_from(m.Delivery).where(m.Delivery.locked_until.is_not(None)))
    # Every event's message waits in the outbox for the next process (or `rapport worker`),
    # none held by a lease of the process that stopped.
    assert deliveries == {"pending": len(items)}
    assert leased == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_the_shutdown_cuts_short_is_told_so_and_still_stored(migrated: str, db: Database, servers: Servers, workers: int) -> None:
    """Two hunts' finds: when the shutdown's time ran out, uvicorn answered the request still
    running a bare 500 in text/plain, and its write committed afterwards all the same; and
    with `--workers 2` the worker process exited before the write ended, so it was lost and
    its Idempotency-Key answered 409 for a minute. The server now says 503 shutting-down,
    waits for the write, and the retry gets the stored answer."""
    if workers > 1 and not is_postgres(migrated):
        pytest.skip("SQLite serves from one process")
    server = servers.start(migrated, workers=workers, shutdown_timeout=1)
    with server.client() as c:
        installer = c.post("/v1/customers", json={"name": "上海建工安装", "kind": "installer"}).json()["id"]
    event = {"type": "company_introduced", "customer_id": installer, "occurred_at": ago(days=1)}
    key = {"Idempotency-Key": f"cut-short-{workers}"}

    with held(migrated, installer):
        thread, answer = send_in_background(server, "/v1/events", event, key)
        time.sleep(1)  # the request waits for the customer
        server.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=20)
        time.sleep(2)  # the shutdown's time is up, and the write still waits
    assert server.proc.wait(timeout=30) == 0, server.output()

    (response,) = answer
    assert isinstance(response, httpx.Response) and response.status_code == 503, response
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "urn:rapport:problem:shutting-down" and response.headers["retry-after"] == "5"
    log = server.log.read_text(errors="replace")
    assert "POST /v1/events: the shutdown's time ran out before it finished; answered 503 shutting-down" in log
    assert "Exception in ASGI application" not in log  # no error and traceback for an answered request
    retry = _post(servers.start(migrated), "/v1/events", event, key)
    assert (retry.status_code, retry.headers.get("idempotent-replayed")) == (201, "true"), retry.text
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(m.Event).where(m.Event.customer_id == installer)) == 1


def test_a_key_revoked_by_the_cli_is_refused_by_every_serving_process(migrated: str, db: Database, servers: Servers) -> None:
    """Each process remembers the keys it authenticated (app/services/known_keys.py); the
    database tells all of them, and their uvicorn workers, when a key is revoked elsewhere.
    SQLite serves from one process (one writer), which reads the keys' stamp. On PostgreSQL
    the notice reaches a process a moment after the CLI's commit (up to tens of ms on an
    overloaded machine: docs/performance.md, "Revocation on PostgreSQL"), so there each
    process gets until its first 401 (within 5 s), then must refuse every request."""
    created = cli(migrated, "keys", "create", "--name", "phone", "--scopes", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    if is_postgres(migrated):
        processes = [servers.start(migrated, workers=2), servers.start(migrated)]
        listening = "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN rapport_api_keys'"
        deadline = time.monotonic() + 15
        with db.engine.connect() as conn:
            while conn.execute(text(listening)).scalar_one() < 3:  # one per worker process
                assert time.monotonic() < deadline, "not every process listens for key changes"
                time.sleep(0.1)
    else:
        processes = [servers.start(migrated)]
    phone = {"Authorization": f"Bearer {secret}"}
    for server in processes:  # enough requests that both workers of the first one see the key
        assert all(httpx.get(f"{server.base_url}/v1/customers", headers=phone, timeout=10).status_code == 200 for _ in range(20))

    revoked = cli(migrated, "keys", "revoke", "--name", "phone")
    assert revoked.returncode == 0, revoked.stderr

    for server in processes:
        if is_postgres(migrated):
            wait_until(lambda: httpx.get(f"{server.base_url}/v1/customers", headers=phone, timeout=10).status_code == 401)
        answers = [httpx.get(f"{server.base_url}/v1/customers", headers=phone, timeout=10) for _ in range(20)]
        assert [r.status_code for r in answers] == [401] * 20


def test_the_servers_own_info_lines_reach_its_log_and_a_url_token_does_not(migrated: str, db: Database, servers: Servers) -> None:
    """openapi.md, the hook's step 2: a refused delivery's reason is in the server's log, for
    the admin setting up the tool (the 401 hides it). It was logged at INFO, which nothing
    printed: uvicorn configures only its own loggers."""
    server = servers.start(migrated)
    with server.client() as client:
        form = json.loads((Path(__file__).parents[2] / "examples" / "forms" / "jotform-visit-report.json").read_text(encoding="utf-8"))
        assert form["auth_scheme"] == "url_token"
        created = client.post("/v1/forms", json={**form, "form_id": "visits-by-token"})
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        refused = client.post("/v1/hooks/forms/visits-by-token", params={"token": "not-the-token-but-long-enough"}, json={})
        assert refused.status_code == 401, refused.text
        client.post("/v1/hooks/forms/visits-by-token", params={"token": secret}, json={})

    wait_until(lambda: "form visits-by-token: a delivery was refused" in server.log.read_text(errors="replace"))
    log = server.log.read_text(errors="replace")
    assert "INFO:     rapport: form visits-by-token: a delivery was refused" in log
    assert secret not in log and "not-the-token-but-long-enough" not in log  # the access log's lines carry token=***


def _raw(server: Server, head: bytes) -> tuple[bytes, float]:
    """Send `head` (a request line and headers) on a connection of its own; the answer's
    first line, and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection before reading it all: its answer is sent
        answer = sock.recv(4096)
    return answer.split(b"\r\n", 1)[0], time.monotonic() - started


def test_headers_beyond_the_bound_are_431_and_the_process_answers_on(migrated: str, db: Database, servers: Servers) -> None:
    """httptools bounds no header, and gathered a long one at a cost growing faster than it:
    a 64 MB header, sent without a key, held the process 26 s (a hunt's find)."""
    server = servers.start(migrated)
    huge = b"GET /v1/customers HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"A" * (8 * 1024 * 1024) + b"\r\n\r\n"
    line, seconds = _raw(server, huge)
    assert line == b"HTTP/1.1 431 Request Header Fields Too Large", line
    assert seconds < 5, seconds

    fits = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"A" * (60 * 1024) + b"\r\nConnection: close\r\n\r\n"
    assert _raw(server, fits)[0] == b"HTTP/1.1 200 OK"
    assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200

    # A pipelined request's body is no part of the next request's head (a review's find: the
    # POST's tail counted against the GET behind it, and the POST was answered 431). (uvicorn
    # itself is slow to answer the GET of such a pipeline: only the POST's answer is read.)
    body = b"x" * (200 * 1024)
    pipelined = (
        b"POST /v1/hooks/forms/visits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert _raw(server, pipelined)[0] == b"HTTP/1.1 401 Unauthorized"
