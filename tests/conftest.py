"""Shared test set-up.

API and migration tests run against a real database: SQLite (a temporary file) by
default, or the PostgreSQL named by RAPPORT_DATABASE_URL (the database is emptied and
migrated with `alembic upgrade head` at the start of the run). Domain tests need none.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.cli import main
from app.db.engine import Database, _CursorStatement, make_engine
from app.services.keys import Key, authenticate
from app.services.known_keys import KnownKeys
from app.settings import Settings, get_settings

TEST_URL_ENV = "RAPPORT_DATABASE_URL"


def database_url(tmp_dir: Path) -> str:
    return os.environ.get(TEST_URL_ENV) or f"sqlite:///{tmp_dir / 'rapport-test.db'}"


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


@contextmanager
def held(db_url: str, customer: int) -> Iterator[None]:
    """The customer's row held by a transaction outside the service, as from psql (SQLite:
    its one writer's lock)."""
    url = make_url(db_url)
    if is_postgres(db_url):
        import psycopg

        with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database) as conn:
            conn.execute("SELECT id FROM customers WHERE id = %s FOR UPDATE", (customer,))
            yield
            conn.rollback()
    else:
        conn = sqlite3.connect(url.database, timeout=5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.rollback()
        finally:
            conn.close()


def reset_database(url: str) -> None:
    """Drop everything in the test database (PostgreSQL: the public schema).

    Refuses a PostgreSQL database whose name does not say it is for tests, so pointing
    RAPPORT_DATABASE_URL at real data and running pytest cannot wipe it."""
    if is_postgres(url):
        name = make_url(url).database or ""
        if "test" not in name:
            pytest.exit(f"refusing to wipe PostgreSQL database {name!r}: the tests drop its schema; use a database whose name contains 'test'", returncode=2)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    else:
        path = make_url(url).database
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


TABLES = (
    "webhook_attempts",
    "webhook_deliveries",
    "outbox_messages",
    "webhook_subscriptions",
    "form_submissions",
    "form_mappings",
    "idempotency_records",
    "event_retractions",
    "grade_history",
    "events",
    "projects",
    "customers",
    "api_keys",
    "service_state",
)


def authenticated(db: Database, secret: str, known: KnownKeys | None = None) -> Key | None:
    """`keys.authenticate`, run as a request runs it: on an event loop."""
    return asyncio.run(authenticate(db, secret, known))


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Return once `condition()` holds; fail the test if it does not within `seconds`."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "not within the time allowed"
        time.sleep(0.005)


def query(folder: Path, sql: str, db: str = "rapport.db") -> list[tuple[Any, ...]]:
    """The rows `sql` reads from the SQLite file `db` in `folder` (a CLI test's database)."""
    engine = create_engine(f"sqlite:///{folder / db}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def empty_tables(engine) -> None:  # noqa: ANN001
    """Delete every row (the schema stays), and restart the ids.

    The append-only tables refuse DELETE and TRUNCATE (see the append_only_triggers
    migration); only this reset between tests gets past them, inside its transaction."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Ordinary triggers, TRUNCATE ones included, do not fire for a replica.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            return
        # SQLite cannot switch triggers off: drop them and create them again from the
        # DDL the migration stored, so they come back exactly as migrated.
        triggers = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
        for name, _ in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        if conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name='sqlite_sequence'")).scalar():
            conn.execute(text("DELETE FROM sqlite_sequence"))
        for _, sql in triggers:
            conn.exec_driver_sql(sql)


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return database_url(tmp_path_factory.mktemp("db"))


class Clock:
    """A settable clock for the app: tests decide what `now` is."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc))


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, bootstrap_key="test-admin-secret")


@pytest.fixture(scope="session")
def migrated(db_url: str) -> Iterator[str]:
    from app.db.migrate import upgrade

    reset_database(db_url)
    upgrade(Settings(database_url=db_url))
    yield db_url


@pytest.fixture(scope="module")
def database(migrated: str) -> Iterator[Database]:
    """The migrated test database, for tests that call the services directly."""
    db = Database(make_engine(migrated))
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def db(database: Database) -> Database:
    return database


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The `rapport` command as an operator runs it: in a temporary working folder, with
    none of RAPPORT_DATABASE_URL and RAPPORT_BOOTSTRAP_KEY set (so SQLite, `rapport.db`
    there), in process. `run("migrate")` returns click's result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAPPORT_DATABASE_URL", raising=False)
    monkeypatch.delenv("RAPPORT_BOOTSTRAP_KEY", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):  # noqa: ANN202
        get_settings.cache_clear()
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


@pytest.fixture
def on_cursor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement `run` sends by the DBAPI cursor (app/db/engine.py), as it
    runs: for tests that count a request's statements or read what was sent."""
    sent: list[str] = []
    rows = _CursorStatement.rows

    def counted(self: _CursorStatement, *args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs.get("sql") or self.sql)
        return rows(self, *args, **kwargs)

    monkeypatch.setattr(_CursorStatement, "rows", counted)
    return sent
