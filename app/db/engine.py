"""Engine and sessions. SQLite runs as production SQLite should: WAL, synchronous=NORMAL,
a busy timeout, foreign keys on, and write transactions that start with BEGIN IMMEDIATE
so writers queue for the single write lock instead of failing mid-transaction.

On PostgreSQL a write transaction may be told to run again (a deadlock, a serialization
failure): `Database.transaction` does so, a few times, before the error reaches the caller."""

from __future__ import annotations

import functools
import logging
import math
import random
import sqlite3
import time
import threading
import weakref
from contextlib import closing, contextmanager, nullcontext
from collections import namedtuple
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NoReturn, TypeVar

from sqlalchemy import Column, ColumnElement, CompoundSelect, Connection, Dialect, Engine, Executable, Float, Numeric, Result, Select, String, any_, bindparam, create_engine, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, InvalidRequestError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.types import TypeEngine

from app.chunks import chunked
from app.db.log_cache import LogCache, keep_logs
from app.db.sockets import has_input
from app.db.types import UTCDateTime, loads_json, sqlite_instant

if TYPE_CHECKING:
    from app.db.loop_reads import LoopReads
    from app.settings import Settings

# How a SQLite transaction begins in this thread's context: BEGIN (a read: one snapshot
# from the first statement) or BEGIN IMMEDIATE (a write: the write lock from the first
# statement, so writers queue instead of failing mid-transaction). Set with `sqlite_begin`.
_SQLITE_BEGIN: ContextVar[str] = ContextVar("rapport_sqlite_begin", default="BEGIN")
WRITE_BEGIN = "BEGIN IMMEDIATE"


@contextmanager
def sqlite_begin(statement: str) -> Iterator[None]:
    """SQLite transactions begun inside this block begin with `statement`."""
    token = _SQLITE_BEGIN.set(statement)
    try:
        yield
    finally:
        _SQLITE_BEGIN.reset(token)


def _do_begin(dbapi_connection: Any) -> None:
    """The SQLite dialect's `do_begin`: pysqlite (isolation_level None) begins nothing itself."""
    dbapi_connection.execute(_SQLITE_BEGIN.get())


# SQLSTATEs with which PostgreSQL rolls a transaction back and asks for it to be run again:
# serialization_failure and deadlock_detected. Not lock_not_available: that is a serving
# process's lock_timeout run out (`make_engine`), a wait long enough already, which is
# answered at once (`is_lock_timeout`) rather than waited through again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
LOCK_NOT_AVAILABLE = "55P03"
ATTEMPTS = 3

T = TypeVar("T")
log = logging.getLogger("rapport.db")


