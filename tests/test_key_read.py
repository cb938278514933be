"""The API-key read every request makes (`Database.first_on_loop`, `keys.authenticate`, on
the event loop): on each engine it gives the values SQLAlchemy's own execution gives, and
tells a live key from a revoked or unknown one; on PostgreSQL, where it runs in autocommit
mode, it leaves the engine's pooled connections as they were."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar
from uuid import uuid4

import pytest
from sqlalchemy import bindparam, column, select, table
from sqlalchemy.exc import DBAPIError

from app.db import models as m
from app.db.engine import Database, make_engine
from app.services.keys import Key, create_key, revoke_key
from tests.conftest import authenticated, is_postgres

NOW = datetime(2026, 12, 5, 4, 30, tzinfo=timezone.utc)
T = TypeVar("T")
ROW = select(m.ApiKey.id, m.ApiKey.name, m.ApiKey.scopes, m.ApiKey.created_at, m.ApiKey.revoked_at).where(m.ApiKey.name == bindparam("name"))


def _first(db: Database, statement: Any, **params: Any) -> Any:
    """`Database.first_on_loop`, on an event loop of its own, as a server runs its reads."""
    return asyncio.run(db.first_on_loop(statement, **params))


def _key(db: Database, scopes: list[str], *, revoked: bool = False) -> tuple[str, str]:
    name = f"k-{uuid4().hex[:8]}"
    with db.session(write=True) as session:
        _, secret = create_key(session, name, scopes, now=NOW)
        if revoked:
            session.flush()
            revoke_key(session, name, now=NOW)
    return name, secret


def test_first_gives_the_values_a_session_gives(db: Database) -> None:
    name, _ = _key(db, ["read", "write"], revoked=True)
    with db.session(write=False) as session:
        expected = tuple(session.execute(ROW, {"name": name}).one())

    row = _first(db, ROW, name=name)

    assert row == expected
    _, _, scopes, created_at, revoked_at = row
    assert scopes == ["read", "write"]  # decoded JSON, not its text
    assert created_at == NOW and revoked_at == NOW  # aware datetimes, not strings
    assert _first(db, ROW, name="no such key") is None


def test_authenticate_knows_live_revoked_and_unknown_keys(db: Database) -> None:
    live_name, live = _key(db, ["read"])
    _, revoked = _key(db, ["admin"], revoked=True)

    key = authenticated(db, live)

    assert isinstance(key, Key) and key.name == live_name and key.scopes == ("read",)
    assert authenticated(db, revoked) is None
    assert authenticated(db, "rk_" + uuid4().hex) is None


def _pooled_autocommit(db: Database) -> bool:
    conn = db.engine.raw_connection()
    try:
        return bool(conn.dbapi_connection.autocommit)
    finally:
        conn.close()


@pytest.fixture
def one_connection(migrated: str) -> Iterator[Database]:
    """A Database whose engine's pool keeps one connection: the one a write would take next."""
    if not is_postgres(migrated):
        pytest.skip("the read runs in autocommit mode on PostgreSQL only")
    database = Database(make_engine(migrated, pool_size=1))
    yield database
    database.engine.dispose()


def test_the_read_leaves_the_pooled_connection_ready_for_transactions(one_connection: Database) -> None:
    # PostgreSQL: the read runs in autocommit mode. A pooled connection left in it would make
    # the next write commit statement by statement.
    assert _first(one_connection, ROW, name="no such key") is None
    assert _pooled_autocommit(one_connection) is False


def test_a_driver_error_is_raised_as_sqlalchemys(one_connection: Database) -> None:
    with pytest.raises(DBAPIError):
        _first(one_connection, select(table("no_such_table", column("x"))))
    assert _pooled_autocommit(one_connection) is False


@pytest.mark.parametrize(
    "url",
    ["sqlite:////nonexistent-rapport-folder/rapport.db", "postgresql+psycopg://postgres@127.0.0.1:1/rapport_absent_test"],
    ids=["sqlite-cannot-open", "postgresql-refused"],
)
def test_a_database_that_cannot_be_reached_fails_the_read_with_sqlalchemys_error(url: str) -> None:
    """The read opens its connection by hand, where a failed connect raises the driver's own
    error; the API answers SQLAlchemy's OperationalError with a 503 to retry, anything else
    with a 500 (as every request did while PostgreSQL was away)."""
    from sqlalchemy.exc import OperationalError

    db = Database(make_engine(url))
    try:
        with pytest.raises(OperationalError):
            _first(db, ROW, name="anyone")
    finally:
        db.dispose()


@pytest.mark.parametrize("query, connect_timeout", [("", "10"), ("?connect_timeout=3", "3")], ids=["defaults", "the-urls-own"])
def test_postgresql_connections_give_up_on_a_silent_network(db: Database, query: str, connect_timeout: str) -> None:
    """Without TCP keepalives and a send timeout, a request on a connection whose server
    vanished without a word waited as long as TCP kept trying; the URL's values win."""
    if db.is_sqlite:
        pytest.skip("SQLite is a file: no network to wait on")
    engine = make_engine(db.engine.url.render_as_string(hide_password=False) + query)
    try:
        with engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    finally:
        engine.dispose()
    assert params["connect_timeout"] == connect_timeout
    assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("10", "30000")


@pytest.fixture
def sqlite_reads(migrated: str) -> Iterator[Database]:
    """A Database of its own on the SQLite test file, for the connection its reads keep."""
    if is_postgres(migrated):
        pytest.skip("SQLite's reads keep a connection; PostgreSQL's take a pooled one each")
    database = Database(make_engine(migrated, pool_size=2))
    yield database
    database.dispose()


def _on_a_loop(work: Callable[[], T]) -> T:
    """`work()` run by an event loop, as a server runs its reads of keys and records."""

    async def run() -> T:
        return work()

    return asyncio.run(run())


def test_a_kept_reading_connection_sees_every_commit_after_it(sqlite_reads: Database) -> None:
    # An event loop's reads keep one connection (`_reading_connection`). One that kept a read
    # snapshot open, or a transaction, would go on answering from before a later commit.
    name, _ = _key(sqlite_reads, ["read"])
    assert _first(sqlite_reads, ROW, name=name).revoked_at is None
    kept = _on_a_loop(sqlite_reads._reading_connection)

    with sqlite_reads.session(write=True) as session:
        revoke_key(session, name, now=NOW)

    assert _first(sqlite_reads, ROW, name=name).revoked_at == NOW
    assert _on_a_loop(sqlite_reads._reading_connection) is kept
    assert not kept.dbapi_connection.in_transaction


def test_dispose_closes_the_kept_connection_and_the_loop_takes_a_fresh_one(sqlite_reads: Database) -> None:
    kept = _on_a_loop(sqlite_reads._reading_connection)

    sqlite_reads.dispose()

    assert kept.dbapi_connection is None  # closed
    assert _first(sqlite_reads, ROW, name="no such key") is None
    assert _on_a_loop(sqlite_reads._reading_connection) is not kept


def test_a_failed_read_does_not_keep_its_connection(sqlite_reads: Database) -> None:
    kept = _on_a_loop(sqlite_reads._reading_connection)

    with pytest.raises(DBAPIError):
        _first(sqlite_reads, select(table("no_such_table", column("x"))))

    assert _on_a_loop(sqlite_reads._reading_connection) is not kept
    assert _first(sqlite_reads, ROW, name="no such key") is None
