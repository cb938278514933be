"""How long after a key change commits a PostgreSQL process may still answer a key from
memory (a script that prints figures, not a test).

    python bench/revocation.py --url postgresql+psycopg://postgres@127.0.0.1:5432/bench [--rounds 2000]

A process remembers the keys it has authenticated while a connection of its own LISTENs for
the notice the `api_keys` trigger sends when a change commits (app/services/known_keys.py).
The notice reaches that connection a moment after the changing transaction's commit has
returned: PostgreSQL's server signals the listening backend at commit, and that backend
sends the notice when it next runs. Until then a request in that process may still be
answered from memory.

Each round creates a key and waits until the change is heard, then revokes the key on
another connection and spins, from the moment that write session has returned (its
commit, and the connection's return to the pool), until the process no longer trusts what it remembers (a notice is waiting on its socket) or has forgotten it.
It prints how many rounds had a window at all, and the window's percentiles over every
round (0 where the process had heard the change before the commit returned).

PostgreSQL only: SQLite reads the keys' stamp on every request, so it has no window. Like
the other scripts it creates and drops `<name>_api` and `<name>_floor` (only the first is
used; the name must contain "bench" or "test").
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import Callable

from batch_import import databases
from single_post import check_name

from app.db.engine import Database
from app.services.keys import create_key, revoke_key
from app.services.known_keys import ListenedKeys
from app.settings import Settings
from app.startup import prepare


# How long any wait may take before the script gives up: the listener lost its connection,
# or the notices stopped coming. Far beyond any window measured (docs/performance.md).
PATIENCE = 10.0


def wait_for(condition: Callable[[], bool], what: str, *, pause: float = 0.0005) -> None:
    """Return once `condition()` holds; exit with `what` in the message after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {PATIENCE:.0f} s waiting until {what}")
        time.sleep(pause)


def window(db: Database, known: ListenedKeys, name: str) -> float | None:
    """Seconds from the revocation's commit until `known` no longer answers from memory;
    None if it had already heard it when the commit returned."""
    now = datetime.now(timezone.utc)
    before = known.generation
    with db.session(write=True) as session:
        create_key(session, name, ["read"], now=now)
    wait_for(lambda: known.heard_since(before), "the process heard a key's creation")
    heard = known.generation  # nothing else changes the keys meanwhile
    with db.session(write=True) as session:
        revoke_key(session, name, now=now)
    start = time.perf_counter()

    def forgotten() -> bool:  # or about to be: a notice waits on the socket
        return not known.trusted() or known.generation > heard

    if forgotten():
        return None
    # No pause between looks (the window is microseconds), only the GIL handed on.
    wait_for(forgotten, "the process heard a revocation", pause=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", required=True, help="a PostgreSQL URL whose database name prefixes the scratch database")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    check_name(args.url)
    api_url, _, drop = databases(args.url, None)  # type: ignore[arg-type]  # no files with a URL
    try:
        settings = Settings(database_url=api_url)
        prepare(settings)
        db = Database.from_settings(settings)
        known = ListenedKeys.on(db.engine)
        stop = known.start()
        try:
            wait_for(known.trusted, "the process listened for key changes", pause=0.01)
            windows = [window(db, known, f"key {i}") for i in range(args.rounds)]
        finally:
            stop()
            db.dispose()
    finally:
        drop()
    every = sorted(0.0 if w is None else w * 1e6 for w in windows)
    still_open = sum(1 for w in windows if w is not None)

    def at(q: float) -> float:
        return every[min(len(every) - 1, int(q * len(every)))]

    print(f"{args.rounds} revocations; the process still trusted its memory when the commit returned in {still_open}")
    print(f"window after the commit returned (0 where none), µs: p50 {at(0.5):.0f}  p99 {at(0.99):.0f}  p99.9 {at(0.999):.0f}  max {at(1.0):.0f}")


if __name__ == "__main__":
    main()