def is_retryable(exc: BaseException) -> bool:
    """Whether the database rolled the transaction back and asks for it to be run again."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def driver_reason(exc: DBAPIError) -> str:
    """The first line of what the driver said ("database or disk is full", "attempt to write
    a readonly database", "terminating connection due to administrator command"): not
    SQLAlchemy's text, which carries the statement and its parameters."""
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:300]


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether PostgreSQL gave up waiting for a lock another transaction held (the serving
    process's lock_timeout)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def is_busy(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting for a lock another connection held (SQLITE_BUSY, after
    the busy timeout)."""
    return isinstance(exc, DBAPIError) and str(getattr(exc.orig, "sqlite_errorname", "")).startswith("SQLITE_BUSY")


def backoff(attempt: int) -> float:
    """Seconds to wait before running a transaction again: short, growing, and jittered so
    the transactions that collided do not collide again in step."""
    return random.uniform(0.01, 0.05) * 2 ** (attempt - 1)


def retrying(run: Callable[[], T], *, attempts: int = ATTEMPTS, pause: Callable[[float], None] = time.sleep) -> T:
    """`run()`, run again (up to `attempts` times in all) while it fails with an error the
    database asks to retry; any other error, or the last retryable one, is raised."""
    attempt = 1
    while True:
        try:
            return run()
        except DBAPIError as exc:
            if attempt >= attempts or not is_retryable(exc):
                raise
            log.info("transaction rolled back by the database (SQLSTATE %s): running it again", exc.orig.sqlstate)  # type: ignore[union-attr]
            pause(backoff(attempt))
            attempt += 1


SQLITE_NEEDED = (3, 35, 0)


@functools.cache  # a SQLite that passed once passes for the process: not re-checked per engine
def check_sqlite(version: tuple[int, ...] = sqlite3.sqlite_version_info) -> None:
    """Refuse, before serving, a SQLite that would fail requests later: event inserts use
    `INSERT … ON CONFLICT DO NOTHING RETURNING` (3.35) and grading compares grades with
    `json()` (built in since 3.38, an extension before that)."""
    if version < SQLITE_NEEDED:
        found = ".".join(map(str, version))
        raise RuntimeError(f"Rapport needs SQLite {'.'.join(map(str, SQLITE_NEEDED))} or later; this Python has SQLite {found}")
    with closing(sqlite3.connect(":memory:")) as conn:
        try:
            conn.execute("SELECT json('{}')")
        except sqlite3.OperationalError:
            raise RuntimeError("Rapport needs SQLite's JSON functions (json()); this Python's SQLite was built without them") from None


# PostgreSQL: a connection whose server vanished without a word (a network cut, a host that
# stopped) would leave the request on it waiting for as long as TCP keeps trying (about 15
# minutes for data sent, for ever for a reply awaited): keepalives and a send timeout end
# it within about 30 s, and a connect gives up after 10 s; the request is then a 503 and
# `/readyz` says not ready. libpq's names; a URL that sets one (`?connect_timeout=3`) wins.
NETWORK_TIMEOUTS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 10_000, pool_size: int = 20, echo: bool = False, lock_timeout_ms: int = 0) -> Engine:
    """The engine for `url`. `pool_size` connections are kept open: a request borrows one or
    two, and a connection the pool cannot keep is closed when returned — above the pool's
    size, each request would open (and set up) a fresh connection, and under load that was
    a third of a read's time. Keep it at least the number of requests served at once.

    `lock_timeout_ms` (PostgreSQL; 0: none): how long a statement waits for a lock, set on
    each connection as it opens (no round trip per request). A serving process has a few
    worker threads: two writes waiting on a row held from psql held them all, and the
    process answered nothing else, /readyz included, for as long as it was held (a hunt's
    find). Commands (regrade, import, a rulebook switch) wait as long as it takes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        check_sqlite()
        memory = parsed.database in (None, "", ":memory:")
        pool = {} if memory else {"pool_size": pool_size, "max_overflow": 10}
        engine = create_engine(url, echo=echo, json_deserializer=loads_json, connect_args={"check_same_thread": False, "timeout": sqlite_busy_timeout_ms / 1000}, **pool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # noqa: ANN001
            # Let SQLAlchemy's begin event, not pysqlite, decide how a transaction starts.
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # lower() as Python folds case: SQLite's own folds only ASCII, and the text filter
            # `q` must find "ÄBC" and full-width "ＡＢＣ" (app/services/paging.py, `containing`).
            # Deterministic, so SQLite folds a constant argument (the pattern) once.
            dbapi_connection.create_function("unicode_lower", 1, lambda text: text.lower() if isinstance(text, str) else text, deterministic=True)

        # The dialect's own begin, not SQLAlchemy's "begin" event: an engine with a listener
        # for any connection event dispatches every event of every statement, and that was
        # a fifth of a one-statement read's CPU (docs/performance.md, "The state round").
        engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]
        return engine
    # No pool_pre_ping: it cost a round trip on every checkout (0.65 ms of CPU per event
    # POST, 12 %). `_closed_by_server` finds the connections a restart or an idle timeout
    # ended without one, before the request's first statement (the key check) fails.
    timeouts: dict[str, Any] = {name: value for name, value in NETWORK_TIMEOUTS.items() if name not in parsed.query}
    if lock_timeout_ms:
        # Added to the URL's own `options` (which connect_args would otherwise replace).
        given = parsed.query.get("options", "")
        given = " ".join(given) if isinstance(given, tuple) else given
        timeouts["options"] = f"{given} -c lock_timeout={int(lock_timeout_ms)}".strip()
    engine = create_engine(url, echo=echo, json_deserializer=loads_json, pool_size=pool_size, max_overflow=10, connect_args=timeouts)
    event.listen(engine, "checkout", _closed_by_server)
    _CONNECT_ARGS[engine] = timeouts
    return engine


# What `make_engine` added to a PostgreSQL engine's URL for its connections (the network
# timeouts, the lock timeout), for the connections the event loop's reads open (`LoopReads`).
_CONNECT_ARGS: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()


def connect_params(engine: Engine) -> dict[str, Any]:
    """The driver's parameters a PostgreSQL engine's connections open with: its URL's (and
    the dialect's type adapters: JSON decoded as SQLAlchemy's results decode it), and what
    `make_engine` added."""
    _, params = engine.dialect.create_connect_args(engine.url)
    return {**params, **_CONNECT_ARGS.get(engine, {})}


class ConnectionLost(Exception):
    """The `orig` of the OperationalError that `Database.session` raises for `checkout_exhausted`."""


def checkout_exhausted(exc: BaseException) -> bool:
    """Whether SQLAlchemy's pool gave up checking out a connection: `_closed_by_server`
    found each one it tried ended by the server (a storm of `pg_terminate_backend`, a
    restart), and the pool says so with a bare InvalidRequestError, no DBAPIError. Its
    ResourceClosedError subclass (a Connection used after close) is a bug, not this."""
    return type(exc) is InvalidRequestError and str(exc) == "This connection is closed"


