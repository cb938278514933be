"""Alembic builds the whole schema from empty, and the models and the migrations agree.

Runs on the engine under test: a new SQLite file, or a new database on the PostgreSQL
server named by RAPPORT_DATABASE_URL (created here and dropped afterwards)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from app.db.engine import make_engine
from app.db.migrate import alembic_config, migrations_dir, upgrade
from app.db.models import Base
from app.settings import Settings
from tests.migrations.conftest import schema_diff


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_builds_exactly_the_models(empty_url: str) -> None:
    command.upgrade(alembic_config(Settings(database_url=empty_url)), "head")
    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_url) == []


def test_downgrade_to_empty_and_upgrade_again(empty_url: str) -> None:
    cfg = alembic_config(Settings(database_url=empty_url))
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert _tables(empty_url) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert schema_diff(empty_url) == []


def test_migrations_form_one_line_with_dated_file_names() -> None:
    script = ScriptDirectory(str(migrations_dir(Settings())))
    assert len(script.get_heads()) == 1
    for path in (migrations_dir(Settings()) / "versions").glob("*.py"):
        assert re.match(r"^\d{4}_\d{2}_\d{2}_\d{4}-[0-9a-f]+_\w+\.py$", path.name), path.name


def test_two_upgrades_at_once_both_end_at_head(empty_url: str) -> None:
    # Every server and command migrates at start; two started together on PostgreSQL both
    # altered the schema and one failed ("already exists": exit 3, a hunt's find). They now
    # take turns: PostgreSQL's advisory lock, SQLite's write lock. Processes, as in
    # production (Alembic's context is one per process, not per thread).
    script = "import sys; from app.db.migrate import upgrade; from app.settings import Settings; upgrade(Settings(database_url=sys.argv[1]))"
    runs = [subprocess.Popen([sys.executable, "-c", script, empty_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in runs]

    assert [code for code, _ in outcomes] == [0, 0, 0], [err[-500:] for _, err in outcomes]
    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_url) == []


def test_offline_migrations_are_refused_with_a_reason(empty_url: str) -> None:
    # `alembic upgrade --sql` crashed halfway with an AttributeError: a migration computes
    # values from the stored rows.
    with pytest.raises(SystemExit, match="offline migrations"):
        command.upgrade(alembic_config(Settings(database_url=empty_url)), "head", sql=True)


@pytest.mark.parametrize("timeout_ms", [300, 2500])
def test_migrating_waits_for_another_sqlite_writer_as_long_as_the_busy_timeout_says(tmp_path, timeout_ms: int) -> None:  # noqa: ANN001
    """A hunt's find: every command migrates first, and the migration's engine was made
    without the setting, so it waited its default 10 s for a held write lock."""
    path = tmp_path / "held.db"
    upgrade(Settings(database_url=f"sqlite:///{path}"))  # a database in use: migrated, in WAL
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            upgrade(Settings(database_url=f"sqlite:///{path}", sqlite_busy_timeout_ms=timeout_ms))
    finally:
        holder.rollback()
        holder.close()
    assert timeout_ms / 1000 <= time.monotonic() - started < timeout_ms / 1000 + 2
