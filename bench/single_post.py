"""Single event POSTs against real servers, next to a floor measured in the same run
(a script that prints figures, not a test).

    python bench/single_post.py [--url URL] [--seconds 20] [--warmup 3] [--clients 16] [--rate 250[,RATE…]] [--workers 1] [--slices 4]

Two databases get the same customers and projects (`batch_import.set_up`). Rapport
(`uvicorn app.main:create_app --factory`, configured by RAPPORT_* variables, outbound
webhooks off) serves one, the floor (`bench/floor_app.py`: validate the same `EventIn`,
insert one row with SQLAlchemy Core) the other, each as a uvicorn subprocess with
`--workers` processes on loopback, both running for the whole script. This process is the
client (asyncio streams, keep-alive); its own ceiling is measured first against the floor's
empty `GET /ping`.

- closed loop: `--clients` concurrent clients for `--seconds` per server, after `--warmup`,
  in `--slices` slices that the servers take in turns (floor, Rapport, Rapport, floor, …;
  0.5 s of warm-up before each later slice). This machine's speed drifts by a third within
  minutes; one server measured after the other took whatever stretch it fell in, and the
  ratio of one run moved by as much (docs/performance.md, "The sliced-bench round").
  `--slices 1` measures one server after the other;
- open loop, then, for each server in turn: `--rate` requests per second for `--seconds`
  after `--warmup` (with several rates, e.g. `--rate 150,200,250`, each in turn: where
  each server's tail starts to climb as the rate nears what it can serve), latencies from
  the scheduled send time; `late` counts sends the client started over 10 ms behind
  schedule. Not sliced: a server that falls behind the rate must show the backlog it
  builds.

Every request is a new event (unique source + external_id) from `batch_import.make_events`'s
mix. Rapport's POSTs go to `/v1/events` with an admin key (per-key rate limit off). It prints throughput and
p50/p99/p99.9 for both, and the ratios Rapport / floor (targets: throughput ≥ 0.6, p99 ≤ 2×),
and, where /proc tells, each server's own CPU per answered request in the closed loop (and on
a PostgreSQL on this machine, its backends' CPU per answered request, for each server's
database).
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
SLICE_WARMUP = 0.5  # seconds of warm-up before each later slice: the server is warm already


def posts(path: str, events: list[dict[str, Any]], prefix: str) -> MakeRequest:
    def make(i: int) -> Request:
        return "POST", path, json.dumps({**events[i % len(events)], "external_id": f"{prefix}{i}"}).encode()

    return make


def rates(text: str) -> list[float]:
    """`--rate`: one rate or several, comma-separated."""
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a comma-separated list of numbers: {text!r}") from None
    if not all(rate > 0 for rate in rates):
        raise argparse.ArgumentTypeError("every rate must be above 0")
    return rates


def check_name(url: str | None) -> None:
    if url and not any(word in url.rsplit("/", 1)[-1] for word in ("bench", "test")):
        raise SystemExit("the PostgreSQL database name must contain 'bench' or 'test': its scratch databases are dropped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch databases; default: SQLite files")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=rates, default=[250.0], help="open-loop requests per second; several, comma-separated, are run in turn (default 250)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--slices", type=int, default=4, help="closed-loop slices per server, taken in turns (default 4; 1: one after the other)")
    args = parser.parse_args()
    check_name(args.url)
    runs: dict[tuple[str, str], Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        api_url, floor_url, drop = databases(args.url, Path(tmp))
        try:
            owners, installers, projects = set_up(api_url, args.customers)
            assert (owners, installers, projects) == set_up(floor_url, args.customers)
            events = make_events(MIX, owners, installers, projects)
            env = {"RAPPORT_DATABASE_URL": api_url, "RAPPORT_BOOTSTRAP_KEY": KEY, "RAPPORT_DELIVER_IN_PROCESS": "false", **UNLIMITED}
            with (
                server("floor_app:create_app", {"FLOOR_DATABASE_URL": floor_url}, workers=args.workers, ready_path="/ping") as floor_base,
                server("app.main:create_app", env, workers=args.workers) as rapport_base,
            ):
                served = {"floor": (floor_base, "/events", {}, floor_url), "rapport": (rapport_base, "/v1/events", {"Authorization": f"Bearer {KEY}"}, api_url)}
                runs["client", "closed"] = closed_loop(floor_base, lambda i: ("GET", "/ping", None), clients=args.clients, seconds=args.seconds, warmup=args.warmup)
                # The closed loop in slices, the servers taking turns (floor, Rapport, Rapport,
                # floor, …): a stretch of the run when the machine is slow or fast falls on both.
                slices: dict[str, list[Run]] = {"floor": [], "rapport": []}
                for k in range(args.slices):
                    for who in ("floor", "rapport") if k % 2 == 0 else ("rapport", "floor"):
                        base, path, headers, database = served[who]
                        warmup = args.warmup if k == 0 else min(args.warmup, SLICE_WARMUP)
                        slices[who].append(
                            closed_loop(base, posts(path, events, f"{who}-closed-{k}-"), clients=args.clients, seconds=args.seconds / args.slices, warmup=warmup, headers=headers, database=database)
                        )
                for who, measured in slices.items():
                    runs[who, "closed"] = Run.merged(measured)
                for rate in args.rate:
                    for who, (base, path, headers, _) in served.items():
                        runs[who, f"open {rate:g}"] = open_loop(base, posts(path, events, f"{who}-open-{rate:g}-"), rate=rate, seconds=args.seconds, warmup=args.warmup, headers=headers)
        finally:
            drop()
    engine = "PostgreSQL" if args.url else "SQLite"
    print(f"{engine}, uvicorn --workers {args.workers}; {args.customers} customers, {len(projects)} projects; "
          f"{args.seconds:g} s measured after {args.warmup:g} s warm-up; closed loop in {args.slices} slices per server, in turns")
    print(FIGURES_HEADER)
    print(figures_row(f"client ceiling (GET /ping, {args.clients} clients)", runs["client", "closed"]))
    for shape, label in (("closed", f"closed loop, {args.clients} clients"), *((f"open {rate:g}", f"open loop, {rate:g}/s") for rate in args.rate)):
        print(f" {label}")
        print(figures_row("floor (validate + insert one row)", runs["floor", shape]))
        print(figures_row("Rapport POST /v1/events", runs["rapport", shape]))
        print(ratio_row("Rapport / floor", runs["rapport", shape], runs["floor", shape]))
        if shape == "closed" and args.slices > 1:
            # Each slice's ratio, in the order run: how far the machine moved within the run.
            print(f"  {'Rapport / floor, each slice':<34} throughput " + ", ".join(f"{r.throughput / f.throughput:.3f}" for f, r in zip(slices["floor"], slices["rapport"])))
    floor_cpu, rapport_cpu = (runs[who, "closed"].server_cpu_ms() for who in ("floor", "rapport"))
    if floor_cpu and rapport_cpu:
        # The server processes' own CPU (from /proc): on one core of Python, a request's CPU
        # is what bounds the closed loop's throughput.
        print(f" server CPU per answered request, closed loop (user + system): floor {floor_cpu[0]:.3f} + {floor_cpu[1]:.3f} ms, "
              f"Rapport {rapport_cpu[0]:.3f} + {rapport_cpu[1]:.3f} ms; floor / Rapport {sum(floor_cpu) / sum(rapport_cpu):.3f}")
    floor_db, rapport_db = (runs[who, "closed"].database_cpu_ms() for who in ("floor", "rapport"))
    if floor_db is not None and rapport_db is not None:
        # PostgreSQL's backends run on the same cores as the servers and the client.
        print(f" database CPU per answered request, closed loop (PostgreSQL backends, user + system): floor {floor_db:.3f} ms, Rapport {rapport_db:.3f} ms")
    for (who, shape), run in runs.items():
        for failure in run.failures:
            print(f"  {who} {shape} failure: {failure}")


if __name__ == "__main__":
    main()