def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pool checkout listener (PostgreSQL): a pooled connection with something to read
    was ended by the server, which says so before it closes (a restart, an idle timeout,
    `pg_terminate_backend`: FATAL, then the end of the stream; a crash: the end of the
    stream). Nothing else comes unasked on an idle connection of ours (no LISTEN), and if
    something did, the cost is a new connection. SQLAlchemy's pool then drops it with every
    connection pooled before it, and checks out a fresh one: the request is served, where
    its first statement would have failed. One poll(2) with no wait, not a round trip."""
    if has_input(dbapi_connection.fileno()):
        raise InvalidatePoolError("the server closed this pooled connection")


def for_reads(engine: Engine) -> Engine:
    """`engine` as reads use it. On PostgreSQL in autocommit, outside any transaction: under
    READ COMMITTED each statement sees what was committed before it, with or without a
    transaction around it, so the BEGIN and ROLLBACK psycopg sends around a read buy
    nothing but two round trips (docs/performance.md, "The serving round"). A read that
    needs one snapshot asks for it (`Database.snapshot`). SQLite keeps its deferred BEGIN:
    calls in process, no round trips."""
    return engine if engine.dialect.name == "sqlite" else engine.execution_options(isolation_level="AUTOCOMMIT")


# PostgreSQL: the most connections an event loop's reads keep open (`LoopReads`), beside the
# engine's pool; opened as reads in flight need them. Served at 16 clients, 8 answered more
# customer reads a second (4,617) than 4 (3,565) or 16 (4,221), on 2 cores.
LOOP_CONNECTIONS = 8


def _loop_reads(engine: Engine, size: int) -> LoopReads:
    # Imported here: psycopg is installed with the `postgres` extra only, and SQLite needs none.
    from app.db.loop_reads import LoopReads

    return LoopReads(connect_params(engine), size)


class _Writes:
    """How many write sessions are open, across threads, for waiting until none is."""

    def __init__(self) -> None:
        self.open = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self.open += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self.open -= 1
            if not self.open:
                self._changed.notify_all()

    def wait(self) -> None:
        with self._changed:
            while self.open:
                self._changed.wait()


class Database:
    """Hands out sessions: read sessions, and write sessions that serialize writers on
    SQLite (BEGIN IMMEDIATE). Row locks do the serializing on PostgreSQL."""

    def __init__(self, engine: Engine, *, log_cache_events: int = 100_000, loop_connections: int = LOOP_CONNECTIONS):
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # PostgreSQL: the connections the event loop's one-statement reads take (`alone_on_loop`).
        self._loop_reads = None if self.is_sqlite else _loop_reads(engine, loop_connections)
        self._read = sessionmaker(bind=for_reads(engine), expire_on_commit=False)
        self._write = sessionmaker(bind=engine, expire_on_commit=False)
        self.logs = LogCache(log_cache_events)
        keep_logs(self._write, self.logs)
        # The write sessions open now: a stopping server waits for them (`wait_for_writes`).
        self._writes = _Writes()
        # SQLite has one writer. Writers of this process queue here, in turn, rather than in
        # SQLite's busy handler, which polls with sleeps of up to 100 ms and so turns a
        # queue of 16 writers into seconds of idle waiting. (Other processes still queue in
        # the busy handler: one process is the SQLite set-up to run.)
        self._writer = _WriterLock() if self.is_sqlite else nullcontext()
        # SQLite: the connection the writes of this process take in turn, while they hold
        # `_writer` (`_writing_connection`). Not with an in-memory database, whose pool gives
        # each thread a connection (and a database) of its own.
        self._holds = self.is_sqlite and isinstance(engine.pool, QueuePool)
        self._held: Connection | None = None
        # SQLite: the writes waiting for their turn (`_in_turn`), and whether a thread is
        # running a group of them.
        self._turns = threading.Condition()
        self._waiting: list[_Turn] = []
        self._running = False
        # SQLite: the connection an event loop's one-statement reads take (`alone_on_loop`), kept
        # between them (`_reading_connection`); every one of them, for `dispose`.
        self._reader = threading.local()
        self._readers: list[PoolProxiedConnection] = []
        self._readers_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, serving: bool = False) -> Database:
        """The database the settings name, with their busy timeout and pool size, and for a
        `serving` process their lock timeout."""
        # Rounded up: a setting below a millisecond is a timeout, not 0 (no limit).
        lock_timeout_ms = math.ceil(settings.lock_timeout_seconds * 1000) if serving else 0
        engine = make_engine(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms, pool_size=settings.db_pool_size, lock_timeout_ms=lock_timeout_ms)
        # A pool made small for a server's `max_connections` keeps the loop's reads as small.
        return cls(engine, log_cache_events=settings.log_cache_events, loop_connections=min(settings.db_pool_size, LOOP_CONNECTIONS))

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        """The one place that commits: commit on success, roll back on any error."""
        try:
            with self._writes if write else nullcontext(), self._writer if write else nullcontext(), sqlite_begin(WRITE_BEGIN if write else "BEGIN"), self._new_session(write) as session:
                try:
                    yield session
                    if write:
                        session.commit()
                    else:
                        session.rollback()
                except BaseException:
                    try:
                        session.rollback()
                    except Exception as failed:
                        # What went wrong first is what the caller is told (the bare raise
                        # below): a rollback that fails after it (the connection already lost,
                        # or the session committed when an interrupt came in its after-commit
                        # hook) replaced a Ctrl-C, and an import ended in a traceback, not exit
                        # 130 (a hunt's find).
                        log.warning("rolling back after an error failed too: %s: %s", type(failed).__name__, (str(failed).splitlines() or [""])[0])
                    raise
        except InvalidRequestError as exc:
            if not checkout_exhausted(exc):
                raise
            # A database error, as any other lost connection: a 503 to a request, exit 3 to a
            # command (it was a 500 under a storm of killed connections, a faults hunt's find).
            raise OperationalError(None, None, ConnectionLost("the server closed each connection the pool tried, three in a row"), connection_invalidated=True) from exc

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read session that sees one snapshot of the database from its first statement to
        its end, for a read of many statements that must agree (`rapport verify`). SQLite's
        read transaction is one already; PostgreSQL's read sessions run each statement on
        its own (autocommit), so this one runs in a REPEATABLE READ transaction."""
        with self.session(write=False) as session:
            if not self.is_sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    def _new_session(self, write: bool) -> Session:
        if not write:
            return self._read()
        held = self._writing_connection()
        return self._write() if held is None else self._write(bind=held)

    def _writing_connection(self) -> Connection | None:
        """SQLite: the connection this process's writes use, one after another (the caller
        holds `_writer`), kept open between them; None elsewhere, or for a write begun
        inside another in this thread, which takes a pooled connection as every write did.

        Borrowing a pooled connection for every write and giving it back (the pool's
        checkout and checkin, its reset, its listeners) was 2.3 % of a single event POST's
        instructions (docs/performance.md, "The held-writer round"). A connection an error
        left unusable (invalidated) is closed and replaced here, before the next write."""
        if not self._holds:
            return None
        held = self._held
        if held is not None and held.in_transaction():
            return None
        if held is None or held.closed or held.invalidated:
            if held is not None:
                held.close()
            held = self._held = self.engine.connect()
        return held

    @property
    def writes_open(self) -> int:
        """How many write sessions are open now, in any thread."""
        return self._writes.open

    def wait_for_writes(self) -> None:
        """Return once no write session is open: each has committed or rolled back."""
        self._writes.wait()

    def dispose(self) -> None:
        """Close every connection of this database: the held writer's (after the write that
        has it, if any) and the engine's pooled ones."""
        with self._writer:
            if self._held is not None:
                self._held.close()
                self._held = None
        with self._readers_lock:
            for reader in self._readers:
                reader.close()  # its thread takes a fresh one at its next read
            self._readers.clear()
        if self._loop_reads is not None:
            self._loop_reads.dispose()
        self.engine.dispose()

    async def alone_on_loop(self, statement: Select[Any] | CompoundSelect, **params: Any) -> Rows:
        """The rows of a prebuilt one-statement read, run on the running event loop in
        autocommit mode, no transaction around it; tuples whose values are also their
        columns' attributes. For the read every request makes (the API-key check) and the
        busiest ones (a customer or a project by its id or code): one statement answers each,
        and reads one snapshot on either engine. On SQLite the read runs in process
        (microseconds, less than a worker thread's hand-off: "The loop-read round"); on
        PostgreSQL on the loop's own connections (`LoopReads`), where the hand-off to a worker
        thread and back cost more CPU than the read ("The loop-read round on PostgreSQL").

        The statement runs on the driver's cursor (`_CursorStatement`): SQLAlchemy's
        per-execution work (a `Connection`, its execution context and result) was 45 of the
        52 µs of CPU the read cost on SQLite, where SQLite's own work was 5; on PostgreSQL the
        read took 187 µs through SQLAlchemy and 101 µs on the cursor. A driver's error is
        raised as SQLAlchemy's: a database away is its OperationalError, which the API
        answers with a 503 to retry."""
        compiled = _cursor_statement(statement, self.engine.dialect)
        assert compiled is not None and not compiled.expanding, "a read by `alone_on_loop` has no expanding parameters"
        arguments = compiled.arguments(params)
        if self._loop_reads is None:
            return self._sqlite_alone(compiled, arguments)
        driver_error = self.engine.dialect.loaded_dbapi.Error
        try:
            fetched = await self._loop_reads.fetch(compiled.sql, arguments, returns=bool(compiled.converters))
        except driver_error as exc:
            raise DBAPIError.instance(compiled.sql, arguments, exc, driver_error) from exc
        return compiled.converted(fetched)

    async def first_on_loop(self, statement: Select[Any] | CompoundSelect, **params: Any) -> Any:
        """The first row of `alone_on_loop`'s read, or None."""
        return (await self.alone_on_loop(statement, **params)).first()

    def _sqlite_alone(self, compiled: _CursorStatement, arguments: Any) -> Rows:
        try:
            conn = self._reading_connection()
        except sqlite3.Error as exc:  # the file cannot be opened: SQLAlchemy's error, as below
            raise DBAPIError.instance(compiled.sql, arguments, exc, sqlite3.Error) from exc
        kept = self._kept(conn)
        try:
            return compiled.rows(conn, arguments)
        except sqlite3.Error as exc:
            if kept:  # whatever state the error left it in, it is not used again
                self._drop_reader(conn)
            raise DBAPIError.instance(compiled.sql, arguments, exc, sqlite3.Error) from exc
        finally:
            if not kept:
                conn.close()  # back to the pool

    def _reading_connection(self) -> PoolProxiedConnection:
        """SQLite: the connection an event loop's one-statement reads take (`alone_on_loop`:
        on a serving process, its reads of keys, customers and projects), one per loop's
        thread, checked out of the pool at the first and kept: checking a connection out and
        back in for each read (the pool's bookkeeping and its reset, a rollback) cost 18 µs,
        about a twentieth of a customer read's CPU. A statement on it opens no transaction
        (pysqlite is left in autocommit, `make_engine`) and leaves no read snapshot open
        (`_CursorStatement.rows` closes its cursor), so the kept connection sees every
        commit, as a fresh one would. Only loops' threads read here, never the worker
        threads, which retire when idle: one that kept a connection would keep it from the
        pool for good (a review's find: 30 of them would have exhausted it). An in-memory
        database's pool already gives each thread its own."""
        if not self._holds:
            return self.engine.raw_connection()
        reader = self._reader
        conn: PoolProxiedConnection | None = getattr(reader, "conn", None)
        if conn is None or conn.dbapi_connection is None:  # none yet, or closed by `dispose`
            conn = reader.conn = self.engine.raw_connection()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _kept(self, conn: PoolProxiedConnection) -> bool:
        return getattr(self._reader, "conn", None) is conn

    def _drop_reader(self, conn: PoolProxiedConnection) -> None:
        self._reader.conn = None
        with self._readers_lock:
            if conn in self._readers:
                self._readers.remove(conn)
        conn.invalidate()  # closed, not pooled again

    def transaction(self, work: Callable[[Session], T], *, write: bool = True) -> T:
        """`work(session)` in a transaction of its own, committed as `session` commits; run
        again in a fresh transaction if the database rolls it back and asks for a retry.
        `work` must therefore have no effect outside its session (it may run more than once).

        On SQLite a write may share its transaction with the writes that waited for their
        turn beside it (`_in_turn`): what it returns or raises is what it would have alone,
        run after those before it had committed."""
        if write and self._holds and not self._writer.held():  # not a write inside a write
            return self._in_turn(work)
        return retrying(functools.partial(self._once, work, write=write))

    def _once(self, work: Callable[[Session], T], *, write: bool = True) -> T:
        with self.session(write=write) as session:
            return work(session)

    def _in_turn(self, work: Callable[[Session], T]) -> T:
        """SQLite: `work` in turn with the other writes of this process (group commit). A
        write that finds no group running runs every write waiting then, in the order they
        came, in one transaction with one commit; the threads whose writes it ran
        take their outcomes, and of those that came meanwhile one runs the next group. A
        write alone cost a BEGIN IMMEDIATE, a COMMIT and a session of its own, and the
        writes queued on the lock handed it (and the GIL) from thread to thread: with 16
        clients and 4 worker threads, writes ran 1.75 to a group and an event POST took
        1.39-1.66 ms of CPU against 1.87-2.09 (docs/performance.md, "The held-writer round").

        Each write sees what the ones before it wrote, as it would have after their commits.
        If one fails, the group is rolled back and the others run again (`_run_group`): so a
        write's outcome never depends on another's failure. (Works may run more than once,
        as `transaction` says already.)"""
        turn = _Turn(work)
        with self._turns:
            self._waiting.append(turn)
            while self._running and not turn.done:
                self._turns.wait()
            runs = not turn.done
            if runs:  # nobody runs a group: this thread runs every write that waits
                self._running = True
                group, self._waiting = self._waiting, []
        if runs:
            try:
                self._run_group(group)  # each of its sessions holds the writer lock
            finally:
                with self._turns:  # the threads served take their outcomes; one of the others runs next
                    self._running = False
                    self._turns.notify_all()
        return turn.outcome()

    def _run_group(self, group: list[_Turn]) -> None:
        """Run `group` in one transaction. A write that fails on its own account (an error
        that is not the database's: an invalid event, an unknown customer) has its outcome:
        alone, after the writes before it had committed, it would have seen what it saw
        here and failed the same way. The group is rolled back and runs again without it.
        If the database fails (or the commit does), each write runs again alone, with the
        retry `transaction` gives a write; unless the group never had the write lock."""
        try:
            while len(group) > 1:
                failed: _Turn | None = None
                locked = False
                try:
                    with self.session(write=True) as session:
                        session.connection()  # BEGIN IMMEDIATE: SQLite's write lock, before any write runs
                        locked = True
                        for failed in group:
                            failed.value = failed.work(session)
                        failed = None
                    for turn in group:
                        turn.done = True
                    return
                except Exception as exc:
                    for turn in group:
                        turn.value = None  # rolled back: none of them counted
                    if not locked and is_busy(exc):
                        # Another process held the write lock for the whole busy timeout. Run
                        # alone, one after another, each write would wait as long again: a
                        # group of n took n + 1 timeouts to answer. They fail together, with
                        # the error a write that waits too long gets (a 503 with Retry-After).
                        for turn in group:
                            turn.error, turn.done = exc, True
                        return
                    if failed is None or isinstance(exc, SQLAlchemyError):
                        break
                    failed.error, failed.done = exc, True
                    group = [turn for turn in group if turn is not failed]
            for turn in group:
                try:
                    turn.value = retrying(functools.partial(self._once, turn.work))
                except Exception as exc:
                    turn.error = exc
                turn.done = True
        except BaseException as exc:  # the thread is stopping: the writes not run fail with it
            for turn in group:
                if not turn.done:
                    turn.error, turn.done = exc, True
            raise


