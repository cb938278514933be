"""The event loop's one-statement reads (`Database.alone_on_loop`): the rows a session
gives, on either engine; on PostgreSQL, on connections of the loop's own
(`LoopReads`): at most so many at once, replaced when the server ended them, closed by a
read that failed or was cancelled, by `dispose`, and once their loop is gone."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterator, TypeVar
from uuid import uuid4

import psycopg
import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import OperationalError

from app.db import loop_reads
from app.db import models as m
from app.db.engine import Database, make_engine
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.keys import authenticate, create_key, revoke_key
from app.services.projects import create_project, participants, read_with_participants
from app.services.records import read_alone
from app.settings import Settings
from tests.conftest import is_postgres, wait_until

NOW = datetime(2026, 12, 7, 13, 0, tzinfo=timezone.utc)
RULEBOOK = load_rulebook()
T = TypeVar("T")
CUSTOMER = select(m.Customer.__table__).where(m.Customer.id == bindparam("value"))


def _run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # a loop of its own, as a server's


@pytest.fixture
def reads(migrated: str) -> Iterator[Database]:
    """A Database of its own on the test database, disposed after the test."""
    database = Database(make_engine(migrated))
    yield database
    database.dispose()


@pytest.fixture
def pg_reads(reads: Database) -> Database:
    if reads.is_sqlite:
        pytest.skip("SQLite's reads on the loop are the same in-process read")
    return reads


def _backends(db: Database) -> int:
    """The connections to the test database other than the one counting them."""
    with db.engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"))


def _world(db: Database) -> tuple[int, int]:
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner", "contact": {"phone": "021-1"}}, now=NOW)
        project = create_project(s, RULEBOOK, {"name": "新门诊楼暖通工程", "owner_id": owner.id}, now=NOW)
        return owner.id, project.id


def test_a_read_on_the_loop_gives_what_a_session_gives(reads: Database) -> None:
    owner, project = _world(reads)
    with reads.session(write=True) as s:
        bidder = create_customer(s, RULEBOOK, {"name": "上海建工安装", "kind": "installer"}, now=NOW)
    bid = NewEvent(type="bid_joined", customer_id=bidder.id, project_id=project, occurred_at=NOW, source="t", external_id=f"bid-{uuid4().hex[:8]}")
    reads.transaction(lambda s: record_event(s, RULEBOOK, bid, actor="t", now=NOW))
    name = f"k-{uuid4().hex[:8]}"
    with reads.session(write=True) as s:
        _, secret = create_key(s, name, ["read"], now=NOW)
        _, revoked = create_key(s, f"{name}-r", ["admin"], now=NOW)
        s.flush()
        revoke_key(s, f"{name}-r", now=NOW)

    async def on_loop() -> tuple[Any, ...]:
        return (
            await reads.first_on_loop(CUSTOMER, value=owner),
            await reads.first_on_loop(CUSTOMER, value=owner + 10_000),
            await read_with_participants(reads, "id", project),
            await authenticate(reads, secret),
            await authenticate(reads, revoked),
            await authenticate(reads, "rk_" + uuid4().hex),
        )

    row, missing, (project_row, bidders), key, none, unknown = _run(on_loop)

    with reads.session(write=False) as s:
        assert row == tuple(s.execute(CUSTOMER, {"value": owner}).one())  # SQLAlchemy's own execution
    assert row.contact == {"phone": "021-1"} and row.created_at == NOW  # decoded, aware
    assert missing is None
    with reads.session(write=False) as s:
        stored = s.get(m.Project, project)
        assert (project_row.id, project_row.version, project_row.heat, project_row.grade) == (stored.id, stored.version, stored.heat, stored.grade)
        assert bidders == participants(s, stored) and [b["id"] for b in bidders[0]] == [bidder.id]
    assert key is not None and (key.name, key.scopes) == (name, ("read",))
    assert none is None and unknown is None


def test_a_record_that_is_not_there_is_the_404_that_names_it(reads: Database) -> None:
    from app.errors import NotFound

    with pytest.raises(NotFound):
        _run(lambda: read_alone(reads, m.Customer, "external_ref", "no such code"))


def test_connections_the_server_ended_while_pooled_are_replaced(pg_reads: Database) -> None:
    owner, _ = _world(pg_reads)

    async def twice_around_a_restart() -> tuple[Any, Any]:
        first = await pg_reads.first_on_loop(CUSTOMER, value=owner)
        # As a restart or an idle timeout ends them: every other connection to the database.
        with pg_reads.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        await asyncio.sleep(0.2)  # the server's last word reaches the socket
        return first, await pg_reads.first_on_loop(CUSTOMER, value=owner)

    first, again = _run(twice_around_a_restart)

    assert again == first and again.id == owner


def test_a_pooled_connection_that_fails_its_read_is_read_again_on_a_fresh_one(pg_reads: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ended while pooled, and the poll did not see it (the server's last word had not
    arrived): its read fails, and runs once more on a new connection."""
    owner, _ = _world(pg_reads)
    monkeypatch.setattr(loop_reads, "has_input", lambda _fileno: False)

    async def around_a_silent_end() -> Any:
        await pg_reads.first_on_loop(CUSTOMER, value=owner)
        with pg_reads.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        await asyncio.sleep(0.2)
        return await pg_reads.first_on_loop(CUSTOMER, value=owner)

    assert _run(around_a_silent_end).id == owner


