"""The load generator of the HTTP benchmarks, and the servers it loads.

Servers run as subprocesses (uvicorn on loopback); the load runs in the calling process
(asyncio streams speaking keep-alive HTTP/1.1), so client and server never share an
interpreter. Two shapes of load:

- closed loop: `clients` tasks, each sending its next request when the previous one is
  answered (throughput under a fixed concurrency);
- open loop: requests sent at a fixed rate whatever the server does, each latency measured
  from the *scheduled* send time, so a stall shows in the tail instead of silently
  slowing the sender (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
# (method, path, JSON body already encoded or None), for request number i.
Request = tuple[str, str, bytes | None]
MakeRequest = Callable[[int], Request]
LATE_AFTER = 0.010  # an open-loop send that starts this long after its schedule counts as late


@dataclass
class Run:
    """What one load run measured (latencies in seconds, counted after the warm-up)."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    late: int = 0
    failures: list[str] = field(default_factory=list)
    # CPU seconds (user, system) the server's processes spent while the run was measured
    # (closed loop only; None where /proc cannot tell).
    server_cpu: tuple[float, float] | None = None
    # CPU seconds (user + system) the PostgreSQL backends serving the server's database spent
    # meanwhile (closed loop, with `database` given; None for SQLite, whose work is in the
    # server's own process, or where /proc cannot tell).
    database_cpu: float | None = None

    def server_cpu_ms(self) -> tuple[float, float] | None:
        """Server CPU milliseconds (user, system) per answered request."""
        if self.server_cpu is None or not self.latencies:
            return None
        return self.server_cpu[0] * 1000 / len(self.latencies), self.server_cpu[1] * 1000 / len(self.latencies)

    def database_cpu_ms(self) -> float | None:
        """The database's CPU milliseconds per answered request (`database_cpu`)."""
        if self.database_cpu is None or not self.latencies:
            return None
        return self.database_cpu * 1000 / len(self.latencies)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    @classmethod
    def merged(cls, slices: list[Run]) -> Run:
        """One run made of several slices of the same load, measured at different times
        (`single_post.py --slices`): their measured seconds, answers and failures added."""
        cpu = [s.server_cpu for s in slices]
        database = [s.database_cpu for s in slices]
        return cls(
            seconds=sum(s.seconds for s in slices),
            latencies=[x for s in slices for x in s.latencies],
            failed=sum(s.failed for s in slices),
            late=sum(s.late for s in slices),
            failures=[f for s in slices for f in s.failures][:3],
            server_cpu=None if None in cpu else (sum(c[0] for c in cpu), sum(c[1] for c in cpu)),  # type: ignore[index]
            database_cpu=None if None in database else sum(d for d in database if d is not None),
        )

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (q in 0..100)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000


class Connection:
    """One keep-alive HTTP/1.1 connection, as little client as possible: httpx costs several
    times the CPU per request, which on a 2-core machine is taken from the server measured."""

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", "Content-Type": "application/json", **headers}.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: Request) -> str | None:
        """None if the answer is a 2xx, else what went wrong."""
        if self.streams is not None:
            reused = await self._send(request, retry=True)
            if reused != "retry":
                return reused
        return await self._send(request, retry=False)

    async def _send(self, request: Request, *, retry: bool) -> str | None:
        # `retry`: the connection was idle, and the server may have closed it meanwhile
        # (uvicorn closes keep-alive connections after 5 s): if nothing comes back, the
        # request is sent again on a new connection, as HTTP clients do.
        method, path, body = request
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body or b'')}\r\n\r\n".encode() + (body or b""))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length is None:
                raise ValueError("an answer without Content-Length")
            answer = await reader.readexactly(int(length.group(1)))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self.close()
            if retry and (isinstance(exc, ConnectionError) or (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)):
                return "retry"
            return f"{type(exc).__name__}: {exc}"
        return None if status < 300 else f"{status}: {answer[:200]!r}"

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _connections(base_url: str, headers: dict[str, str]) -> Callable[[], Connection]:
    url = httpx.URL(base_url)
    return lambda: Connection(url.host, url.port or 80, headers)


def _failure(run: Run, counted: bool, what: str) -> None:
    if counted:
        run.failed += 1
        if len(run.failures) < 3:
            run.failures.append(what)


def _settled() -> None:
    """Take what the client holds so far (the request bodies, earlier runs' figures: some
    100,000 objects) out of the garbage collector's reach before a load starts. Otherwise
    its full collections, each a walk over all of them, stopped the client for 50-110 ms
    at a time in the middle of a run, with requests due: an open loop then measured the
    client's pause and the backlog it left, in the tail of whichever server it was loading
    (the later one, as the client had grown)."""
    gc.collect()
    gc.freeze()