class _WriterLock:
    """The lock the writers of a SQLite database take in turn in one process, re-entrant,
    which tells whether this thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth.value = getattr(self._depth, "value", 0) + 1

    def __exit__(self, *_: object) -> None:
        self._depth.value -= 1
        self._lock.release()

    def held(self) -> bool:
        return getattr(self._depth, "value", 0) > 0


@dataclass(slots=True, eq=False)
class _Turn:
    """A write waiting for its turn (`Database._in_turn`), and its outcome once run."""

    work: Callable[[Session], Any]
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Rows(list[Any]):
    """The rows of a statement `run` ran, fetched: a list with the ways of SQLAlchemy's
    `Result` its callers use."""

    @classmethod
    def of(cls, result: Result[Any]) -> Rows:
        return cls(result.all() if result.returns_rows else ())

    def first(self) -> Any:
        return self[0] if self else None

    def all(self) -> Rows:
        return self

    def scalars(self) -> list[Any]:
        return [row[0] for row in self]


@dataclass(frozen=True)
class _CursorStatement:
    """A prebuilt select, INSERT, UPDATE or DELETE, compiled once for its dialect and run
    on the DBAPI cursor of the connection SQLAlchemy holds: the SQL, its parameters (with
    the values the statement itself binds), their bind processors, and the result
    processors of the columns it selects or returns, so values go in and come out as
    SQLAlchemy's own execution converts them. Not for a statement that sets a column from
    a Python-side default. A statement with an expanding parameter (an IN list) runs here
    on sqlite3 only, with its SQL rendered per list length (`sql_for`), as SQLAlchemy
    renders it; on PostgreSQL a list goes as one array (`ByIds`).

    SQLAlchemy's per-execution work (execution context, parameter processing, result
    object) was 14 of the 16 µs of CPU a one-row select of a state cost on SQLite, and
    about 40 µs a statement on PostgreSQL; a single event's write runs six to nine.
    `run` takes this path only while nobody watches the engine's statements (`echo`, a
    `before_cursor_execute` listener, as the tests that count statements use), since
    it sends them past SQLAlchemy, and hands a driver's error to SQLAlchemy's own
    handling."""

    sql: str
    names: tuple[str, ...]
    # The names of the parameters in the SQL, for a driver that takes them by name
    # (psycopg's %(name)s); None for one that takes them in order (sqlite3's ?).
    keys: tuple[str, ...] | None
    fixed: dict[str, Any]
    binds: tuple[Callable[[Any], Any] | None, ...]
    converters: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[..., Any]
    # The parameters that take a list (`IN`), by name: each of their values is bound in turn.
    expanding: tuple[str, ...] = ()

    @classmethod
    def of(cls, statement: Select[Any] | CompoundSelect | UpdateBase, dialect: Dialect) -> _CursorStatement | None:
        compiled = statement.compile(dialect=dialect)
        lists = any(b.expanding for b in compiled.binds.values())
        if (lists and not compiled.positional) or compiled.insert_prefetch or compiled.update_prefetch:
            return None  # a list in named parameters, or a column default SQLAlchemy computes per run
        names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        expanding = tuple(sorted({name for name in names if compiled.binds[name].expanding}))
        keys = None if compiled.positional else tuple((compiled.escaped_bind_names or {}).get(name, name) for name in names)
        fixed = {name: b.effective_value for name, b in compiled.binds.items() if not b.required}
        binds = tuple(_bind_processor(compiled.binds[name].type, dialect) for name in names)
        columns = statement.exported_columns if isinstance(statement, UpdateBase) else statement.selected_columns  # what it returns
        server_types = [_server_type(c, dialect) for c in columns]
        if _UNTOLD in server_types:
            return None
        converters = tuple(c.type.dialect_impl(dialect).result_processor(dialect, t) for c, t in zip(columns, server_types))
        row = namedtuple("Row", list(columns.keys()), rename=True)  # type: ignore[misc]
        return cls(compiled.string, names, keys, fixed, binds, converters, row, expanding)

    def arguments(self, params: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        """The driver's parameters for `params` (and the statement's own values)."""
        values = [(params[name] if name in params else self.fixed[name]) for name in self.names]
        if self.expanding:
            return [value if bind is None else bind(value) for bind, name, given in zip(self.binds, self.names, values) for value in (given if name in self.expanding else (given,))]
        values = [value if bind is None else bind(value) for bind, value in zip(self.binds, values)]
        return values if self.keys is None else dict(zip(self.keys, values))

    def sql_for(self, params: Mapping[str, Any]) -> str | None:
        """The SQL for `params`: its lists' placeholders rendered for their lengths; None if a
        list is empty (SQLAlchemy renders an empty IN as an expression of its own)."""
        if not self.expanding:
            return self.sql
        lengths = tuple(len(params[name] if name in params else self.fixed[name]) for name in self.expanding)
        return None if 0 in lengths else _expanded_sql(self.sql, self.expanding, lengths)

    def run_many(self, pooled: PoolProxiedConnection, arguments: list[list[Any]] | list[dict[str, Any]]) -> None:
        """Run the statement, which returns nothing, once per argument set: the driver's
        executemany (sqlite3 loops in C; psycopg sends every set in one pipeline). Raises
        the driver's error, which the caller hands to SQLAlchemy."""
        cursor = pooled.dbapi_connection.cursor() if self.keys is None else self._kept_cursor(pooled)
        try:
            cursor.executemany(self.sql, arguments)
        finally:
            if self.keys is None:
                cursor.close()

    @staticmethod
    def _kept_cursor(pooled: PoolProxiedConnection) -> Any:
        """psycopg: one cursor per connection, kept with it (the pool's `info` is the
        connection's own, emptied if it is replaced). A one-row read in a loop took 71 µs
        of CPU with a new cursor each time and 57 µs with one kept; an event POST, 1.2 %
        fewer instructions (bench/instructions.py)."""
        cursor = pooled.info.get(_KEPT_CURSOR)
        if cursor is None:
            cursor = pooled.info[_KEPT_CURSOR] = pooled.dbapi_connection.cursor()
        return cursor

    def rows(self, pooled: PoolProxiedConnection, arguments: list[Any] | dict[str, Any], *, sql: str | None = None) -> Rows:
        """Run the statement (or `sql`: its form for the lengths of its lists, `sql_for`, or
        its many-rows form, `run_many`) on the pooled connection with `arguments` and fetch
        what it returns. Raises the driver's error, which the caller hands to SQLAlchemy."""
        if self.keys is None:  # sqlite3
            cursor = pooled.dbapi_connection.cursor()
            try:
                cursor.execute(sql or self.sql, arguments)
                fetched = cursor.fetchall()
            finally:
                cursor.close()  # it resets the statement: no read snapshot stays open
        else:
            cursor = self._kept_cursor(pooled)
            cursor.execute(sql or self.sql, arguments)
            # psycopg refuses to fetch from a statement that returns no rows.
            fetched = cursor.fetchall() if self.converters else ()
        return self.converted(fetched)

    def converted(self, fetched: Iterable[Any]) -> Rows:
        """The driver's rows as SQLAlchemy's execution would give them."""
        converters, row = self.converters, self.row
        # A NULL is None whatever the column's type (every converter maps None to None):
        # a project read's rows are half NULLs (`projects._with_bids`).
        return Rows(row(*[value if convert is None or value is None else convert(value) for convert, value in zip(converters, r)]) for r in fetched)


