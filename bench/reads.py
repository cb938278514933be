"""Customer and project reads against a real server with many customers loaded, next to a
floor measured in the same run (a script that prints figures, not a test).

    python bench/reads.py [--url URL] [--customers 100000] [--events 50000] [--seconds 20] [--clients 16] [--load python|wrk] [--rate 1000[,RATE…]]

The database is filled in two steps, so that 100,000 customers take minutes, not hours,
and every stored grade is still the one the service would compute:

1. customers (half owners, half installers) and one project per owner are inserted with
   SQLAlchemy Core, in chunks, each with the grade the service gives a subject without
   events (`initial_level` / `initial_heat`; a customer's once per kind, as it does not
   depend on the id; a project's one by one, as its evidence names the owner);
2. `--events` events of `batch_import.make_events`'s mix go through `POST /v1/events/batch`
   in-process (the whole write path: validation, storage, re-grading, history), so the
   customers and projects they touch carry real levels, heats and evidence.

`--verify` then replays the whole log (`rapport verify`'s check) to prove the fill is
consistent. Rapport (`uvicorn app.main:create_app --factory`) and the floor
(`bench/floor_app.py`: one customer row by primary key, returned as JSON) serve the same
database from subprocesses; `--clients` concurrent clients GET random ids for `--seconds`
after `--warmup`: `/v1/customers/{id}`, `/v1/projects/{id}` on Rapport, `/customers/{id}`
on the floor (with `--load wrk`, wrk sends them: its C client leaves the server the CPU
this script's Python takes, and adds little latency of its own). Target: p99 under 10 ms. With `--rate`, each server is then also read in an
open loop: the same `--clients` connections sending `--rate` reads per second between
them, each latency from its scheduled time (a read that waits for a free connection counts
the wait), so the p99 is read at a stated load rather than at saturation. Without --url it uses a temporary SQLite file;
with a PostgreSQL URL it creates and drops `<name>_api` and `<name>_floor` (only the
first is used; the name must contain "bench" or "test").
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from app.db import models as m
from app.db.engine import Database, make_engine
from app.domain.rulebook import Rulebook, load_rulebook
from app.grading import initial_heat, initial_level
from app.services.verify import replay
from app.settings import Settings
from app.startup import prepare
from batch_import import KEY, NOW, databases, make_events, through_api
from load import FIGURES_HEADER, MakeRequest, Request, Run, closed_loop, figures_row, open_loop, server, wrk_closed_loop
from single_post import UNLIMITED, check_name, rates

CHUNK = 10_000


def _columns(row: m.Customer | m.Project) -> dict[str, Any]:
    """The row's values to insert; those not set on it (None) are left to the columns' defaults."""
    return {c.key: value for c in row.__table__.columns if c.key != "id" and (value := getattr(row, c.key)) is not None}


def _project(rulebook: Rulebook, n: int, owner_id: int) -> m.Project:
    # Graded one by one: a project's evidence names its owner.
    project = m.Project(name=f"project {n}", external_ref=f"P{n:07d}", tags=[], version=1, created_at=NOW, updated_at=NOW)
    initial_heat(rulebook, project, m.Customer(id=owner_id, level=0), NOW)
    return project


def fill(url: str, customers: int, events: int, batch: int) -> tuple[list[int], list[int]]:
    """Load the database; return the customer ids and the project ids."""
    prepare(Settings(database_url=url, bootstrap_key=KEY, deliver_in_process=False), now=NOW)
    rulebook = load_rulebook()
    engine = make_engine(url)
    common = {"contact": {}, "tags": [], "version": 1, "created_at": NOW, "updated_at": NOW}
    blank = {kind: m.Customer(kind=kind, **common) for kind in ("owner", "installer")}
    for c in blank.values():
        initial_level(rulebook, c, NOW)
    rows = ({**_columns(blank[kind]), "name": f"{kind} {i}", "external_ref": f"C{i:07d}", "region": f"region {i % 30}", "rep": f"rep {i % 200}"}
            for i, kind in ((i, "owner" if i % 2 == 0 else "installer") for i in range(customers)))
    with engine.begin() as conn:
        while chunk := list(islice(rows, CHUNK)):
            conn.execute(insert(m.Customer), chunk)
        people = conn.execute(select(m.Customer.id, m.Customer.kind).order_by(m.Customer.id)).all()
        owners = [(cid, kind) for cid, kind in people if kind == "owner"]
        installers = [(cid, kind) for cid, kind in people if kind == "installer"]
        projects_rows = ({**_columns(_project(rulebook, n, cid)), "owner_id": cid} for n, (cid, _) in enumerate(owners))
        while chunk := list(islice(projects_rows, CHUNK)):
            conn.execute(insert(m.Project), chunk)
        projects = [tuple(r) for r in conn.execute(select(m.Project.id, m.Project.owner_id).order_by(m.Project.id))]
    engine.dispose()
    if events:
        through_api(url, make_events(events, owners, installers, projects), batch)
    return [cid for cid, _ in people], [pid for pid, _ in projects]


def gets(path: str, ids: list[int]) -> MakeRequest:
    rnd = random.Random(11)

    def make(_: int) -> Request:
        return "GET", path.format(id=rnd.choice(ids)), None

    return make


def paths(make: MakeRequest, n: int = 20_000) -> list[str]:
    """The first `n` paths `make` gives: what wrk sends in turn."""
    return [make(i)[1] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch databases; default: a SQLite file")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=50_000, help="events recorded through the batch endpoint")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=rates, default=[], help="open-loop reads per second over the --clients connections; several, comma-separated, run in turn (default: none)")
    parser.add_argument("--load", choices=("python", "wrk"), default="python", help="the closed loop's load generator: this script's own client, or wrk (C; must be on the PATH), whose lighter client shows a server's tail the Python client's own latency hides (default: python)")
    parser.add_argument("--verify", action="store_true", help="replay the whole log after the fill and stop if it disagrees")
    args = parser.parse_args()
    check_name(args.url)
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, _, drop = databases(args.url, Path(tmp))
        try:
            started = time.perf_counter()
            customer_ids, project_ids = fill(url, args.customers, args.events, args.batch)
            filled = time.perf_counter() - started
            if args.verify:
                db = Database(make_engine(url))
                with db.snapshot() as session:  # one snapshot, as `rapport verify` reads
                    disagreements = replay(session, load_rulebook(), as_of=NOW)
                db.engine.dispose()
                if disagreements:
                    raise SystemExit(f"the fill is inconsistent: {len(disagreements)} disagreement(s), e.g. {disagreements[:3]}")
            def load(name: str, base: str, make: MakeRequest, headers: dict[str, str]) -> None:
                if args.load == "wrk":
                    runs[name] = wrk_closed_loop(base, paths(make), clients=args.clients, seconds=args.seconds, warmup=args.warmup, headers=headers)
                else:
                    runs[name] = closed_loop(base, make, clients=args.clients, seconds=args.seconds, warmup=args.warmup, headers=headers)
                for rate in args.rate:
                    runs[f"{name} {rate:g}/s"] = open_loop(base, make, rate=rate, clients=args.clients, seconds=args.seconds, warmup=args.warmup, headers=headers)

            with server("floor_app:create_app", {"FLOOR_DATABASE_URL": url}, workers=args.workers, ready_path="/ping") as base:
                load("client", base, lambda i: ("GET", "/ping", None), {})
                load("floor", base, gets("/customers/{id}", customer_ids), {})
            env = {"RAPPORT_DATABASE_URL": url, "RAPPORT_BOOTSTRAP_KEY": KEY, "RAPPORT_DELIVER_IN_PROCESS": "false", **UNLIMITED}
            headers = {"Authorization": f"Bearer {KEY}"}
            with server("app.main:create_app", env, workers=args.workers) as base:
                load("customers", base, gets("/v1/customers/{id}", customer_ids), headers)
                load("projects", base, gets("/v1/projects/{id}", project_ids), headers)
        finally:
            drop()
    engine = "PostgreSQL" if args.url else "SQLite"
    print(f"{engine}, uvicorn --workers {args.workers}, load by {'wrk' if args.load == 'wrk' else 'this script'}; {len(customer_ids)} customers, {len(project_ids)} projects, {args.events} events "
          f"(filled in {filled:.0f} s{', verified' if args.verify else ''}); {args.clients} clients, {args.seconds:g} s after {args.warmup:g} s warm-up")
    print(FIGURES_HEADER)
    print(figures_row("client ceiling (GET /ping)", runs["client"]))
    print(figures_row("floor (one row by primary key)", runs["floor"]))
    for name in ("customers", "projects"):
        run = runs[name]
        print(figures_row(f"Rapport GET /v1/{name}/{{id}}", run))
    for name in ("customers", "projects"):
        run, floor = runs[name], runs["floor"]
        met = "met" if run.percentile(99) < 10 else "NOT met"
        print(f"  {name}: throughput / floor {run.throughput / floor.throughput:.3f}, p99 / floor {run.percentile(99) / floor.percentile(99):.2f}×, "
              f"p99 {run.percentile(99):.2f} ms (target < 10 ms: {met})")
    for rate in args.rate:
        print(f" open loop, {rate:g} reads/s over {args.clients} connections")
        print(figures_row("floor (one row by primary key)", runs[f"floor {rate:g}/s"]))
        for name in ("customers", "projects"):
            print(figures_row(f"Rapport GET /v1/{name}/{{id}}", runs[f"{name} {rate:g}/s"]))
        for name in ("customers", "projects"):
            run = runs[f"{name} {rate:g}/s"]
            met = "under" if run.percentile(99) < 10 else "NOT under"
            print(f"  {name} at {rate:g}/s: p99 {run.percentile(99):.2f} ms ({met} 10 ms), p99 / floor {run.percentile(99) / runs[f'floor {rate:g}/s'].percentile(99):.2f}×")
    for name, run in runs.items():
        for failure in run.failures:
            print(f"  {name} failure: {failure}")


if __name__ == "__main__":
    main()
