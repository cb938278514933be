"""CPU per request in each phase of an event write, in-process (a script that prints
figures, not a test).

    python bench/phases.py [--workload post|batch] [--count N] [--warmup N] [--url URL] [--phase MODULE:NAME …]

Where a write's time goes, for the next round of work on it: each function in `PHASES`
(and each `--phase`) is wrapped with a timer of the CPU time of the thread that runs it
(`time.thread_time`: a write runs on a worker thread, and waiting on the database is not
counted), and the workload is driven through httpx's ASGI transport, inside the app's
lifespan, as `batch_import.py` drives it, on the same data (`batch_import.set_up`: 400
customers, 200 projects; `make_events`'s mix):

- `post`: `--warmup` event POSTs, then `--count` more, one after another (default 2,000);
- `batch`: `--count` events in 500-event bodies to `/v1/events/batch` (default 20,000).

It prints the process's CPU per request (POST or batch) and, for each phase, its calls and
CPU per request. Phases nest (`regrade` holds `evaluate_level`), so they do not add up.
Each wrapped call costs about half a microsecond more: read a phase called 500 times a
batch with that in mind. Without --url it uses a temporary SQLite file; with a PostgreSQL
URL it creates and drops `<name>_api` and `<name>_floor` (the name must contain "bench"
or "test"; the floor database is created by the shared helper and left empty).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from batch_import import KEY, databases, in_process_client, make_events, rapport_app, set_up
from single_post import check_name

PHASES = (
    "app.db.engine:Database.transaction",
    "app.services.events:record_event",
    "app.services.batch:record_batch",
    "app.grading:regrade",
    "app.domain.evaluation:evaluate_level",
    "app.domain.evaluation:evaluate_heat",
    "app.db.facts:customer_facts_many",
    "app.db.facts:project_facts_many",
    "app.grading:Writes.add",
    "app.grading:Writes.flush",
    "app.grading:snapshot",
    "app.services.events:Subjects.prefetch",
    "app.services.events:check_new_event",
    "app.services.events:store_event",
    "app.services.batch:_store",
    "app.api.bodies:json_items",
    "app.api.bodies:validate_item",
    "app.api.events:_new_event",
)


class Timers:
    """Thread-CPU seconds and calls per wrapped function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, phase: str) -> None:
        """Replace MODULE:NAME (NAME may be Class.method) by a timed twin, also where a module
        of the app imported the function by name."""
        module_name, _, dotted = phase.partition(":")
        owner: Any = importlib.import_module(module_name)
        *path, name = dotted.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        timed = self._timed(dotted, original)
        setattr(owner, name, timed)
        if not path:
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").startswith("app.") and getattr(module, name, None) is original:
                    setattr(module, name, timed)

    def _timed(self, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls = self.seconds, self.calls

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[key] = seconds.get(key, 0.0) + time.thread_time() - start
                calls[key] = calls.get(key, 0) + 1

        return timed


def drive(url: str, workload: str, count: int, warmup: int, timers: Timers) -> tuple[float, int]:
    """Run the workload on `url`; the process's CPU seconds and the requests measured."""
    owners, installers, projects = set_up(url, 400)
    per_request = 500 if workload == "batch" else 1
    events = make_events(warmup + count, owners, installers, projects)
    bodies = [json.dumps(events[i : i + per_request]).encode() if workload == "batch" else json.dumps(events[i]).encode() for i in range(0, len(events), per_request)]
    warm, measured = bodies[: warmup // per_request], bodies[warmup // per_request :]
    path, answer = ("/v1/events/batch", 200) if workload == "batch" else ("/v1/events", 201)
    app = rapport_app(url)

    async def run() -> float:
        async with app.router.lifespan_context(app), in_process_client(app, {"Authorization": f"Bearer {KEY}"}) as client:

            async def send(body: bytes) -> None:
                r = await client.post(path, content=body, headers={"content-type": "application/json"})
                assert r.status_code == answer, r.text[:300]

            for body in warm:
                await send(body)
            timers.clear()
            start = time.process_time()
            for body in measured:
                await send(body)
            return time.process_time() - start

    cpu = asyncio.run(run())
    app.state.context.db.engine.dispose()
    return cpu, len(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("post", "batch"), default="post")
    parser.add_argument("--count", type=int, help="events measured (default: 2,000 POSTs, 20,000 in batches)")
    parser.add_argument("--warmup", type=int, help="events sent first, not measured (default: 1,000 POSTs, none in batches)")
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch databases; default: SQLite")
    parser.add_argument("--phase", action="append", default=[], help="another function to time, as MODULE:NAME or MODULE:Class.method")
    args = parser.parse_args()
    check_name(args.url)
    batch = args.workload == "batch"
    count = args.count or (20_000 if batch else 2_000)
    warmup = args.warmup if args.warmup is not None else (0 if batch else 1_000)
    timers = Timers()
    for phase in (*PHASES, *args.phase):
        timers.wrap(phase)
    with tempfile.TemporaryDirectory() as tmp:
        api_url, _, drop = databases(args.url, Path(tmp))
        try:
            cpu, requests = drive(api_url, args.workload, count, warmup, timers)
        finally:
            drop()
    unit, scale = ("batch", 1e3) if batch else ("POST", 1e6)
    per = "ms" if batch else "µs"
    print(f"{'SQLite' if args.url is None else 'PostgreSQL'}, {args.workload}: {count:,} events measured after {warmup:,}")
    print(f"  process CPU per {unit}: {cpu * scale / requests:9.1f} {per}")
    for key in sorted(timers.seconds, key=timers.seconds.__getitem__, reverse=True):
        print(f"  {key:40s} {timers.calls[key] / requests:8.2f} calls {timers.seconds[key] * scale / requests:9.1f} {per}")


if __name__ == "__main__":
    main()
