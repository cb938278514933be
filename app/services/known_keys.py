"""The API keys a process has authenticated, remembered while PostgreSQL tells it of every
change to the keys, so most requests need not read their key.

Reading the key was a database round trip on every request, and on PostgreSQL a hand-off to
a worker thread and back besides (the event loop must not wait on the network): 10-20 % of
a served event POST's CPU (docs/performance.md, "The known-keys round").

A key stays good only as long as the database can say otherwise at once. A statement
trigger on `api_keys` sends NOTIFY on this channel when any transaction that changed the
table commits (the migration `api_key_notices`), whoever changed it: `rapport keys
revoke`, another process, an operator's SQL. Each process keeps one connection LISTENing
on a thread of its own, and forgets every key it remembered when it hears a notice. While
that connection is not listening (not yet connected, lost, being re-opened), nothing is
remembered and every request reads its key, as before. A key is also forgotten after
`max_age` seconds whatever happens, a bound on the harm of a notice that never came.

Only live keys are remembered (an unknown or revoked secret is read every time), by the
SHA-256 of their secret, never the secret itself. SQLite has no notices; there every
request reads its key, a read without a thread hand-off that costs ~50 µs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from sqlalchemy import Engine

from app.db.engine import has_input
from app.services.keys import Key

CHANNEL = "rapport_api_keys"
log = logging.getLogger("rapport.keys")


class KnownKeys:
    """Live keys by the digest of their secret, while the listener hears the database."""

    def __init__(self, connect: Callable[[], Any], *, max_keys: int = 10_000, max_age: float = 60.0, health_every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._connect = connect  # a new autocommit DBAPI (psycopg) connection
        self._max_keys, self._max_age, self._health_every, self._clock = max_keys, max_age, health_every, clock
        self._keys: dict[str, tuple[Key, float]] = {}  # digest -> (key, when it is forgotten)
        self._lock = threading.RLock()
        # Counts what was forgotten: a key read before a notice is not remembered after it.
        self._generation = 0
        self._listening: int | None = None  # the listening connection's socket, while it listens
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, engine: Engine) -> KnownKeys | None:
        """For PostgreSQL: the listener opens its connection as the engine opens its own."""
        if engine.dialect.name != "postgresql":
            return None
        args, params = engine.dialect.create_connect_args(engine.url)
        # A connection whose peer vanished without a word (a network cut) would leave the
        # listener waiting for ever: TCP keepalives and a send timeout end it within ~30 s,
        # unless the URL sets them itself.
        params = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000, **params}

        def connect() -> Any:
            conn = engine.dialect.loaded_dbapi.connect(*args, **params)
            conn.autocommit = True
            return conn

        return cls(connect)

    @property
    def generation(self) -> int:
        """Read before reading a key from the database; pass to `remember`."""
        return self._generation

    def get(self, digest: str) -> Key | None:
        """The live key with this secret digest, if remembered and nothing may have changed."""
        listening = self._listening
        if listening is None:
            return None
        # A notice may be waiting on the socket for the listener: trust nothing until it
        # has read it. The event loop and every worker thread ask at once.
        if has_input(listening):
            return None
        found = self._keys.get(digest)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    def remember(self, digest: str, key: Key, generation: int) -> None:
        """Remember a live key read from the database after `generation` was read."""
        with self._lock:
            if self._listening is None or generation != self._generation:
                return  # not listening, or something changed since the read began
            if len(self._keys) >= self._max_keys:
                self._keys.clear()
            self._keys[digest] = (key, self._clock() + self._max_age)

    def forget(self) -> None:
        """Forget every key (a notice came: some key changed)."""
        with self._lock:
            self._generation += 1
            self._keys.clear()

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
                # silent: a query finds out (if it hangs, the TCP timeouts set in `of` end it).
                conn.execute("SELECT 1")
                checked = self._clock()
