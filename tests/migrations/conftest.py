"""Migration tests build their own databases, apart from the session's test database."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import make_engine
from app.db.migrate import compare_type
from app.db.models import Base
from tests.conftest import is_postgres


def schema_diff(url: str) -> list:
    """What Alembic's autogenerate finds between the database at `url` and the models."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": compare_type}), Base.metadata)
    finally:
        engine.dispose()


@contextmanager
def fresh_database(db_url: str, folder: Path, name: str) -> Iterator[str]:
    """The URL of a new, empty database on the engine under test: a new SQLite file in
    `folder`, or a new database beside the PostgreSQL test database (dropped afterwards)."""
    if not is_postgres(db_url):
        yield f"sqlite:///{folder / f'{name}.db'}"
        return
    server = make_url(db_url)
    database = f"{server.database}_{name}"
    admin = make_engine(server.render_as_string(hide_password=False)).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield server.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(db_url, tmp_path, "migrations") as url:
        yield url
