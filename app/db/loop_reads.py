"""PostgreSQL: the event loop's one-statement reads (an API key; a customer or a project by
its id or code), on psycopg's asyncio connections rather than on a worker thread.

Handing a read to a worker thread and back cost a served PostgreSQL read more than the read:
16 tasks reading one row by its key, each through `anyio.to_thread`, spent 221-229 µs of
the process's CPU a read (4,600 reads a second), and on psycopg's `AsyncConnection` on the
loop 56-59 µs (15,600-17,100 a second): the thread's wake-ups, the loop's, and the two
taking turns at the GIL. Served at 16 clients, one process answered 1,700-2,000 customer
reads a second with a p99 of 11-13 ms, its core full; on the loop 4,500-5,100, with a p99
of 4.7-6.4 ms (docs/performance.md, "The loop-read round on PostgreSQL").

Each event loop has a pool of its own (a connection belongs to the loop it was opened in;
a server has one loop, its tests one each), of at most `size` connections, opened when
the reads in flight need them and kept between reads. A connection comes back to the pool
only from a read that succeeded; any error closes it. A pooled connection the server
ended while it sat idle (a restart, an idle timeout, `pg_terminate_backend`) is found
before use by a poll with no wait (`has_input`), as the engine's checkout finds its own.
A read whose connection broke anyway runs once more on a fresh one (a read can run twice;
this is only for reads), and if that connection was pooled, the idle ones beside it are
closed too, as SQLAlchemy empties the engine's pool. A statement's own failure (a lock or
statement timeout, a cancel) is not run again. The driver's errors reach the caller as
psycopg raised them; `Database.alone_on_loop` gives them to SQLAlchemy, so a database
away is the same 503 on either path. `dispose` closes a connection only where no read is
using it (`LoopReads.dispose`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import psycopg

from app.db.sockets import has_input


@dataclass(eq=False)
class _Pool:
    """One event loop's connections: the idle ones (their kept cursors) and every open one."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    idle: list[psycopg.AsyncCursor[Any]] = field(default_factory=list)
    open: set[psycopg.AsyncConnection[Any]] = field(default_factory=set)
    disposed: bool = False


class LoopReads:
    """One-statement reads in autocommit mode (no BEGIN, no ROLLBACK: under READ COMMITTED a
    statement sees what was committed before it either way), on the running event loop."""

    def __init__(self, params: Mapping[str, Any], size: int):
        self._params = dict(params)
        self._size = size
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._lock = threading.Lock()

    async def fetch(self, sql: str, arguments: Mapping[str, Any], *, returns: bool) -> list[tuple[Any, ...]]:
        """The rows `sql` returns for `arguments` (none if it `returns` nothing)."""
        pool = self._pool()
        async with pool.slots:
            for again in (True, False):
                cursor, reused = await self._cursor(pool)
                conn = cursor.connection
                try:
                    await cursor.execute(sql, arguments)
                    fetched = await cursor.fetchall() if returns else []
                except psycopg.OperationalError:
                    broke = conn.broken  # asked first: closing it below would make it so
                    self._close(pool, conn)
                    # A statement's own failure (a lock or statement timeout, a cancel) is the
                    # caller's; a connection that broke is run once more, on a fresh one.
                    if not (again and broke):
                        raise
                    if reused:  # ended while pooled, unseen by the poll: a restart ended the rest too
                        for idle in pool.idle[:]:
                            self._close(pool, idle.connection)
                    continue
                except BaseException:  # a cancelled read, any other error: state unknown
                    self._close(pool, conn)
                    raise
                if pool.disposed:
                    self._close(pool, conn)
                else:
                    pool.idle.append(cursor)
                return fetched
        raise AssertionError("unreachable: the second attempt returns or raises")

    def dispose(self) -> None:
        """Close every loop's connections, from any thread: the idle ones now, on their loop
        (libpq frees a connection that `PQfinish` closes, and a read on another thread may be
        about to take it: freeing it under a read crashed the process, a review's find); one
        a read holds, by that read as it ends. The next read opens anew."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.disposed = True
            if pool.loop.is_closed() or not pool.loop.is_running():
                self._finish(pool, list(pool.open))  # no read can be running there
            elif _running_loop() is pool.loop:
                self._finish_idle(pool)
            else:
                try:
                    pool.loop.call_soon_threadsafe(self._finish_idle, pool)
                except RuntimeError:  # closed meanwhile: nothing runs there any more
                    self._finish(pool, list(pool.open))

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            with self._lock:
                for gone in [other for other in self._pools if other.is_closed()]:
                    ended = self._pools.pop(gone)
                    self._finish(ended, list(ended.open))
                pool = self._pools.setdefault(loop, _Pool(loop, asyncio.Semaphore(self._size)))
        return pool

    async def _cursor(self, pool: _Pool) -> tuple[psycopg.AsyncCursor[Any], bool]:
        """An idle connection's cursor (True), or a new connection's (False)."""
        while pool.idle:
            cursor = pool.idle.pop()
            conn = cursor.connection
            if not conn.closed and not has_input(conn.fileno()):
                return cursor, True
            self._close(pool, conn)  # the server ended it while it was idle
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **self._params)
        pool.open.add(conn)
        if pool.disposed:  # disposed while it connected
            self._close(pool, conn)
            raise psycopg.OperationalError("the database's connections were closed (shutting down)")
        return conn.cursor(), False

    @classmethod
    def _finish(cls, pool: _Pool, conns: list[psycopg.AsyncConnection[Any]]) -> None:
        for conn in conns:
            cls._close(pool, conn)

    @classmethod
    def _finish_idle(cls, pool: _Pool) -> None:
        """Close the connections no read holds; run on the pool's loop, where they are taken."""
        cls._finish(pool, [cursor.connection for cursor in pool.idle])

    @staticmethod
    def _close(pool: _Pool, conn: psycopg.AsyncConnection[Any]) -> None:
        """Close `conn`, which no read is using (libpq's PQfinish: without the loop, as
        `close()` is a coroutine)."""
        pool.open.discard(conn)
        pool.idle[:] = [c for c in pool.idle if c.connection is not conn]
        conn.pgconn.finish()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
