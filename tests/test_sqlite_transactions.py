"""How SQLite transactions begin (app/db/engine.py): a write session holds the database's
write lock from its first statement, a read session reads one snapshot, and
`Database.first_on_loop` runs its statement with no transaction around it; the writes of a process
take one held connection in turn, and writes that wait for it together share one commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
    assert asyncio.run(db.first_on_loop(select(t.c.x).order_by(t.c.x))) == (1,)
    assert asyncio.run(db.first_on_loop(select(t.c.x).where(t.c.x == bindparam("x")), x=4)) is None
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


def _commits(db: Database) -> list[None]:
    counted: list[None] = []
    event.listen(db.engine, "commit", lambda _conn: counted.append(None))
    return counted


def _queued_behind_a_write(db: Database, works: list, *, writes: bool = True) -> list[Future]:  # noqa: ANN001
    """Submit `works` (each to `db.transaction`, from threads of their own) while another
    write holds the writer lock, wait until all of them wait for it, then let it commit.
    `writes=False`: that write holds the lock of this process but writes nothing, so it
    never begins SQLite's transaction."""
    holding, release = threading.Event(), threading.Event()

    def first(session):  # noqa: ANN001, ANN202
        if writes:
            session.execute(text("INSERT INTO t VALUES (0)"))
        holding.set()
        release.wait(5)
        return "first"

    pool = ThreadPoolExecutor(len(works) + 1)
    futures = [pool.submit(db.transaction, first)]
    assert holding.wait(5)
    futures += [pool.submit(db.transaction, work) for work in works]
    deadline = time.monotonic() + 5
    while len(db._waiting) < len(works) and time.monotonic() < deadline:  # white box: the queue
        time.sleep(0.005)
    release.set()
    pool.shutdown(wait=True)
    return futures


def _insert(x: int):  # noqa: ANN202
    def work(session):  # noqa: ANN001, ANN202
        session.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
        return x * 10

    return work


def _stored(db: Database) -> list[int]:
    with db.session(write=False) as session:
        return session.execute(text("SELECT x FROM t ORDER BY x")).scalars().all()


def test_writes_that_wait_together_commit_together_and_each_gets_its_own_answer(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    commits = _commits(db)
    futures = _queued_behind_a_write(db, [_insert(1), _insert(2), _insert(3)])
    assert [f.result() for f in futures] == ["first", 10, 20, 30]
    assert _stored(db) == [0, 1, 2, 3]
    assert len(commits) == 2  # the first write's, then one for the three that waited


def test_each_write_of_a_group_sees_what_the_ones_before_it_wrote(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db

    def count(session):  # noqa: ANN001, ANN202
        seen = session.execute(text("SELECT count(*) FROM t")).scalar()
        session.execute(text("INSERT INTO t VALUES (:x)"), {"x": 100 + seen})
        return seen

    futures = _queued_behind_a_write(db, [count, count, count])
    assert [f.result() for f in futures] == ["first", 1, 2, 3]


def _counted(work, runs: list[int]):  # noqa: ANN001, ANN202
    def counting(session):  # noqa: ANN001, ANN202
        runs.append(1)
        return work(session)

    return counting


def test_a_write_that_fails_in_a_group_fails_alone_and_the_others_are_stored_once(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    runs: dict[str, list[int]] = {"first": [], "failing": [], "last": []}

    def failing(session):  # noqa: ANN001, ANN202
        session.execute(text("INSERT INTO t VALUES (2)"))
        raise ValueError("the second write fails after writing")

    commits = _commits(db)
    futures = _queued_behind_a_write(db, [_counted(_insert(1), runs["first"]), _counted(failing, runs["failing"]), _counted(_insert(3), runs["last"])])
    assert futures[1].result() == 10 and futures[3].result() == 30
    with pytest.raises(ValueError, match="the second write fails"):
        futures[2].result()
    assert _stored(db) == [0, 1, 3]
    # The failing write's error is its outcome, as it would be alone after the write before
    # it: it is not run again. The group was rolled back (the write after it had not run)
    # and the other two run together: one commit for them.
    assert {name: len(r) for name, r in runs.items()} == {"first": 2, "failing": 1, "last": 1}
    assert len(commits) == 2


def test_a_write_that_fails_in_the_database_in_a_group_makes_each_write_run_alone(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    runs: dict[str, list[int]] = {"first": [], "failing": [], "last": []}

    def failing(session):  # noqa: ANN001, ANN202
        # Not the write's own failure: the database's (here a table that is not there).
        # Alone, it might have gone through: it runs again in a transaction of its own.
        session.execute(text("INSERT INTO t VALUES (2)"))
        if len(runs["failing"]) == 1:
            session.execute(text("INSERT INTO missing VALUES (1)"))
        return 20

    commits = _commits(db)
    futures = _queued_behind_a_write(db, [_counted(_insert(1), runs["first"]), _counted(failing, runs["failing"]), _counted(_insert(3), runs["last"])])
    assert [f.result() for f in futures] == ["first", 10, 20, 30]
    assert _stored(db) == [0, 1, 2, 3]
    assert {name: len(r) for name, r in runs.items()} == {"first": 2, "failing": 2, "last": 1}
    assert len(commits) == 4  # the first write's, then each of the three alone


def test_a_write_inside_a_grouped_write_is_not_queued_behind_it(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db

    def nesting(session):  # noqa: ANN001, ANN202
        session.execute(text("INSERT INTO t VALUES (1)"))
        # Its own transaction, which queues for the lock the outer write holds in SQLite's
        # busy handler and gives up after the busy timeout: it is not joined, nor queued
        # behind the write it runs in (which would wait for ever).
        db.transaction(lambda inner: inner.execute(text("INSERT INTO t VALUES (2)")))

    futures = _queued_behind_a_write(db, [nesting, _insert(3)])
    with pytest.raises(OperationalError, match="locked"):
        futures[1].result()
    assert futures[2].result() == 30
    assert _stored(db) == [0, 3]


def test_a_write_inside_a_session_s_write_is_not_queued_behind_the_writes_waiting_for_it(sqlite_db) -> None:  # noqa: ANN001
    db, _ = sqlite_db
    with ThreadPoolExecutor(1) as pool:
        with db.session(write=True) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            waiting = pool.submit(db.transaction, _insert(3))  # queues: this thread holds the lock
            deadline = time.monotonic() + 5
            while not db._running and time.monotonic() < deadline:  # white box: it runs next
                time.sleep(0.005)
            with pytest.raises(OperationalError, match="locked"):  # not a wait for ever
                db.transaction(_insert(2))
        assert waiting.result(timeout=5) == 30
    assert _stored(db) == [1, 3]


def test_a_group_that_cannot_have_the_write_lock_fails_together_without_running_its_writes(sqlite_db) -> None:  # noqa: ANN001
    db, path = sqlite_db
    other = _other_writer(path)
    runs: list[int] = []
    # Another process takes SQLite's write lock while the writes queue in this one.
    other.execute("BEGIN IMMEDIATE")
    commits = _commits(db)
    futures = _queued_behind_a_write(db, [_counted(_insert(x), runs) for x in (1, 2, 3)], writes=False)
    assert futures[0].result() == "first"  # it wrote nothing: it never needed SQLite's lock
    for future in futures[1:]:
        with pytest.raises(OperationalError, match="locked"):
            future.result()
    # The group waited for the lock once (the busy timeout) and its writes never ran; alone,
    # one after another, each would have waited as long again.
    assert runs == []
    other.execute("ROLLBACK")
    other.close()
    assert _stored(db) == [] and commits == []
