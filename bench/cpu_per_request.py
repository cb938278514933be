"""CPU milliseconds per request, in-process, for Rapport and the floor (a script that prints
figures, not a test).

    python bench/cpu_per_request.py [--url URL] [--requests 600] [--rounds 3] [--clients 1]

The steady figure to compare code changes by on a shared machine: no sockets, no server
processes, and CPU time (`time.process_time`) rather than wall time, so other jobs on the
machine move it far less than they move the HTTP benchmarks. Each app is driven through
httpx's ASGITransport in this process (client, app and database driver all counted: the
client's share is the same for both), inside the app's lifespan as a server runs it, by
`--clients` concurrent clients (1: one request after another), on the same customers and
projects (`batch_import.set_up`, 400 customers):

- `POST /v1/events` (Rapport, admin key, rate limit off) and `POST /events` (the floor:
  validate the same `EventIn` and insert one row), every event new, in
  `batch_import.make_events`'s mix;
- `GET /v1/customers/{id}` and the floor's `GET /customers/{id}`;
- `GET /readyz`, Rapport's cheapest route that touches the database.

Each figure is the lowest of `--rounds` rounds of `--requests` requests, after a warm-up
round. Without --url it uses temporary SQLite files; with a PostgreSQL URL it creates and
drops `<name>_api` and `<name>_floor` (the name must contain "bench" or "test"). On
PostgreSQL the server's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


from batch_import import KEY, databases, in_process_client, make_events, rapport_app, set_up
from single_post import check_name


def cpu_ms(app: Any, requests: list[tuple[str, str, bytes | None]], headers: dict[str, str], clients: int = 1) -> float:
    """CPU milliseconds per request for `requests`, sent by `clients` concurrent clients
    (with 16, Rapport's SQLite writes that wait together share a commit)."""

    async def run() -> float:
        # Inside each app's lifespan, as a server runs it (Rapport's sets up the garbage
        # collector and its worker threads).
        async with app.router.lifespan_context(app), in_process_client(app, headers) as client:
            left = iter(requests)

            async def one_client() -> None:
                for method, path, body in left:
                    r = await client.request(method, path, content=body, headers={"content-type": "application/json"} if body else None)
                    assert r.status_code in (200, 201), (path, r.status_code, r.text[:300])

            start = time.process_time()
            await asyncio.gather(*(one_client() for _ in range(clients)))
            return (time.process_time() - start) / len(requests) * 1000

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch databases; default: SQLite files")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1: one request after another)")
    args = parser.parse_args()
    check_name(args.url)
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        api_url, floor_url, drop = databases(args.url, Path(tmp))
        try:
            owners, installers, projects = set_up(api_url, 400)
            assert (owners, installers, projects) == set_up(floor_url, 400)
            events = make_events(n * (args.rounds + 1), owners, installers, projects)
            customer_ids = [cid for cid, _ in owners + installers]

            def posts(path: str, round_: int) -> list[tuple[str, str, bytes | None]]:
                batch = events[round_ * n : (round_ + 1) * n]
                return [("POST", path, json.dumps({**e, "external_id": f"cpu-{round_}-{i}"}).encode()) for i, e in enumerate(batch)]

            def gets(path: str) -> list[tuple[str, str, bytes | None]]:
                return [("GET", path.format(customer_ids[i % len(customer_ids)]), None) for i in range(n)]

            rapport = rapport_app(api_url)
            os.environ["FLOOR_DATABASE_URL"] = floor_url
            from floor_app import create_app as create_floor

            floor = create_floor()
            auth = {"Authorization": f"Bearer {KEY}"}
            figures: dict[str, list[float]] = {}
            for round_ in range(args.rounds + 1):  # round 0 warms up
                c = args.clients
                measured = {
                    "floor POST /events": cpu_ms(floor, posts("/events", round_), {}, c),
                    "Rapport POST /v1/events": cpu_ms(rapport, posts("/v1/events", round_), auth, c),
                    "floor GET /customers/{id}": cpu_ms(floor, gets("/customers/{}"), {}, c),
                    "Rapport GET /v1/customers/{id}": cpu_ms(rapport, gets("/v1/customers/{}"), auth, c),
                    "Rapport GET /readyz": cpu_ms(rapport, gets("/readyz"), {}, c),
                }
                if round_:
                    for name, ms in measured.items():
                        figures.setdefault(name, []).append(ms)
            rapport.state.context.db.dispose()
        finally:
            drop()
    best = {name: min(values) for name, values in figures.items()}
    print(f"{'SQLite' if args.url is None else 'PostgreSQL'}; CPU ms per request, lowest of {args.rounds} rounds of {n}, {args.clients} client(s)")
    for name, ms in best.items():
        print(f"  {name:34s} {ms:7.3f}")
    print(f"  floor / Rapport, POST               {best['floor POST /events'] / best['Rapport POST /v1/events']:7.3f}")
    print(f"  floor / Rapport, GET                {best['floor GET /customers/{id}'] / best['Rapport GET /v1/customers/{id}']:7.3f}")


if __name__ == "__main__":
    main()
