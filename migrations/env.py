"""Alembic environment: runs on SQLite and PostgreSQL with the app's own engine set-up."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.db.engine import WRITE_BEGIN, make_engine, sqlite_begin
from app.db.migrate import compare_type
from app.db.models import Base
from app.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or get_settings().database_url


def run_migrations_offline() -> None:
    # `alembic upgrade --sql` crashed with an AttributeError halfway (a hunt's find): the
    # grade_hash migration computes each stored grade's digest in Python, from the rows.
    raise SystemExit("offline migrations (--sql) are not supported: some compute values from the stored rows; run `rapport migrate` against the database")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # The busy timeout as configured: every command migrates first, and with the default
    # each waited 10 s for another process's write lock whatever the setting said (a hunt's find).
    busy_timeout_ms = config.attributes.get("sqlite_busy_timeout_ms")
    if busy_timeout_ms is None:
        busy_timeout_ms = get_settings().sqlite_busy_timeout_ms
    engine = make_engine(_url(), sqlite_busy_timeout_ms=busy_timeout_ms)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:  # noqa: ANN001
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table.
    # transactional_ddl: Alembic takes SQLite's DDL as not transactional and committed after
    # each migration, so a run stopped halfway (a refused downgrade, a failure) left the
    # database between revisions. pysqlite here begins nothing itself (app/db/engine.py), and
    # SQLite's DDL is transactional: the whole run is one transaction, as on PostgreSQL.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=compare_type, transactional_ddl=True)
    # One migration at a time: every command and server migrates at start, and two started
    # together both altered the schema, one failing with "already exists" (exit 3, a
    # database failure to an orchestrator; a hunt's find). The lock is held to the commit;
    # the one that waited then reads the schema at head. PostgreSQL: an advisory lock;
    # SQLite: its write lock, from the transaction's first statement (BEGIN IMMEDIATE).
    with sqlite_begin(WRITE_BEGIN), context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('rapport.migrations'))"))
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
