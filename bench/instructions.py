"""Instructions per event, counted by valgrind, for comparing two versions of the code on a
noisy machine (a script that prints figures, not a test).

    python bench/instructions.py [--workload post|batch] [--count N]

On these shared virtual machines CPU time per request swings by ±20 % from one minute to
the next (the floor's own figure moves as much), which hides a 5 % change. The number of
instructions the process executes does not move: this runs the workload under valgrind's
callgrind twice, with nothing measured and with `--count` more of it, and prints the
difference per event. Both runs set up the same data (`batch_import.set_up`, 400
customers, then 200 warm-up events), with PYTHONHASHSEED=0, on temporary SQLite files.

- `post`: `--count` event POSTs to `/v1/events`, one after another (default 200);
- `batch`: `--count` batches of 500 events to `/v1/events/batch` (default 8).

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

BATCH = 500
WARM_UP = 200


def work(workload: str, count: int) -> None:
    """Set up, warm up, then `count` units of `workload` (run inside valgrind)."""
    import httpx

    from batch_import import KEY, make_events, rapport_app, set_up

    url = f"sqlite:///{tempfile.mkdtemp()}/api.db"
    owners, installers, projects = set_up(url, 400)
    size = BATCH if workload == "batch" else 1
    events = make_events(WARM_UP + count * size, owners, installers, projects)
    app = rapport_app(url)

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
            for i, e in enumerate(events[:WARM_UP]):
                r = await client.post("/v1/events", json={**e, "external_id": f"warm-{i}"})
                assert r.status_code == 201, r.text[:300]
            rest = events[WARM_UP:]
            if workload == "post":
                for e in rest:
                    r = await client.post("/v1/events", content=json.dumps(e).encode(), headers={"content-type": "application/json"})
                    assert r.status_code == 201, r.text[:300]
            else:
                for i in range(0, len(rest), BATCH):
                    r = await client.post("/v1/events/batch", json=rest[i : i + BATCH])
                    assert r.status_code == 200 and r.json()["created"] == len(rest[i : i + BATCH]), r.text[:300]

    asyncio.run(run())
    app.state.context.db.engine.dispose()


def instructions(workload: str, count: int) -> int:
    """Instructions the whole process executes for `count` units, under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--inner", "--workload", workload, "--count", str(count)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    assert collected, done.stderr[-2000:]
    return int(collected.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("post", "batch"), default="post")
    parser.add_argument("--count", type=int, help="POSTs (default 200) or batches of 500 (default 8)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count if args.count is not None else (200 if args.workload == "post" else 8)
    if args.inner:
        work(args.workload, count)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH")
    base, measured = instructions(args.workload, 0), instructions(args.workload, count)
    events = count * (BATCH if args.workload == "batch" else 1)
    print(f"{Path.cwd().name}: {args.workload}, {events} events after the set-up")
    print(f"  instructions, set-up only        {base:>16,}")
    print(f"  instructions, set-up + workload  {measured:>16,}")
    print(f"  instructions per event           {(measured - base) / events:>16,.0f}")


if __name__ == "__main__":
    main()