_KEPT_CURSOR = "rapport_cursor"
# PostgreSQL's type oid of NUMERIC: what the server sends for a column declared NUMERIC.
_PG_NUMERIC = 1700
_UNTOLD = object()


def _server_type(column: ColumnElement[Any], dialect: Dialect) -> object:
    """The type the server will say a selected column has, where SQLAlchemy's conversion of
    its values depends on it (a result's description tells it; this statement runs before
    there is one): on PostgreSQL, a NUMERIC comes back as psycopg's Decimal, which
    SQLAlchemy turns into a float where the column asks for one, while a float column comes
    back as a float. A table's own NUMERIC column is sent as numeric (a project's
    `amount`, on every project read); of another numeric expression it cannot be told
    (`_UNTOLD`). None elsewhere: the conversion does not depend on it."""
    if dialect.name != "postgresql" or not isinstance(column.type, Numeric):
        return None
    if isinstance(column, Column) and column.table is not None and not isinstance(column.type, Float):
        return _PG_NUMERIC
    return _UNTOLD


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """How a value of `type_` goes to the driver: as SQLAlchemy binds it, and an instant on
    SQLite by `sqlite_instant`, which gives the same text in one step (a single event's write
    binds several: its times, and the dates of the grades it changes)."""
    if dialect.name == "sqlite" and isinstance(type_, UTCDateTime):
        return sqlite_instant
    return type_.dialect_impl(dialect).bind_processor(dialect)


