"""How SQLite transactions begin (app/db/engine.py): a write session holds the database's
write lock from its first statement, a read session reads one snapshot, and
`Database.first` runs its statement with no transaction around it; the writes of a process
take one held connection in turn."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import bindparam, column, event, select, table, text
from sqlalchemy.exc import OperationalError

from app.db.engine import Database, make_engine


@pytest.fixture
def sqlite_db(tmp_path: Path):  # noqa: ANN201
    db = Database(make_engine(f"sqlite:///{tmp_path / 'tx.db'}", sqlite_busy_timeout_ms=50))
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield db, tmp_path / "tx.db"
    db.dispose()


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


def _pool_checkouts(db: Database) -> list[object]:
    """The pool's checkouts from now on (a pool listener, not a connection one)."""
    taken: list[object] = []
    event.listen(db.engine.pool, "checkout", lambda dbapi_connection, *_: taken.append(dbapi_connection))
    return taken


def test_the_writes_of_every_thread_take_one_held_connection_in_turn(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    taken = _pool_checkouts(db)
    seen: list[object] = []

    def write(x: int) -> None:
        with db.session(write=True) as session:
            session.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
            seen.append(session.connection().connection.dbapi_connection)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(20)))
    assert len(taken) == 1 and set(map(id, seen)) == {id(taken[0])}
    with db.session(write=False) as session:  # reads still borrow from the pool
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 20
    assert len(taken) == 2


def test_a_failed_write_on_the_held_connection_leaves_nothing_and_the_next_write_is_its_own(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    with pytest.raises(ZeroDivisionError):
        with db.session(write=True) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            1 / 0
    with db.session(write=True) as session:
        session.execute(text("INSERT INTO t VALUES (2)"))
    other = _other_writer(path)
    assert other.execute("SELECT x FROM t").fetchall() == [(2,)]
    other.execute("BEGIN IMMEDIATE")  # the held connection keeps no transaction open between writes
    other.execute("ROLLBACK")
    other.close()


def test_a_write_begun_inside_a_write_is_not_joined_to_it(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    with db.session(write=True) as outer:
        outer.execute(text("INSERT INTO t VALUES (1)"))
        # Its own connection and transaction: it queues for the write lock the outer holds
        # (and gives up after the busy timeout), where a joined one would have written.
        with pytest.raises(OperationalError, match="locked"):
            with db.session(write=True) as inner:
                inner.execute(text("INSERT INTO t VALUES (2)"))
    with db.session(write=False) as session:
        assert session.execute(text("SELECT x FROM t")).scalars().all() == [1]


def test_a_held_connection_left_unusable_is_replaced(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    with pytest.raises(RuntimeError):
        with db.session(write=True) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            broken = session.connection()
            broken.invalidate()  # what SQLAlchemy does with a connection whose driver failed
            raise RuntimeError("the write failed")
    with db.session(write=True) as session:
        session.execute(text("INSERT INTO t VALUES (2)"))
        assert session.connection() is not broken
    with db.session(write=False) as session:
        assert session.execute(text("SELECT x FROM t")).scalars().all() == [2]


def test_dispose_closes_the_held_connection(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    with db.session(write=True) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()
    db.dispose()
    # SQLite checkpoints and removes the WAL when the last connection to the file closes.
    assert not wal.exists()
