"""How SQLite transactions begin (app/db/engine.py): a write session holds the database's
write lock from its first statement, a read session reads one snapshot, and
`Database.first` runs its statement with no transaction around it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import bindparam, column, select, table, text

from app.db.engine import Database, make_engine


@pytest.fixture
def sqlite_db(tmp_path: Path):  # noqa: ANN201
    db = Database(make_engine(f"sqlite:///{tmp_path / 'tx.db'}", sqlite_busy_timeout_ms=50))
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield db, tmp_path / "tx.db"
    db.engine.dispose()


def _other_writer(path: Path) -> sqlite3.Connection:
    """Another connection to the file, each statement its own transaction."""
    return sqlite3.connect(path, timeout=0.05, isolation_level=None)


def test_a_write_session_holds_the_write_lock_from_its_first_read(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    other = _other_writer(path)
    with db.session(write=True) as session:
        session.execute(text("SELECT count(*) FROM t")).scalar()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the session has committed
    other.execute("ROLLBACK")
    other.close()


def test_a_read_session_reads_one_snapshot(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    other = _other_writer(path)
    with db.session(write=False) as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
        other.execute("INSERT INTO t VALUES (1)")  # committed: the connection autocommits
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
    with db.session(write=False) as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 1
    other.close()


def test_a_one_statement_read_leaves_no_transaction_open(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    other = _other_writer(path)
    other.execute("INSERT INTO t VALUES (1), (2), (3)")
    t = table("t", column("x"))
    # Rows are left unread: the driver's statement would still be stepping through them.
    assert db.first(select(t.c.x).order_by(t.c.x)) == (1,)
    assert db.first(select(t.c.x).where(t.c.x == bindparam("x")), x=4) is None
    # A reader still inside its snapshot would keep the WAL from being reset (busy = 1).
    busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    other.close()
    # and a write session that follows still begins as a write
    with db.session(write=True) as session:
        session.execute(text("SELECT 1"))
        assert session.connection().connection.dbapi_connection.in_transaction