@functools.lru_cache(maxsize=256)
def _expanded_sql(sql: str, names: tuple[str, ...], lengths: tuple[int, ...]) -> str:
    """`sql` (sqlite3's parameters) with each list's placeholder as SQLAlchemy renders it for
    a list of that length. Cached: a grading pass asks for the same few lengths."""
    for name, length in zip(names, lengths):
        sql = sql.replace(f"__[POSTCOMPILE_{name}]", _placeholders(length))
    return sql


# By the statement's id, with the statement and the dialect it was compiled for (so a
# reused id, or another engine's dialect, compiles anew). The statements are prebuilt
# module constants; the bound only keeps a caller building them per call from growing it.
_CURSOR_STATEMENTS: dict[int, tuple[Any, Dialect, _CursorStatement | None]] = {}
_CURSOR_STATEMENTS_MAX = 1024


def _cursor_statement(statement: Executable, dialect: Dialect) -> _CursorStatement | None:
    kept = _CURSOR_STATEMENTS.get(id(statement))
    if kept is not None and kept[0] is statement and kept[1] is dialect:
        return kept[2]
    compiled = _CursorStatement.of(statement, dialect) if isinstance(statement, (Select, CompoundSelect, UpdateBase)) else None
    if len(_CURSOR_STATEMENTS) >= _CURSOR_STATEMENTS_MAX:
        _CURSOR_STATEMENTS.clear()
    _CURSOR_STATEMENTS[id(statement)] = (statement, dialect, compiled)
    return compiled


