"""The API keys a process has authenticated, remembered while the database tells it of every
change to the keys, so most requests need not read their key.

Reading the key was a database read on every request: on PostgreSQL a round trip and a
hand-off to a worker thread and back besides (the event loop must not wait on the network),
10-20 % of a served event POST's CPU (docs/performance.md, "The known-keys round"); on
SQLite a checkout of a pooled connection and a statement, 2.4 % of a POST's instructions
("The key-stamp round").

A key stays good only as long as the database can say otherwise at once, whoever changed
the keys: `rapport keys revoke`, another process, an operator's SQL. (On PostgreSQL "at
once" is when the notice arrives, a moment after the changing commit has returned: 145 µs
at p99 on an idle machine, 12 ms on an overloaded one; docs/performance.md, "Revocation on
PostgreSQL", measured with bench/revocation.py.)

- PostgreSQL (`ListenedKeys`): a statement trigger on `api_keys` sends NOTIFY on a channel
  when any transaction that changed the table commits (the migration `api_key_notices`).
  Each process keeps one connection LISTENing on a thread of its own, and forgets every
  key it remembered when it hears a notice. While that connection is not listening (not
  yet connected, lost, being re-opened), nothing is remembered and every request reads its
  key, as before.
- SQLite (`StampedKeys`), which has no notices: row triggers on `api_keys` put a new
  random stamp in `service_state` with every change, in the changing transaction (the
  migration `api_key_stamp`). A process reads the stamp before it trusts a remembered key
  (one indexed read on a connection of its own, no pool), and forgets every key when the
  stamp is not the one it last saw. No stamp (a database not migrated, the row deleted):
  nothing is remembered.

Either way a key is also forgotten after `max_age` seconds whatever happens, a bound on the
harm of a change that went unheard. Only live keys are remembered (an unknown or revoked
secret is read every time), by the SHA-256 of their secret, never the secret itself.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Callable

from sqlalchemy import Engine

from app.db.engine import NETWORK_TIMEOUTS, has_input
from app.services.keys import Key

CHANNEL = "rapport_api_keys"
STAMP = "api_keys_stamp"
log = logging.getLogger("rapport.keys")


class KnownKeys:
    """Live keys by the digest of their secret, while the database can tell of every change
    (`trusted`: each engine's way, in a subclass). `of` makes the one for an engine."""

    def __init__(self, *, max_keys: int = 10_000, max_age: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._max_keys, self._max_age, self._clock = max_keys, max_age, clock
        self._keys: dict[str, tuple[Key, float]] = {}  # digest -> (key, when it is forgotten)
        self._lock = threading.RLock()
        # Counts what was forgotten: a key read before a change is not remembered after it.
        self._generation = 0

    @staticmethod
    def of(engine: Engine) -> KnownKeys | None:
        """The keys a process on `engine` remembers; None where nothing can be (an in-memory
        SQLite database, which another connection cannot see)."""
        if engine.dialect.name == "postgresql":
            return ListenedKeys.on(engine)
        if engine.url.database in (None, "", ":memory:"):
            return None
        return StampedKeys.on(engine)

    @property
    def generation(self) -> int:
        """Read before reading a key from the database; pass to `remember`."""
        return self._generation

    def heard_since(self, generation: int) -> bool:
        """Whether a change made after `generation` was read has been heard (what was
        remembered then is forgotten) and what is remembered may be used again."""
        return self.trusted() and self._generation > generation

    def trusted(self) -> bool:
        """Whether what is remembered may be used now: nothing changed that was not heard."""
        raise NotImplementedError

    def get(self, digest: str) -> Key | None:
        """The live key with this secret digest, if remembered and nothing may have changed."""
        if not self.trusted():
            return None
        found = self._keys.get(digest)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    def remember(self, digest: str, key: Key, generation: int) -> None:
        """Remember a live key read from the database after `generation` was read."""
        with self._lock:
            if not self._can_remember() or generation != self._generation:
                return  # nothing is heard, or something changed since the read began
            if len(self._keys) >= self._max_keys:
                self._keys.clear()
            self._keys[digest] = (key, self._clock() + self._max_age)

    def forget(self) -> None:
        """Forget every key (some key changed)."""
        with self._lock:
            self._generation += 1
            self._keys.clear()

    def _can_remember(self) -> bool:
        return True

    def start(self) -> Callable[[], None]:
        """Start hearing of changes; returns the function that stops it."""
        return self.stop

    def stop(self) -> None:
        pass


class ListenedKeys(KnownKeys):
    """PostgreSQL: keys remembered while a connection of their own LISTENs for the notices of
    the api_keys trigger, on a thread of its own."""

    def __init__(self, connect: Callable[[], Any], *, health_every: float = 10.0, **kwargs: Any):
        super().__init__(**kwargs)
        self._connect = connect  # a new autocommit DBAPI (psycopg) connection
        self._health_every = health_every
        self._listening: int | None = None  # the listening connection's socket, while it listens
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def on(cls, engine: Engine) -> ListenedKeys:
        """The listener opens its connection as the engine opens its own."""
        args, params = engine.dialect.create_connect_args(engine.url)
        # A connection whose peer vanished without a word (a network cut) would leave the
        # listener waiting for ever: the engine's TCP timeouts, unless the URL sets them.
        params = {**NETWORK_TIMEOUTS, **params}

        def connect() -> Any:
            conn = engine.dialect.loaded_dbapi.connect(*args, **params)
            conn.autocommit = True
            return conn

        return cls(connect)

    def trusted(self) -> bool:
        listening = self._listening
        # A notice may be waiting on the socket for the listener: trust nothing until it
        # has read it. The event loop and every worker thread ask at once.
        return listening is not None and not has_input(listening)

    def _can_remember(self) -> bool:
        return self._listening is not None

    def _listen_on(self, socket: int | None) -> None:
        """Start (a socket) or stop (None) trusting what is remembered; from nothing either
        way: what changed while nobody listened is unknown."""
        with self._lock:
            self._listening = socket
            self.forget()

    @property
    def listening(self) -> bool:
        return self._listening is not None

    def start(self) -> Callable[[], None]:
        """Listen on a daemon thread; returns the function that stops it."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, name="rapport-known-keys", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _listen(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # the database is away: read every key until it is back
                log.warning("cannot listen for API key changes (%s); every request reads its key", type(exc).__name__)
            else:
                try:
                    self._hear(conn)
                except Exception as exc:
                    log.warning("stopped listening for API key changes (%s); every request reads its key until it listens again", type(exc).__name__)
                finally:
                    if self._listening is not None:
                        pause = 0.5  # it did listen: try again soon
                    self._listen_on(None)
                    conn.close()
            self._stop.wait(pause)
            pause = min(pause * 2, 30.0)

    def _hear(self, conn: Any) -> None:
        conn.execute(f"LISTEN {CHANNEL}")
        self._listen_on(conn.fileno())
        checked = self._clock()
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                self.forget()
            if self._clock() - checked >= self._health_every:
                # A connection whose server vanished without a word (a network cut) stays
                # silent: a query finds out (if it hangs, the TCP timeouts set in `on` end it).
                conn.execute("SELECT 1")
                checked = self._clock()


class StampedKeys(KnownKeys):
    """SQLite: keys remembered while the stamp the api_keys triggers renew with every change
    stays the one last read. The stamp is read on a connection of its own (sqlite3's, in
    autocommit: each read sees what was committed before it), under the lock, so the stamps
    this process sees come in the order they were written."""

    # After a failed read of the stamp (a database not migrated, say), how long every request
    # just reads its key before the stamp is tried again.
    RETRY_AFTER = 1.0

    def __init__(self, connect: Callable[[], sqlite3.Connection], **kwargs: Any):
        super().__init__(**kwargs)
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._stamp: str | None = None  # the stamp the remembered keys were read under
        self._failed_at: float | None = None

    @classmethod
    def on(cls, engine: Engine) -> StampedKeys:
        """Its connection opens the engine's database as the engine does."""
        args, params = engine.dialect.create_connect_args(engine.url)
        # A read in WAL mode does not wait for writers; should it be kept waiting anyway (a
        # recovery), it gives up soon and the request reads its key as it would have.
        params = {**params, "check_same_thread": False, "isolation_level": None, "timeout": 0.1}
        return cls(lambda: sqlite3.connect(*args, **params))

    def trusted(self) -> bool:
        with self._lock:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self.forget()
            return stamp is not None

    def _can_remember(self) -> bool:
        return self._stamp is not None

    def _read_stamp(self) -> str | None:
        if self._failed_at is not None and self._clock() - self._failed_at < self.RETRY_AFTER:
            return None
        try:
            if self._conn is None:
                self._conn = self._connect()
            cursor = self._conn.execute(_READ_STAMP)
            try:
                rows = cursor.fetchall()  # to the end: the read's snapshot ends with it
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            log.warning("cannot read the API keys' stamp (%s); every request reads its key", exc)
            self._failed_at = self._clock()
            self.stop()
            return None
        self._failed_at = None
        return rows[0][0] if rows else None

    def stop(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_READ_STAMP = f"SELECT value FROM service_state WHERE key = '{STAMP}'"
