"""A write the database rolls back and asks to retry (serialization failure, deadlock) is
run again in a fresh transaction; any other error is not."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db.engine import Database, retrying
from tests.conftest import empty_tables, is_postgres


class FakeDriverError(Exception):
    """What psycopg raises: an error carrying the SQLSTATE PostgreSQL sent."""

    def __init__(self, sqlstate: str):
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def failing(*sqlstates: str):  # noqa: ANN201
    """A unit of work that fails once with each SQLSTATE given, then returns how many runs it took."""
    runs = []

    def run() -> int:
        runs.append(1)
        if len(runs) <= len(sqlstates):
            raise OperationalError("UPDATE …", {}, FakeDriverError(sqlstates[len(runs) - 1]))
        return len(runs)

    return run


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_a_write_the_database_asks_to_retry_is_run_again(sqlstate: str) -> None:
    pauses: list[float] = []
    assert retrying(failing(sqlstate), pause=pauses.append) == 2
    assert len(pauses) == 1 and 0 < pauses[0] < 1


@pytest.mark.parametrize("end", [0, 1], ids=["shortest", "longest"])
def test_retries_wait_longer_each_time_and_stop_after_three_runs(monkeypatch: pytest.MonkeyPatch, end: int) -> None:
    # The wait is jittered: pin the jitter to either end of its range, so the doubling is
    # checked exactly (two random draws may fall either way round).
    monkeypatch.setattr("app.db.engine.random.uniform", lambda low, high: (low, high)[end])
    pauses: list[float] = []
    assert retrying(failing("40P01", "40001"), pause=pauses.append) == 3
    assert pauses == pytest.approx([(0.01, 0.05)[end], (0.02, 0.1)[end]])
    with pytest.raises(OperationalError) as raised:
        retrying(failing("40P01", "40P01", "40P01"), pause=lambda _: None)
    assert raised.value.orig.sqlstate == "40P01"


# 55P03, lock_not_available: a serving process's lock timeout ran out, a wait long enough
# already (it is answered 503 at once, tests/api/test_lock_waits.py).
@pytest.mark.parametrize("sqlstate", ["08006", "57P01", "23505", "55P03", None])
def test_other_database_errors_are_not_retried(sqlstate: str | None) -> None:
    orig = FakeDriverError(sqlstate) if sqlstate else Exception("database is locked")
    runs = []

    def run() -> None:
        runs.append(1)
        raise OperationalError("INSERT …", {}, orig)

    with pytest.raises(OperationalError):
        retrying(run, pause=lambda _: pytest.fail("must not wait"))
    assert len(runs) == 1


def test_a_deadlock_between_two_transactions_is_resolved_by_running_the_loser_again(database: Database) -> None:
    if database.is_sqlite:
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE), so two write transactions cannot deadlock")
    empty_tables(database.engine)
    with database.session(write=True) as s:
        s.execute(text("INSERT INTO service_state (key, value) VALUES ('a', '0'), ('b', '0')"))
    both_hold_one = threading.Barrier(2)
    runs: dict[str, int] = {"a": 0, "b": 0}

    def lock_in_order(first: str, second: str) -> None:
        def work(session) -> None:  # noqa: ANN001
            runs[first] += 1
            session.execute(text("UPDATE service_state SET value = value || '+' WHERE key = :k"), {"k": first})
            if runs[first] == 1:
                both_hold_one.wait(timeout=10)  # each now holds one row and wants the other's
            session.execute(text("UPDATE service_state SET value = value || '+' WHERE key = :k"), {"k": second})

        database.transaction(work)

    threads = [threading.Thread(target=lock_in_order, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    with database.session(write=False) as s:
        values = dict(s.execute(text("SELECT key, value FROM service_state ORDER BY key")).all())
    # PostgreSQL aborted one of them (40P01); it ran again, so both committed exactly once.
    assert sorted(runs.values()) == [1, 2]
    assert values == {"a": "0++", "b": "0++"}


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_is_what_the_caller_gets_even_when_the_rollback_after_it_fails(database: Database, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]) -> None:
    """A hunt's find: Ctrl-C landing in a commit's after-commit hook (or mid-statement on
    PostgreSQL) left a session whose rollback failed, and that failure replaced the
    interrupt: an import ended with a traceback and exit 1 or 3, not 130."""
    from sqlalchemy.exc import InvalidRequestError
    from sqlalchemy.orm import Session

    def refuse(_self: Session) -> None:
        raise InvalidRequestError("This session is in 'committed' state; no further SQL can be emitted within this transaction.")

    def work(session: Session) -> None:
        session.execute(text("SELECT 1"))
        monkeypatch.setattr(Session, "rollback", refuse)
        raise interrupt()

    with pytest.raises(interrupt):
        database.transaction(work, write=False)
    monkeypatch.undo()
    assert database.transaction(lambda session: session.execute(text("SELECT 1")).scalar_one(), write=False) == 1


def test_a_pool_that_finds_every_connection_closed_by_the_server_is_a_lost_connection(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A faults hunt's find: with the server ending connections faster than the pool opens
    them, SQLAlchemy's pool gave up with a bare InvalidRequestError, and a request answered
    500. It is a lost connection, as a DBAPIError says one: a 503 to a request, exit 3."""
    from app.db import engine as engine_module

    if not is_postgres(migrated):
        pytest.skip("SQLite has no server to end connections")
    db = Database(engine_module.make_engine(migrated))
    try:
        monkeypatch.setattr(engine_module, "has_input", lambda _fileno: True)  # each connection: "ended by the server"
        with pytest.raises(OperationalError) as caught:
            db.transaction(lambda session: session.execute(text("SELECT 1")).scalar_one())
        assert caught.value.connection_invalidated and "three in a row" in str(caught.value.orig)
        monkeypatch.undo()
        assert db.transaction(lambda session: session.execute(text("SELECT 1")).scalar_one()) == 1
    finally:
        db.dispose()