def run(session: Session, statement: Executable, **params: Any) -> Rows:
    """Run a prebuilt Core `statement` on the session's connection, after flushing what the
    session holds (as the ORM's autoflush would), and fetch its rows. For the statements
    every write runs: building a statement and running it through the ORM cost three
    times what running a prebuilt one as Core costs (docs/performance.md). A statement
    runs on the DBAPI cursor (`_CursorStatement`), unless statements are watched."""
    session.flush()
    conn = session.connection()
    compiled = _unwatched(conn, statement)
    sql = None if compiled is None else compiled.sql_for(params)
    if compiled is not None and sql is not None:
        arguments = compiled.arguments(params)
        try:
            return compiled.rows(conn.connection, arguments, sql=sql)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_as_sqlalchemy(conn, exc, sql, arguments)
    return Rows.of(conn.execute(statement, params))


def _unwatched(conn: Connection, statement: Executable) -> _CursorStatement | None:
    """`statement` compiled for the cursor, unless nobody may see it sent past SQLAlchemy:
    while statements are watched (`echo`, a `before_cursor_execute` listener), or if it
    cannot run there (`_CursorStatement.of`)."""
    if conn.engine.echo or conn.dispatch.before_cursor_execute:
        return None
    return _cursor_statement(statement, conn.dialect)


def _raise_as_sqlalchemy(conn: Connection, exc: Exception, sql: str, arguments: Any) -> NoReturn:
    """What SQLAlchemy does with an error of its own execution: raise it as its own (an
    IntegrityError as its IntegrityError), and if the connection is gone, invalidate it and
    every connection pooled before it, so the session rolls back without it and later
    requests get fresh ones."""
    conn._handle_dbapi_exception(exc, sql, arguments, None, None)
    raise AssertionError("SQLAlchemy raises every error it handles")  # pragma: no cover


