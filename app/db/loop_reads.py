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
before use by a poll with no wait (`has_input`), as the engine's checkout finds its own;
one that fails its read anyway is closed with every idle one beside it, and the read runs
once more on a fresh connection, as SQLAlchemy does for the engine's pool. A read can run
twice; this is only for reads. The driver's errors reach the caller as psycopg raised
them; `Database.alone_on_loop` gives them to SQLAlchemy, so a database away is the same
503 on either path.
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
                try:
                    await cursor.execute(sql, arguments)
                    fetched = await cursor.fetchall() if returns else []
                except psycopg.OperationalError:
                    self._close(pool, cursor.connection)
                    if not (again and reused):
                        raise
                    # Ended while pooled, unseen by the poll: the idle ones beside it most
                    # likely were too (a restart). Once more, on a fresh connection.
                    for idle in pool.idle[:]:
                        self._close(pool, idle.connection)
                    continue
                except BaseException:  # a cancelled read, any other error: state unknown
                    self._close(pool, cursor.connection)
                    raise
                if pool.disposed:
                    self._close(pool, cursor.connection)
                else:
                    pool.idle.append(cursor)
                return fetched
        raise AssertionError("unreachable: the second attempt returns or raises")

    def dispose(self) -> None:
        """Close every connection of every loop's pool, from any thread. A read on one of
        them at that moment fails (an OperationalError: a 503); the next read opens anew."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.disposed = True
            pool.idle.clear()
            for conn in list(pool.open):
                # libpq's PQfinish: closes the socket without the loop (`close()` is a coroutine).
                conn.pgconn.finish()

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            with self._lock:
                for gone in [other for other in self._pools if other.is_closed()]:
                    for conn in self._pools.pop(gone).open:
                        conn.pgconn.finish()
                pool = self._pools.setdefault(loop, _Pool(asyncio.Semaphore(self._size)))
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

    @staticmethod
    def _close(pool: _Pool, conn: psycopg.AsyncConnection[Any]) -> None:
        pool.open.discard(conn)
        pool.idle[:] = [c for c in pool.idle if c.connection is not conn]
        conn.pgconn.finish()
