"""Events per second through POST /v1/events/batch, next to the plain SQLAlchemy Core insert
of the same rows in the same run (a script that prints figures, not a test).

    python bench/batch_import.py [--url URL] [--events 20000] [--batch 500] [--customers 400]

Two empty databases get the same customers (`--customers`, half owners, half installers,
one project per owner). Then the same `--events` events (visits, materials, bids…, each
with an external_id) go:

- through the API: `POST /v1/events/batch` in `--batch`-event JSON bodies, via httpx's
  ASGI transport (the whole app, inside its lifespan as a server runs it: auth, parsing,
  validation, storage, one re-grade per touched subject, the answer) — no network in
  between;
- as the floor: `insert(events)` with SQLAlchemy Core, `--batch` rows per transaction,
  values already validated, no grading.

It prints both rates and their ratio (the API's share of the floor). Without --url it
uses temporary SQLite files (WAL, synchronous=NORMAL); with a PostgreSQL URL it creates
and drops two databases named after it (`<name>_api`, `<name>_floor`).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import anyio
import httpx
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from app.db import models as m
from app.db.engine import Database, make_engine
from app.main import create_app
from app.settings import Settings
from app.startup import prepare

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
KEY = "bench-admin-secret-0123456789"


def make_events(n: int, owners: list[tuple[int, str]], installers: list[tuple[int, str]], projects: list[tuple[int, int]], seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        at = (NOW - timedelta(days=rnd.randrange(0, 300), minutes=rnd.randrange(0, 1440))).isoformat()
        roll = rnd.random()
        if roll < 0.45:
            cid, _ = rnd.choice(owners + installers)
            item = {"type": "visit", "customer_id": cid, "attributes": {"reception": rnd.choice(["welcoming", "neutral", "rejecting"])}}
        elif roll < 0.6:
            cid, _ = rnd.choice(owners + installers)
            item = {"type": "materials_sent", "customer_id": cid, "attributes": {"items": ["samples"]}}
        elif roll < 0.75:
            cid, _ = rnd.choice(installers)
            pid, _ = rnd.choice(projects)
            item = {"type": "bid_joined", "customer_id": cid, "project_id": pid, "attributes": {"with_our_product": rnd.random() < 0.5}}
        elif roll < 0.9:
            pid, _ = rnd.choice(projects)
            item = {"type": "stage_changed", "project_id": pid, "attributes": {"stage": rnd.choice(["lead", "tender_drafting", "bidding"])}}
        else:
            cid, _ = rnd.choice(owners + installers)
            item = {"type": "order_placed", "customer_id": cid, "attributes": {"amount": rnd.randrange(10_000, 900_000)}}
        out.append({**item, "occurred_at": at, "source": "erp", "external_id": f"E{i:08d}"})
    return out


def set_up(url: str, customers: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, int]]]:
    settings = Settings(database_url=url, bootstrap_key=KEY, deliver_in_process=False)
    prepare(settings, now=NOW)
    db = Database(make_engine(url))
    from app.domain.rulebook import load_rulebook
    from app.services.customers import create_customer
    from app.services.projects import create_project

    rulebook = load_rulebook()
    owners, installers, projects = [], [], []
    with db.session(write=True) as s:
        for i in range(customers):
            kind = "owner" if i % 2 == 0 else "installer"
            c = create_customer(s, rulebook, {"name": f"{kind} {i}", "kind": kind}, now=NOW)
            (owners if kind == "owner" else installers).append((c.id, c.kind))
            if kind == "owner":
                p = create_project(s, rulebook, {"name": f"project {i}", "owner_id": c.id}, now=NOW)
                projects.append((p.id, c.id))
    db.engine.dispose()
    return owners, installers, projects


def rapport_app(url: str) -> Any:
    """Rapport on `url`, driven in-process by the bench scripts: the admin key `KEY`, the
    clock at `NOW`, no webhook thread, and no per-key rate limit (the figure is the
    service's capacity, not the limit's)."""
    return create_app(Settings(database_url=url, bootstrap_key=KEY, deliver_in_process=False, rate_limit_per_second=0), clock=lambda: NOW)


def in_process_client(app: Any, headers: dict[str, str]) -> httpx.AsyncClient:
    """A client that drives `app` in this process (httpx's ASGI transport), for the
    in-process scripts.

    That transport asks sniffio, on every request, whether it runs under trio. Without
    sniffio installed (anyio no longer needs it) each ask was a failed import, which
    searches the whole of sys.path again: ~60 µs of the client's CPU per request, billed
    to Rapport and to its floor alike, which flattered their ratio. A None in sys.modules
    makes that import fail at once."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", headers=headers, timeout=600)