def closed_loop(base_url: str, make: MakeRequest, *, clients: int, seconds: float, warmup: float, headers: dict[str, str] | None = None, database: str | None = None) -> Run:
    """`database`: the SQLAlchemy URL of the database the server uses; on a PostgreSQL on
    this machine the run also counts its backends' CPU (`Run.database_cpu`)."""
    _settled()
    backends = Backends.of(database)

    async def go() -> Run:
        run = Run(seconds=seconds)
        numbers = iter(range(sys.maxsize))
        start = time.perf_counter()
        measure_from, stop = start + warmup, start + warmup + seconds

        async def one_client() -> None:
            connection = connect()
            while (sent := time.perf_counter()) < stop:
                problem = await connection.send(make(next(numbers)))
                done = time.perf_counter()
                counted = sent >= measure_from and done <= stop
                if problem:
                    _failure(run, counted, problem)
                elif counted:
                    run.latencies.append(done - sent)
            connection.close()

        async def watch_cpu() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            before, database_before = server_cpu(base_url), backends.cpu() if backends is not None else None
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            after, database_after = server_cpu(base_url), backends.cpu() if backends is not None else None
            if before is not None and after is not None:
                run.server_cpu = (after[0] - before[0], after[1] - before[1])
            if database_before is not None and database_after is not None:
                # A backend that started during the run counts from 0; one that ended is lost.
                run.database_cpu = sum(spent - database_before.get(pid, 0.0) for pid, spent in database_after.items())

        connect = _connections(base_url, headers or {})
        await asyncio.gather(watch_cpu(), *(one_client() for _ in range(clients)))
        return run

    try:
        return asyncio.run(go())
    finally:
        if backends is not None:
            backends.close()


@dataclass
class CountedRun(Run):
    """A run measured by a load generator that reports how many requests it had answered and
    the percentiles of their latencies (wrk), not each latency."""

    answered: int = 0
    percentiles: dict[float, float] = field(default_factory=dict)  # q -> milliseconds

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds

    def percentile(self, q: float) -> float:
        return self.percentiles[q]