def test_at_most_so_many_connections_read_at_once_no_more_than_the_pool_size(migrated: str) -> None:
    """A pool made small for the server's `max_connections` (RAPPORT_DB_POOL_SIZE) keeps the
    loop's reads as small."""
    if not is_postgres(migrated):
        pytest.skip("PostgreSQL's loop connections")
    db = Database.from_settings(Settings(database_url=migrated, db_pool_size=3))
    reads = db._loop_reads
    assert reads is not None
    try:
        before = _backends(db)

        async def ten_slow_reads() -> tuple[float, int]:
            started = time.monotonic()
            await asyncio.gather(*(reads.fetch("SELECT pg_sleep(0.2)", {}, returns=True) for _ in range(10)))
            return time.monotonic() - started, _backends(db)

        took, during = _run(ten_slow_reads)
    finally:
        db.dispose()
    assert took >= 0.8  # four rounds of at most three
    assert during - before == 3  # opened as needed, kept open between reads


def test_a_cancelled_read_closes_its_connection_and_the_next_read_is_served(migrated: str) -> None:
    if not is_postgres(migrated):
        pytest.skip("PostgreSQL's loop connections")
    reads = loop_reads.LoopReads({"conninfo": make_engine(migrated).url.set(drivername="postgresql").render_as_string(hide_password=False)}, 1)

    pid = "SELECT pg_backend_pid()"

    async def cancel_then_read() -> tuple[Any, Any]:
        (before,) = await reads.fetch(pid, {}, returns=True)
        slow = asyncio.ensure_future(reads.fetch("SELECT pg_sleep(2)", {}, returns=True))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        (after,) = await asyncio.wait_for(reads.fetch(pid, {}, returns=True), 1.5)
        return before, after

    try:
        before, after = _run(cancel_then_read)
    finally:
        reads.dispose()
    assert after != before  # a new connection: the one cancelled mid-statement is not reused


def test_dispose_closes_the_loops_connections_and_a_later_read_opens_anew(pg_reads: Database) -> None:
    owner, _ = _world(pg_reads)
    before = _backends(pg_reads)

    async def many() -> None:
        await asyncio.gather(*(pg_reads.first_on_loop(CUSTOMER, value=owner) for _ in range(20)))

    async def read_dispose_read() -> Any:
        await many()
        pg_reads.dispose()
        wait_until(lambda: _backends(pg_reads) <= before)
        return await pg_reads.first_on_loop(CUSTOMER, value=owner)

    assert _run(read_dispose_read).id == owner


def test_the_connections_of_a_loop_that_ended_are_closed_by_the_next_loops_read(pg_reads: Database) -> None:
    owner, _ = _world(pg_reads)
    before = _backends(pg_reads)

    async def gathered() -> None:
        await asyncio.gather(*(pg_reads.first_on_loop(CUSTOMER, value=owner) for _ in range(20)))

    _run(gathered)
    assert _backends(pg_reads) > before + 1  # kept after their loop ended, until someone reads
    _run(lambda: pg_reads.first_on_loop(CUSTOMER, value=owner))  # a second loop

    wait_until(lambda: _backends(pg_reads) == before + 1)  # the second loop's one connection


@pytest.mark.parametrize("where", ["another-thread", "the-loop"])
def test_dispose_while_reads_run_fails_or_answers_them_and_closes_everything(pg_reads: Database, where: str) -> None:
    """libpq frees a connection it closes; closed under a read that was using it, it crashed
    the process (5 runs of 6, a review's find). Now a read answers, or fails as a database
    away does (an OperationalError: a 503), and every connection is closed in the end."""
    owner, _ = _world(pg_reads)
    before = _backends(pg_reads)
    answered, failed = [0], [0]

    async def reader(end: float) -> None:
        while time.monotonic() < end:
            try:
                row = await asyncio.wait_for(pg_reads.first_on_loop(CUSTOMER, value=owner), 5)
            except OperationalError:
                failed[0] += 1
            else:
                assert row.id == owner
                answered[0] += 1

    async def read_while_disposed() -> None:
        end = time.monotonic() + 1.5
        for at in (0.3, 0.6, 0.9, 1.2):
            if where == "the-loop":
                asyncio.get_running_loop().call_later(at, pg_reads.dispose)
            else:
                threading.Timer(at, pg_reads.dispose).start()
        await asyncio.gather(*(reader(end) for _ in range(16)))

    _run(read_while_disposed)
    pg_reads.dispose()

    assert answered[0] > 100 and failed[0] < answered[0]
    wait_until(lambda: _backends(pg_reads) <= before)


def test_a_statements_own_failure_is_not_run_again_nor_empties_the_pool(migrated: str) -> None:
    """A statement timeout (or a lock timeout, a cancel) is an OperationalError too; run again
    it took twice as long, and closing the idle connections beside it forced reconnects
    under load (a review's find). Only a connection that broke is read again."""
    if not is_postgres(migrated):
        pytest.skip("PostgreSQL's loop connections")
    url = make_engine(migrated).url.set(drivername="postgresql").render_as_string(hide_password=False)
    reads = loop_reads.LoopReads({"conninfo": url, "options": "-c statement_timeout=300"}, 4)

    async def timed_out() -> tuple[float, int]:
        await asyncio.gather(*(reads.fetch("SELECT pg_sleep(0.05)", {}, returns=True) for _ in range(4)))
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            await reads.fetch("SELECT pg_sleep(0.5)", {}, returns=True)
        return time.monotonic() - started, len(reads._pool().idle)

    try:
        took, idle = _run(timed_out)
    finally:
        reads.dispose()
    assert took < 0.55  # once, not twice
    assert idle == 3  # the three beside it stay
