"""Single event POSTs against real servers, next to a floor measured in the same run
(a script that prints figures, not a test).

    python bench/single_post.py [--url URL] [--seconds 20] [--warmup 3] [--clients 16] [--rate 250] [--workers 1]

Two databases get the same customers and projects (`batch_import.set_up`). Rapport
(`uvicorn app.main:create_app --factory`, configured by RAPPORT_* variables, outbound
webhooks off) serves one, the floor (`bench/floor_app.py`: validate the same `EventIn`,
insert one row with SQLAlchemy Core) the other, each as a uvicorn subprocess with
`--workers` processes on loopback. This process is the client (asyncio + httpx,
keep-alive); its own ceiling is measured first against the floor's empty `GET /ping`.

For each server, in turn:
- closed loop: `--clients` concurrent clients for `--seconds` after `--warmup`;
- open loop: `--rate` requests per second for `--seconds` after `--warmup`, latencies from
  the scheduled send time; `late` counts sends the client started over 10 ms behind schedule.

Every request is a new event (unique source + external_id) from `batch_import.make_events`'s
mix. Rapport's POSTs go to `/v1/events` with an admin key (per-key rate limit off). It prints throughput and
p50/p99/p99.9 for both, and the ratios Rapport / floor (targets: throughput ≥ 0.6, p99 ≤ 2×),
and, where /proc tells, each server's own CPU per answered request in the closed loop.
Without --url it uses temporary SQLite files (WAL, synchronous=NORMAL); with a PostgreSQL
URL it creates and drops `<name>_api` and `<name>_floor` (the name must contain "bench" or
"test").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from batch_import import KEY, databases, make_events, set_up
from load import FIGURES_HEADER, MakeRequest, Request, Run, closed_loop, figures_row, open_loop, ratio_row, server

# The per-key rate limit guards a shared service from one caller; the benchmark measures
# capacity, so one key must be able to use all of it.
UNLIMITED = {"RAPPORT_RATE_LIMIT_PER_SECOND": "0"}
MIX = 20_000  # distinct event shapes; request i uses shape i % MIX with its own external_id


def posts(path: str, events: list[dict[str, Any]], prefix: str) -> MakeRequest:
    def make(i: int) -> Request:
        return "POST", path, json.dumps({**events[i % len(events)], "external_id": f"{prefix}{i}"}).encode()

    return make


def check_name(url: str | None) -> None:
    if url and not any(word in url.rsplit("/", 1)[-1] for word in ("bench", "test")):
        raise SystemExit("the PostgreSQL database name must contain 'bench' or 'test': its scratch databases are dropped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch databases; default: SQLite files")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--customers", type=int, default=400)
    args = parser.parse_args()
    check_name(args.url)
    runs: dict[tuple[str, str], Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        api_url, floor_url, drop = databases(args.url, Path(tmp))
        try:
            owners, installers, projects = set_up(api_url, args.customers)
            assert (owners, installers, projects) == set_up(floor_url, args.customers)
            events = make_events(MIX, owners, installers, projects)
            loads = {
                "closed": lambda base, make, headers: closed_loop(base, make, clients=args.clients, seconds=args.seconds, warmup=args.warmup, headers=headers),
                "open": lambda base, make, headers: open_loop(base, make, rate=args.rate, seconds=args.seconds, warmup=args.warmup, headers=headers),
            }
            with server("floor_app:create_app", {"FLOOR_DATABASE_URL": floor_url}, workers=args.workers, ready_path="/ping") as base:
                runs["client", "closed"] = loads["closed"](base, lambda i: ("GET", "/ping", None), {})
                for shape, load in loads.items():
                    runs["floor", shape] = load(base, posts("/events", events, f"floor-{shape}-"), {})
            env = {"RAPPORT_DATABASE_URL": api_url, "RAPPORT_BOOTSTRAP_KEY": KEY, "RAPPORT_DELIVER_IN_PROCESS": "false", **UNLIMITED}
            with server("app.main:create_app", env, workers=args.workers) as base:
                for shape, load in loads.items():
                    runs["rapport", shape] = load(base, posts("/v1/events", events, f"api-{shape}-"), {"Authorization": f"Bearer {KEY}"})
        finally:
            drop()
    engine = "PostgreSQL" if args.url else "SQLite"
    print(f"{engine}, uvicorn --workers {args.workers}; {args.customers} customers, {len(projects)} projects; "
          f"{args.seconds:g} s measured after {args.warmup:g} s warm-up")
    print(FIGURES_HEADER)
    print(figures_row(f"client ceiling (GET /ping, {args.clients} clients)", runs["client", "closed"]))
    for shape, label in (("closed", f"closed loop, {args.clients} clients"), ("open", f"open loop, {args.rate:g}/s")):
        print(f" {label}")
        print(figures_row("floor (validate + insert one row)", runs["floor", shape]))
        print(figures_row("Rapport POST /v1/events", runs["rapport", shape]))
        print(ratio_row("Rapport / floor", runs["rapport", shape], runs["floor", shape]))
    floor_cpu, rapport_cpu = (runs[who, "closed"].server_cpu_ms() for who in ("floor", "rapport"))
    if floor_cpu and rapport_cpu:
        # The server processes' own CPU (from /proc): on one core of Python, a request's CPU
        # is what bounds the closed loop's throughput.
        print(f" server CPU per answered request, closed loop (user + system): floor {floor_cpu[0]:.3f} + {floor_cpu[1]:.3f} ms, "
              f"Rapport {rapport_cpu[0]:.3f} + {rapport_cpu[1]:.3f} ms; floor / Rapport {sum(floor_cpu) / sum(rapport_cpu):.3f}")
    for (who, shape), run in runs.items():
        for failure in run.failures:
            print(f"  {who} {shape} failure: {failure}")


if __name__ == "__main__":
    main()
