"""The event log, its retractions and the grade history are append-only in the database
itself: UPDATE, DELETE (and TRUNCATE on PostgreSQL; REPLACE of a stored row on SQLite) are
refused whoever connects, INSERT goes on, and downgrading the migration lifts the
refusal."""

from __future__ import annotations

from datetime import datetime, timezone
from types import ModuleType
from typing import Iterator

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError

from app.db import models as m
from app.db.engine import make_engine
from app.db.migrate import ALLOW_DOWNGRADE, alembic_config, migrations_dir
from app.settings import Settings
from tests.migrations.conftest import fresh_database, schema_diff

AT = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
APPEND_ONLY_REVISION = "eb4fe37b4fa0"
PROTECTED = ("events", "event_retractions", "grade_history")


def _migration() -> ModuleType:
    script = ScriptDirectory(str(migrations_dir(Settings())))
    return script.get_revision(APPEND_ONLY_REVISION).module


def _append_one_of_each(engine: Engine) -> None:
    """One customer, one event, its retraction and one grade-history row."""
    with engine.begin() as conn:
        customer = conn.execute(
            insert(m.Customer.__table__).values(
                name="c", kind="owner", contact={}, tags=[], level=0, level_since=AT, grade={}, version=1, created_at=AT, updated_at=AT
            )
        ).inserted_primary_key[0]
        event = conn.execute(
            insert(m.Event.__table__).values(type="visit", customer_id=customer, occurred_at=AT, recorded_at=AT, attributes={}, source="api")
        ).inserted_primary_key[0]
        conn.execute(insert(m.Retraction.__table__).values(event_id=event, reason="wrong customer", at=AT))
        conn.execute(
            insert(m.GradeChange.__table__).values(
                subject_type="customer", subject_id=customer, metric="relationship_level", old=0, new=1,
                rulebook_version="v", evidence={}, trigger={}, at=AT,
            )
        )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


CHANGES = {
    "events": ("UPDATE events SET note = 'edited'", "DELETE FROM events"),
    "event_retractions": ("UPDATE event_retractions SET reason = 'never mind'", "DELETE FROM event_retractions"),
    "grade_history": ("UPDATE grade_history SET new = 4", "DELETE FROM grade_history"),
}


