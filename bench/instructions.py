"""Instructions per event, counted by valgrind, for comparing two versions of the code on a
noisy machine (a script that prints figures, not a test).

    python bench/instructions.py [--workload post|batch|floor|customer-read|project-read] [--count N] [--url URL]

On these shared virtual machines CPU time per request swings by ±20 % from one minute to
the next (the floor's own figure moves as much), which hides a 5 % change. The number of
instructions the process executes hardly moves: this runs the workload under valgrind's
callgrind twice, with nothing measured and with `--count` more of it, and prints the
difference per event. The set-up's own count still varies a little from run to run, and
that is divided by `--count`: the same tree gave 4.84 M per POST with `--count 100` and
4.93 M with 400, so compare at 400 for a change of a few per cent. Both runs set up the same data (`batch_import.set_up`, 400
customers, then 200 warm-up events), with PYTHONHASHSEED=0, on temporary SQLite files, or
with --url on a scratch PostgreSQL database named after it (`<name>_api`, created and
dropped; the name must contain "bench" or "test"). On PostgreSQL only this process is
counted (client, app and psycopg), not the server's.

- `post`: `--count` event POSTs to `/v1/events`, one after another (default 200);
- `batch`: `--count` batches of 500 events to `/v1/events/batch` (default 8);
- `floor`: `--count` POSTs of the same events to the floor (`bench/floor_app.py`), so that
  Rapport's count reads as a ratio to it, like every other figure here (default 200);
- `customer-read`, `project-read`: `--count` GETs of customers or projects by id, in turn,
  after the warm-up events graded them (default 200).

To compare two commits, run it from the root of a checkout of each (`git worktree add`),
with the same virtualenv and `PYTHONPATH=.` so that the checkout's `app` is the one measured. A run takes several minutes (valgrind runs Python about 50 times slower). It
needs valgrind on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from batch_import import databases
from single_post import check_name

BATCH = 500
WARM_UP = 200


def work(workload: str, count: int, server: str | None) -> None:
    """Set up, warm up, then `count` units of `workload` (run inside valgrind)."""
    with tempfile.TemporaryDirectory() as tmp:
        url, _, drop = databases(server, Path(tmp))
        try:
            _work(workload, count, url)
        finally:
            drop()


def _work(workload: str, count: int, url: str) -> None:

    from batch_import import KEY, in_process_client, make_events, rapport_app, set_up

    owners, installers, projects = set_up(url, 400)
    size = BATCH if workload == "batch" else 0 if workload.endswith("-read") else 1
    events = make_events(WARM_UP + count * size, owners, installers, projects)
    if workload == "floor":
        os.environ["FLOOR_DATABASE_URL"] = url
        from floor_app import create_app as create_floor

        app, path = create_floor(), "/events"
    else:
        app, path = rapport_app(url), "/v1/events"

    async def run() -> None:
        async with in_process_client(app, {"Authorization": f"Bearer {KEY}"}) as client:
            for i, e in enumerate(events[:WARM_UP]):
                r = await client.post(path, json={**e, "external_id": f"warm-{i}"})
                assert r.status_code == 201, r.text[:300]
            rest = events[WARM_UP:]
            if workload.endswith("-read"):
                ids = [cid for cid, _ in owners + installers] if workload == "customer-read" else [pid for pid, _ in projects]
                for i in range(count):
                    r = await client.get(f"/v1/{workload.split('-')[0]}s/{ids[i % len(ids)]}")
                    assert r.status_code == 200, r.text[:300]
            elif workload != "batch":
                for e in rest:
                    r = await client.post(path, content=json.dumps(e).encode(), headers={"content-type": "application/json"})
                    assert r.status_code == 201, r.text[:300]
            else:
                for i in range(0, len(rest), BATCH):
                    r = await client.post("/v1/events/batch", json=rest[i : i + BATCH])
                    assert r.status_code == 200 and r.json()["created"] == len(rest[i : i + BATCH]), r.text[:300]

    asyncio.run(run())
    if workload != "floor":
        app.state.context.db.engine.dispose()


def instructions(workload: str, count: int, server: str | None) -> int:
    """Instructions the whole process executes for `count` units, under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--inner", "--workload", workload, "--count", str(count)]
    command += ["--url", server] if server else []
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    assert collected, done.stderr[-2000:]
    return int(collected.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("post", "batch", "floor", "customer-read", "project-read"), default="post")
    parser.add_argument("--count", type=int, help="POSTs or GETs (default 200), or batches of 500 (default 8)")
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch database; default: a SQLite file")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_name(args.url)
    count = args.count if args.count is not None else (8 if args.workload == "batch" else 200)
    if args.inner:
        work(args.workload, count, args.url)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH")
    base, measured = instructions(args.workload, 0, args.url), instructions(args.workload, count, args.url)
    events = count * (BATCH if args.workload == "batch" else 1)
    engine = "PostgreSQL" if args.url else "SQLite"
    unit = "reads" if args.workload.endswith("-read") else "events"
    print(f"{Path.cwd().name}: {args.workload} on {engine}, {events} {unit} after the set-up")
    print(f"  instructions, set-up only        {base:>16,}")
    print(f"  instructions, set-up + workload  {measured:>16,}")
    print(f"  instructions per {unit[:-1]:<5}           {(measured - base) / events:>16,.0f}")


if __name__ == "__main__":
    main()