def run_many(session: Session, statement: Executable, params: list[dict[str, Any]]) -> Iterable[Any] | None:
    """`run` once per parameter set: the driver's executemany for a statement that returns
    nothing (None), or for an INSERT … RETURNING its rows, from one multi-row INSERT per
    chunk; None without parameters."""
    if not params:
        return None
    if len(params) == 1:  # a single event's write: one row per table
        return run(session, statement, **params[0])
    session.flush()
    conn = session.connection()
    compiled = _unwatched(conn, statement)
    if compiled is not None and compiled.expanding:
        compiled = None  # a list per parameter set: SQLAlchemy's executemany renders each
    # Through SQLAlchemy, each set of parameters went through its execution context: 12 % of
    # a 500-event batch, for grading's UPDATE of ~450 rows and the INSERT of the batch's
    # events (py-spy; docs/performance.md, "The cursor round").
    if compiled is not None and not compiled.converters:  # it returns nothing: the driver's executemany
        arguments = [compiled.arguments(p) for p in params]
        try:
            compiled.run_many(conn.connection, arguments)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_as_sqlalchemy(conn, exc, compiled.sql, arguments)
        return None
    if compiled is not None and compiled.keys is None and isinstance(statement, Insert):
        # sqlite3, an INSERT … RETURNING: one statement of many VALUES rows per chunk, as
        # SQLAlchemy's own "insertmanyvalues" sends it.
        width = len(compiled.names)
        rows = Rows()
        for chunk in chunked(params, max(1, min(_VALUES_ROWS, _SQLITE_PARAMETERS // width))):
            arguments = [value for p in chunk for value in compiled.arguments(p)]
            sql = _values_sql(compiled.sql, width, len(chunk))
            try:
                rows += compiled.rows(conn.connection, arguments, sql=sql)
            except conn.dialect.loaded_dbapi.Error as exc:
                _raise_as_sqlalchemy(conn, exc, sql, arguments)
        return rows
    return conn.execute(statement, params)


# Rows per multi-row INSERT on SQLite, at most: 500 of the events' 10 columns are 5,000
# parameters; a wider row gets fewer, under SQLite's bound on a statement's parameters
# (32,766 since 3.32; Rapport needs 3.35).
_VALUES_ROWS = 500
_SQLITE_PARAMETERS = 32_766


def _placeholders(count: int) -> str:
    """sqlite3's placeholders for `count` values: `?, ?, ?`."""
    return ", ".join(["?"] * count)


@functools.lru_cache(maxsize=32)
def _values_sql(sql: str, width: int, rows: int) -> str:
    """A one-row `INSERT … VALUES (?, …)` (sqlite3's parameters) with `rows` rows of values."""
    group = f"({_placeholders(width)})"
    head, found, tail = sql.partition(f" VALUES {group}")
    if not found:
        raise ValueError(f"not a one-row INSERT of {width} values: {sql}")
    return f"{head} VALUES {', '.join([group] * rows)}{tail}"


def one_of(column: ColumnElement[Any], name: str) -> dict[str, ColumnElement[bool]]:
    """SQL, by dialect name: `column` is one of the list given at run time as parameter
    `name`. An IN list on SQLite, which `run` renders on the cursor for the list's length;
    one array on PostgreSQL (`= ANY`), since a list keeps a statement off the cursor there
    (`_CursorStatement.of`: SQLAlchemy would render the list on every run). An array of
    VARCHAR without a length: a cast to VARCHAR(n) would cut a longer value where the
    comparison should find nothing."""
    element = String() if isinstance(column.type, String) else column.type
    return {"sqlite": column.in_(bindparam(name, expanding=True)), "postgresql": column == any_(bindparam(name, type_=ARRAY(element)))}


@dataclass(frozen=True)
class ByIds:
    """A prebuilt select of rows by a list of ids (`ids`), run in chunks of a bounded IN
    list, and its twin for a list of one id (`= :ids`), which a single event's write
    names for each kind of subject. SQLAlchemy renders an expanding IN list into the SQL
    on every run: 15 of the 33 µs of CPU a one-row select cost on SQLite.

    Both run on the cursor (`run`), where the IN list took SQLAlchemy's whole execution
    path on every run (an event on a project locks its owner and its customer together:
    3 % of a served POST's CPU on PostgreSQL, docs/performance.md "The known-keys round").
    On SQLite the list's SQL is rendered once per length (`_CursorStatement.sql_for`); on
    PostgreSQL a list goes as one array parameter (`= ANY(:ids)`), compiled once."""

    many: Select[Any]
    one: Select[Any]
    array: Select[Any]

    @classmethod
    def of(cls, build: Callable[[ColumnElement[bool]], Select[Any]], column: ColumnElement[Any]) -> ByIds:
        """The select `build(condition)` makes of a condition on `column`."""
        lists = one_of(column, "ids")
        return cls(build(lists["sqlite"]), build(column == bindparam("ids")), build(lists["postgresql"]))

    def map(self, change: Callable[[Select[Any]], Select[Any]]) -> ByIds:
        return ByIds(change(self.many), change(self.one), change(self.array))

    def rows(self, session: Session, ids: Iterable[int], **params: Any) -> Iterator[Any]:
        """The rows of these ids (`run`), chunk after chunk."""
        many = self.array if session.get_bind().dialect.name == "postgresql" else self.many
        for chunk in chunked(ids):
            if len(chunk) == 1:
                yield from run(session, self.one, ids=chunk[0], **params)
            else:
                yield from run(session, many, ids=list(chunk), **params)