@pytest.fixture(scope="module")
def log(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A database migrated to head with one row in each append-only table."""
    with fresh_database(db_url, tmp_path_factory.mktemp("append"), "append_only") as url:
        command.upgrade(alembic_config(Settings(database_url=url)), "head")
        engine = make_engine(url)
        _append_one_of_each(engine)
        yield engine
        engine.dispose()


@pytest.mark.parametrize("statement", [s for pair in CHANGES.values() for s in pair])
def test_the_database_refuses_to_change_or_delete_the_log(log: Engine, statement: str) -> None:
    table = statement.split()[2 if statement.startswith("DELETE") else 1]
    with log.connect() as conn, pytest.raises(DBAPIError) as refused:
        conn.execute(text(statement))
    assert f"{table} is append-only" in str(refused.value.orig)
    if log.dialect.name == "postgresql":
        assert refused.value.orig.sqlstate == _migration().SQLSTATE
    assert _count(log, table) == 1


# SQLite resolves a REPLACE by deleting the stored row without its DELETE trigger: each
# statement gives a stored row's key with other values.
REPLACES = {
    "events": "INSERT OR REPLACE INTO events (id, type, occurred_at, recorded_at, attributes, source, note) "
    "SELECT id, 'visit', occurred_at, recorded_at, attributes, source, 'edited' FROM events",
    "event_retractions": "REPLACE INTO event_retractions (event_id, reason, at) SELECT event_id, 'never mind', at FROM event_retractions",
    "grade_history": "INSERT OR REPLACE INTO grade_history (id, subject_type, subject_id, metric, old, new, rulebook_version, evidence, \"trigger\", at) "
    "SELECT id, subject_type, subject_id, metric, old, 4, rulebook_version, evidence, \"trigger\", at FROM grade_history",
}


@pytest.mark.parametrize("table", PROTECTED)
def test_sqlite_refuses_to_replace_a_row_of_the_log(log: Engine, table: str) -> None:
    if log.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no REPLACE; its ON CONFLICT DO UPDATE fires the UPDATE trigger")
    with log.connect() as conn:
        before = conn.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()
    with log.connect() as conn, pytest.raises(DBAPIError) as refused:
        conn.execute(text(REPLACES[table]))
    assert f"{table} is append-only" in str(refused.value.orig)
    with log.connect() as conn:
        assert conn.execute(text(f"SELECT * FROM {table} ORDER BY id")).all() == before


def test_sqlite_keeps_a_stored_event_that_a_replace_names_by_source_and_external_id(log: Engine) -> None:
    if log.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no REPLACE")
    insert = "{} INTO events (type, note, occurred_at, recorded_at, attributes, source, external_id) VALUES ('visit', :note, :at, :at, '{{}}', 'erp', 'SO-1')"
    at = "2026-11-20 09:00:00.000000"
    with log.begin() as conn:
        conn.execute(text(insert.format("INSERT")), {"note": "first", "at": at})
        stored = conn.execute(text("SELECT * FROM events WHERE external_id = 'SO-1'")).one()
        # Skipped, as Rapport's own ON CONFLICT DO NOTHING would: the stored event stays.
        conn.execute(text(insert.format("REPLACE")), {"note": "second", "at": at})
    with log.connect() as conn:
        assert conn.execute(text("SELECT * FROM events WHERE external_id = 'SO-1'")).all() == [stored]


@pytest.mark.parametrize("table", PROTECTED)
def test_postgresql_refuses_to_truncate_the_log(log: Engine, table: str) -> None:
    if log.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE; its `DELETE FROM` without WHERE is refused above")
    with log.connect() as conn, pytest.raises(DBAPIError) as refused:
        conn.execute(text(f"TRUNCATE {table} CASCADE"))
    assert refused.value.orig.sqlstate == _migration().SQLSTATE
    assert _count(log, table) == 1


def test_truncating_a_table_the_log_refers_to_is_refused_too(log: Engine) -> None:
    if log.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    with log.connect() as conn, pytest.raises(DBAPIError, match="events is append-only"):
        conn.execute(text("TRUNCATE customers CASCADE"))
    assert _count(log, "events") == 1


def test_the_log_still_takes_new_rows_and_other_tables_stay_writable(log: Engine) -> None:
    before = {t: _count(log, t) for t in PROTECTED}
    _append_one_of_each(log)
    assert {t: _count(log, t) for t in PROTECTED} == {t: n + 1 for t, n in before.items()}
    with log.begin() as conn:
        # The current grade lives on the customer row and is updated on every change.
        conn.execute(text("UPDATE customers SET level = 1"))
    with log.connect() as conn:
        assert conn.execute(select(func.min(m.Customer.level))).scalar_one() == 1


def test_downgrading_lifts_the_refusal_and_upgrading_restores_it(empty_url: str) -> None:
    cfg = alembic_config(Settings(database_url=empty_url))
    command.upgrade(cfg, "head")
    engine = make_engine(empty_url)
    try:
        _append_one_of_each(engine)
        cfg.attributes[ALLOW_DOWNGRADE] = True  # the log holds rows: asked for in so many words
        command.downgrade(cfg, _migration().down_revision)
        with engine.begin() as conn:
            conn.execute(text("UPDATE grade_history SET new = 2"))
            for table in ("event_retractions", "grade_history", "events"):  # retractions refer to events
                conn.execute(text(f"DELETE FROM {table}"))
        assert [_count(engine, t) for t in PROTECTED] == [0, 0, 0]
        command.upgrade(cfg, "head")
        _append_one_of_each(engine)
        with engine.connect() as conn, pytest.raises(DBAPIError, match="events is append-only"):
            conn.execute(text("DELETE FROM events"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("target", ["base", "below the triggers"])
def test_a_downgrade_that_would_drop_or_unprotect_a_log_holding_rows_is_refused(empty_url: str, target: str) -> None:
    # Downgrading to base dropped every table of a database with its whole history, exit
    # status 0 (a hunt's find); below the triggers' revision the log could be edited again.
    cfg = alembic_config(Settings(database_url=empty_url))
    command.upgrade(cfg, "head")
    engine = make_engine(empty_url)
    try:
        _append_one_of_each(engine)
        with pytest.raises(SystemExit, match="refused: this downgrade would drop or unprotect events, event_retractions, grade_history"):
            command.downgrade(cfg, "base" if target == "base" else _migration().down_revision)
        assert [_count(engine, t) for t in PROTECTED] == [1, 1, 1]
        # Nothing of the run stays: the migrations it had undone before the refusal are back
        # (on SQLite Alembic committed each one, leaving the database between revisions).
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == ScriptDirectory.from_config(cfg).get_current_head()
        assert schema_diff(empty_url) == []
        command.upgrade(cfg, "head")
        with engine.connect() as conn, pytest.raises(DBAPIError, match="events is append-only"):
            conn.execute(text("DELETE FROM events"))
    finally:
        engine.dispose()