def through_api(url: str, events: list[dict[str, Any]], batch: int) -> float:
    app = rapport_app(url)

    async def run() -> float:
        # Inside the app's lifespan, as a server runs it: it moves the app's start-up objects
        # out of the garbage collector's reach (app/main.py). Without it, the same 20,000
        # events took about 30 % more CPU (6.4-7.4 s against 4.9-6.0 s, alternated runs).
        async with app.router.lifespan_context(app), in_process_client(app, {"Authorization": f"Bearer {KEY}"}) as client:
            start = time.perf_counter()
            for i in range(0, len(events), batch):
                r = await client.post("/v1/events/batch", json=events[i : i + batch])
                assert r.status_code == 200, r.text[:500]
                rejected = [x["problem"] for x in r.json()["results"] if x["status"] == "rejected"]
                assert not rejected, rejected[:3]
            return time.perf_counter() - start

    elapsed = anyio.run(run)
    app.state.context.db.engine.dispose()
    return elapsed


def through_core(url: str, events: list[dict[str, Any]], batch: int) -> float:
    engine = make_engine(url)
    rows = [
        {
            "type": e["type"],
            "customer_id": e.get("customer_id"),
            "project_id": e.get("project_id"),
            "occurred_at": datetime.fromisoformat(e["occurred_at"]),
            "recorded_at": NOW,
            "attributes": e["attributes"],
            "source": e["source"],
            "external_id": e["external_id"],
            "actor": "bench",
        }
        for e in events
    ]
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        with engine.begin() as conn:
            conn.execute(insert(m.Event), rows[i : i + batch])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def databases(url: str | None, tmp: Path) -> tuple[str, str, Callable[[], None]]:
    if url is None:
        return f"sqlite:///{tmp / 'api.db'}", f"sqlite:///{tmp / 'floor.db'}", lambda: None
    server = make_url(url)
    names = [f"{server.database}_api", f"{server.database}_floor"]
    admin = make_engine(server.set(database="postgres").render_as_string(hide_password=False)).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return *(server.set(database=n).render_as_string(hide_password=False) for n in names), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL server URL whose database name is used as a prefix; default: SQLite files")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--customers", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        api_url, floor_url, drop = databases(args.url, Path(tmp))
        try:
            owners, installers, projects = set_up(api_url, args.customers)
            assert (owners, installers, projects) == set_up(floor_url, args.customers)
            events = make_events(args.events, owners, installers, projects)
            core = through_core(floor_url, events, args.batch)
            api = through_api(api_url, events, args.batch)
        finally:
            drop()
    engine = "PostgreSQL" if args.url else "SQLite"
    print(f"{engine}: {args.events} events in batches of {args.batch}, {args.customers} customers, {len(projects)} projects")
    print(f"  SQLAlchemy Core insert (floor): {args.events / core:9.0f} events/s  ({core:.2f} s)")
    print(f"  POST /v1/events/batch         : {args.events / api:9.0f} events/s  ({api:.2f} s)")
    print(f"  ratio API / floor             : {core / api:9.3f}")


if __name__ == "__main__":
    main()
