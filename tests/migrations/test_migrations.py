"""Alembic builds the whole schema from empty, and the models and the migrations agree.

Runs on the engine under test: a new SQLite file, or a new database on the PostgreSQL
server named by RAPPORT_DATABASE_URL (created here and dropped afterwards)."""

from __future__ import annotations

import re

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.db.engine import make_engine
from app.db.migrate import alembic_config, migrations_dir
from app.db.models import Base
from app.settings import Settings


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_builds_exactly_the_models(empty_url: str) -> None:
    command.upgrade(alembic_config(Settings(database_url=empty_url)), "head")
    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert _diff(empty_url) == []


def test_downgrade_to_empty_and_upgrade_again(empty_url: str) -> None:
    cfg = alembic_config(Settings(database_url=empty_url))
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert _tables(empty_url) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert _diff(empty_url) == []


def test_migrations_form_one_line_with_dated_file_names() -> None:
    script = ScriptDirectory(str(migrations_dir(Settings())))
    assert len(script.get_heads()) == 1
    for path in (migrations_dir(Settings()) / "versions").glob("*.py"):
        assert re.match(r"^\d{4}_\d{2}_\d{2}_\d{4}-[0-9a-f]+_\w+\.py$", path.name), path.name
