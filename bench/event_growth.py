"""Time per recorded event as the database grows (a script that prints figures, not a test).

    python bench/event_growth.py [--url URL] [--sizes 100,1000,5000] [--probes 300]

For each size it fills an empty database with that many unrelated owner/installer/project
triples (4 events each), then records `--probes` events for one fresh installer that bids
on one project (each event re-grades the installer, the project's owner and, on level
changes, the project) and prints the median and p95 time per event, through the service
layer in one transaction per event, as the API does. The ratio of each size's median to
the smallest size's is the figure to read: flat means the cost does not grow with the
database. The fill is settled (ANALYZE, checkpoint; VACUUM on PostgreSQL) before the probe,
so the probe measures a steady database rather than the aftermath of a bulk load. Without --url it uses a temporary SQLite file (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import text

from app.db.engine import Database, make_engine
from app.db.migrate import upgrade
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.projects import create_project
from app.settings import Settings

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
CYCLE = [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}), ("impression_confirmed", {}),
         ("visit", {"reception": "neutral"}), ("visit", {"reception": "welcoming"}), ("visit", {"reception": "rejecting"}), ("visit", {"reception": "welcoming"})]


def fill(db: Database, triples: int) -> None:
    with db.session(write=True) as s:
        for i in range(triples):
            owner = create_customer(s, RULEBOOK, {"name": f"owner {i}", "kind": "owner"}, now=NOW)
            installer = create_customer(s, RULEBOOK, {"name": f"installer {i}", "kind": "installer"}, now=NOW)
            project = create_project(s, RULEBOOK, {"name": f"project {i}", "owner_id": owner.id}, now=NOW)
            for type_, c, p, attrs in [("visit", owner.id, None, {"reception": "welcoming"}), ("materials_sent", installer.id, None, {"items": ["samples"]}),
                                       ("bid_joined", installer.id, project.id, {"with_our_product": True}), ("stage_changed", None, project.id, {"stage": "bidding"})]:
                record_event(s, RULEBOOK, NewEvent(type=type_, customer_id=c, project_id=p, attributes=attrs, occurred_at=NOW - timedelta(days=i % 30)), actor="bench", now=NOW)


def settle(db: Database) -> None:
    """Let the bulk fill settle before measuring: otherwise the autovacuum, analyze and
    checkpoints that the fill itself triggers run during the probe and are billed to it."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
    else:
        # Outside any transaction (the driver connection is in autocommit mode), or SQLite
        # refuses to checkpoint.
        raw = db.engine.raw_connection()
        try:
            raw.driver_connection.execute("ANALYZE")
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()


def probe(db: Database, count: int) -> list[float]:
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "probe owner", "kind": "owner"}, now=NOW).id
        installer = create_customer(s, RULEBOOK, {"name": "probe installer", "kind": "installer"}, now=NOW).id
        project = create_project(s, RULEBOOK, {"name": "probe project", "owner_id": owner}, now=NOW).id
        record_event(s, RULEBOOK, NewEvent(type="bid_joined", customer_id=installer, project_id=project, occurred_at=NOW), actor="bench", now=NOW)
    times = []
    for i in range(count):
        type_, attrs = CYCLE[i % len(CYCLE)]
        new = NewEvent(type=type_, customer_id=installer, attributes=attrs, occurred_at=NOW - timedelta(minutes=count - i))
        start = time.perf_counter()
        with db.session(write=True) as s:
            record_event(s, RULEBOOK, new, actor="bench", now=NOW)
        times.append(time.perf_counter() - start)
    return times


def reset(db: Database) -> None:
    tables = "idempotency_records, event_retractions, grade_history, events, projects, customers, api_keys, service_state"
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        else:
            for table in tables.split(", "):
                conn.execute(text(f"DELETE FROM {table}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    upgrade(Settings(database_url=url))
    db = Database(make_engine(url))
    print(f"database: {db.engine.dialect.name}; {args.probes} events per size; one transaction per event")
    print(f"{'triples':>8} {'events in db':>12} {'median ms':>10} {'p95 ms':>8} {'median / smallest':>18}")
    base = None
    for size in (int(x) for x in args.sizes.split(",")):
        reset(db)
        fill(db, size)
        settle(db)
        times = sorted(probe(db, args.probes))
        median, p95 = statistics.median(times) * 1000, times[int(len(times) * 0.95)] * 1000
        base = base or median
        print(f"{size:>8} {size * 4:>12} {median:>10.2f} {p95:>8.2f} {median / base:>18.2f}")
    db.engine.dispose()


if __name__ == "__main__":
    main()