# wrk's script: GET the paths in turn (each of wrk's threads from its own place in the list),
# and report the run in one line for `wrk_closed_loop` to read.
_WRK_SCRIPT = """
local paths = {%s}
local next_path = 0
function setup(thread) thread:set("next_path", math.random(#paths)) end
function request()
  next_path = next_path %% #paths + 1
  return wrk.format("GET", paths[next_path])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RAPPORT %%d %%d %%d %%.1f %%.1f %%.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_closed_loop(base_url: str, paths: list[str], *, clients: int, seconds: float, warmup: float, headers: dict[str, str] | None = None) -> CountedRun:
    """`closed_loop` by wrk (a load generator written in C, https://github.com/wg/wrk): GETs
    of `paths` in turn from `clients` connections on two threads. This client's Python
    costs CPU the 2-core machine takes from the server measured, and its own latency shows
    in the tail: against the floor's empty GET it peaked at 4,210 requests/s with a p99 of
    8.3 ms on one machine, so a server's p99 under 10 ms at 3,000 reads/s cannot be seen
    through it. wrk's latencies run from its send to the last byte of the answer; it counts
    an answer with a status of 400 or more as an error (`failed`)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on the PATH (Debian: apt-get install wrk)")
    lua = _WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        command = ["wrk", "-t2", f"-c{clients}", "-s", script.name, *(a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")), base_url]
        # wrk takes whole seconds.
        subprocess.run([*command[:3], f"-d{max(1, round(warmup))}s", *command[3:]], check=True, capture_output=True)
        before = server_cpu(base_url)
        out = subprocess.run([*command[:3], f"-d{max(1, round(seconds))}s", *command[3:]], check=True, capture_output=True, text=True).stdout
        after = server_cpu(base_url)
    found = re.search(r"^RAPPORT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$", out, re.M)
    assert found, out
    answered, micros, failed = (int(found.group(i)) for i in (1, 2, 3))
    p50, p99, p999 = (float(found.group(i)) / 1000 for i in (4, 5, 6))
    run = CountedRun(seconds=micros / 1e6, answered=answered - failed, failed=failed, percentiles={50: p50, 99: p99, 99.9: p999})
    if before is not None and after is not None:
        run.server_cpu = (after[0] - before[0], after[1] - before[1])
    return run


def open_loop(base_url: str, make: MakeRequest, *, rate: float, seconds: float, warmup: float, headers: dict[str, str] | None = None, clients: int | None = None) -> Run:
    """`clients`: at most this many requests in flight, on as many connections (16 clients
    sending at a fixed rate between them); a request whose time comes while all are busy
    waits for one, and the wait counts in its latency. None: a connection per request in
    flight, as many as the server's backlog needs."""
    _settled()

    async def go() -> Run:
        run = Run(seconds=seconds)
        warm = int(rate * warmup)
        total = warm + int(rate * seconds)

        idle: list[Connection] = []  # keep-alive connections between requests
        free = asyncio.Semaphore(clients) if clients is not None else None

        async def one(i: int, scheduled: float) -> None:
            if free is not None:
                await free.acquire()
            counted = i >= warm
            if counted and time.perf_counter() - scheduled > LATE_AFTER:
                run.late += 1
            connection = idle.pop() if idle else connect()
            problem = await connection.send(make(i))
            idle.append(connection)
            if free is not None:
                free.release()
            if problem:
                _failure(run, counted, problem)
            elif counted:
                run.latencies.append(time.perf_counter() - scheduled)
            if counted:
                last[0] = time.perf_counter()

        connect = _connections(base_url, headers or {})
        tasks = []
        start = time.perf_counter()
        last = [start]  # when the last measured request was answered
        for i in range(total):
            scheduled = start + i / rate
            if (wait := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        for connection in idle:
            connection.close()
        # Throughput over the time the answers took: a server that falls behind the rate
        # answers the same number of requests, later.
        run.seconds = max(seconds, last[0] - (start + warmup))
        return run

    return asyncio.run(go())


# The process id of each server `server` runs, by base URL.
_SERVED: dict[str, int] = {}


def server_cpu(base_url: str) -> tuple[float, float] | None:
    """CPU seconds (user, system) spent so far by the server at `base_url` and every
    process under it (uvicorn's workers), from /proc; None where there is no /proc."""
    root = _SERVED.get(base_url)
    if root is None or not os.path.isdir("/proc"):
        return None
    stats: dict[int, tuple[int, float, float]] = {}  # pid -> (parent, user, system)
    for name in os.listdir("/proc"):
        if name.isdigit() and (found := _process_cpu(int(name))) is not None:  # None: gone meanwhile
            stats[int(name)] = (found[0], found[2], found[3])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (parent, _, _) in stats.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(stats[p][1] for p in tree if p in stats), sum(stats[p][2] for p in tree if p in stats)


def _process_cpu(pid: int) -> tuple[int, str, float, float] | None:
    """(parent pid, name, user seconds, system seconds) of a process, from /proc; None if it
    is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
    return int(fields[1]), name, int(fields[11]) / _TICK, int(fields[12]) / _TICK


# Clock ticks per second, the unit of /proc's CPU times (read once: `server_cpu` reads every
# process's times).
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Backends:
    """The PostgreSQL backends serving one database, found in `pg_stat_activity` through a
    connection of the client's own (itself left out), and their CPU from /proc: only for a
    server on this machine. Read at the start and the end of a measured run, like
    `server_cpu`: a backend runs on the same cores as the server and the client, and what a
    request costs the database is part of what it costs."""

    def __init__(self, connection: Any):  # a psycopg connection
        self.connection = connection

    @classmethod
    def of(cls, url: str | None) -> Backends | None:
        """None for SQLite, or where /proc cannot tell."""
        if url is None or not url.startswith("postgresql") or not os.path.isdir("/proc"):
            return None
        import psycopg
        from sqlalchemy.engine import make_url

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(psycopg.connect(conninfo, autocommit=True))

    def cpu(self) -> dict[int, float] | None:
        """CPU seconds (user + system) spent so far by each backend of the database, by pid;
        None if the server is not on this machine (its backends are not our processes)."""
        found = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        pids = [row[0] for row in found]
        spent: dict[int, float] = {}
        for pid in pids:
            found = _process_cpu(pid)
            if found is None:
                continue  # ended meanwhile
            if not found[1].startswith("postgres"):
                return None  # another machine's pid
            spent[pid] = found[2] + found[3]
        return spent

    def close(self) -> None:
        self.connection.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(app: str, env: dict[str, str], *, workers: int = 1, ready_path: str = "/healthz") -> Iterator[str]:
    """Serve `app` (a uvicorn factory, e.g. "app.main:create_app") on a free loopback port
    in a subprocess; yield its base URL once it answers `ready_path`. Both Rapport and the
    floor run with the same uvicorn options (no access log: it would bill logging to both)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--no-access-log", "--log-level", "warning", "--app-dir", str(ROOT / "bench")]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    _SERVED[base] = process.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with status {process.returncode}")
            try:
                if httpx.get(base + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app} did not answer {ready_path} within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        _SERVED.pop(base, None)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def figures_row(name: str, run: Run) -> str:
    return (f"  {name:<34} {run.throughput:9.1f} {run.percentile(50):9.2f} {run.percentile(99):9.2f} {run.percentile(99.9):9.2f}"
            f" {run.failed:7d} {run.late:6d}")


FIGURES_HEADER = f"  {'':<34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'p99.9 ms':>9} {'failed':>7} {'late':>6}"


def ratio_row(name: str, measured: Run, floor: Run) -> str:
    return (f"  {name:<34} throughput {measured.throughput / floor.throughput:6.3f}   "
            f"p99 {measured.percentile(99) / floor.percentile(99):6.2f}×   p99.9 {measured.percentile(99.9) / floor.percentile(99.9):6.2f}×")
