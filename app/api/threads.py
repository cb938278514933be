"""The worker threads requests run their database work on, and how many run at once.

FastAPI runs a sync route (and `run_in_threadpool`) on anyio's worker threads, up to the
default limiter's tokens: 40 unless set. One process executes Python on one core at a
time (the GIL), so on a nearby database more threads than it takes to keep that core busy
only take turns at the GIL: every hand-over is a futex wake-up and a context switch, and
the requests' answers come out interleaved instead of in turn. Measured in
docs/performance.md, "The threads round": 4 threads served as many event POSTs as 40,
within the noise, on PostgreSQL and on SQLite, with a p99 a quarter lower on both (and
less system CPU on PostgreSQL). On PostgreSQL 2 served more than 4 ("The thread-count
round"); on SQLite fewer threads make smaller groups of writes sharing a commit, and 4 did
better than 2. So the default depends on the engine (`Settings.request_threads`).

A batch can hold its thread for seconds (10,000 events), so batches run on a limiter of
their own (`batch_threads`): a few ERP imports at once never take the threads the app's
single requests need. Reads run on one of their own too (`run_read`), as many threads as
the requests': a write can wait up to `RAPPORT_LOCK_TIMEOUT_SECONDS` for a record another
transaction holds, and a few such writes held every request thread, so a rep's app could
read nothing, not even a customer the held record had nothing to do with.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import AsyncIterator, Callable, TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar

from app.db.engine import Database
from app.settings import Settings

T = TypeVar("T")

# One per event loop, as anyio keeps its default limiter: a limiter belongs to the loop
# it was made in, and a process (its tests) may run several loops.
_BATCHES: RunVar[CapacityLimiter] = RunVar("rapport_batch_limiter")
_READINESS: RunVar[CapacityLimiter] = RunVar("rapport_readiness_limiter")
_READS: RunVar[CapacityLimiter] = RunVar("rapport_read_limiter")


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[None]:
    """While the server runs: sync routes on at most `settings.request_threads()` threads,
    and reads (`run_read`) on as many more."""
    limiter = to_thread.current_default_thread_limiter()
    before = limiter.total_tokens
    limiter.total_tokens = settings.request_threads()
    _limiter(_READS, settings.request_threads())
    try:
        yield
    finally:
        limiter.total_tokens = before


async def indexed_read(db: Database, work: Callable[..., T], *args: object) -> T:
    """Run `work(*args)`, a read of a few rows found by an index in a session (an event by
    its id): on SQLite on the event loop, elsewhere on a worker thread. (A one-statement
    read, an API key's or a customer's, is `Database.alone_on_loop`, on the loop on both.)

    An embedded database answers such a read in microseconds, in process, for less than
    the hand-off to a worker thread and back costs: a customer GET served 1.7 times as many
    reads per second on the loop (docs/performance.md, "The loop-read round"). The loop can
    wait there only for a pooled connection when every one is held (the pool keeps more than
    the worker threads can hold, and they return theirs without the loop), and a WAL reader
    never waits for a writer. A server's database is across a network, and a synchronous
    wait there would stall every request in flight: a thread."""
    if db.is_sqlite:
        return work(*args)
    return await run_read(work, *args)


async def run_read(work: Callable[..., T], *args: object) -> T:
    """Run `work(*args)`, a read, on a read thread, never behind writes that wait for a
    record (the module's docstring). Outside a server (`serving`), as many read threads as
    the requests have."""
    try:
        limiter = _READS.get()
    except LookupError:
        limiter = _limiter(_READS, int(to_thread.current_default_thread_limiter().total_tokens))
    return await to_thread.run_sync(partial(work, *args), limiter=limiter)


def _limiter(var: RunVar[CapacityLimiter], tokens: int) -> CapacityLimiter:
    """This event loop's limiter kept in `var`, with `tokens` threads."""
    try:
        limiter = var.get()
    except LookupError:
        limiter = CapacityLimiter(tokens)
        var.set(limiter)
    if limiter.total_tokens != tokens:  # another app's, in the same loop (tests)
        limiter.total_tokens = tokens
    return limiter


async def run_batch(settings: Settings, work: Callable[..., T], *args: object) -> T:
    """Run `work(*args)` on a batch thread: at most `settings.batch_threads` at once."""
    return await to_thread.run_sync(partial(work, *args), limiter=_limiter(_BATCHES, settings.batch_threads))


async def run_readiness(work: Callable[..., T], *args: object) -> T:
    """Run `work(*args)`, the readiness check, on a thread of its own (one at a time), not
    on the requests' threads: when writes waiting on a locked row held all of those, /readyz
    waited behind them and a load balancer took a process whose database answered for
    dead (a hunt's find)."""
    return await to_thread.run_sync(partial(work, *args), limiter=_limiter(_READINESS, 1))
