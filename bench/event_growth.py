"""Time per recorded event, and the time to re-grade everything, as the database grows
(a script that prints figures, not a test).

    python bench/event_growth.py [--url URL] [--sizes 1000,10000,100000] [--probes 300] [--json FILE]

The database grows in steps to each size in `--sizes` (events in the database). It is
filled with unrelated owner/installer/project triples of 4 events each, written with
SQLAlchemy Core in chunks of 10,000 triples together with the grades and history the
service would have stored for them (evaluated by the domain functions the service uses),
so 1,000,000 events take minutes rather than the hours the service path would. At each
size, once the fill has settled (ANALYZE, checkpoint; VACUUM on PostgreSQL):

- the probe records `--probes` events for one fresh installer that bids on one project
  (each event re-grades the installer, the project's owner and, on level changes, the
  project) through the service layer, one transaction per event as the API does, and
  prints the median and p95 time per event. The ratio of each size's median to the
  smallest size's is the figure to read: flat means the cost does not grow with the
  database. On SQLite the whole event is this process's work, so the CPU time per event
  (also printed, with its ratio) is the steadier figure on a shared machine;
- `rapport verify`'s replay of the whole log runs in-process and is timed (it also proves
  the fill consistent: the run stops on any disagreement); it should grow linearly, so
  its µs per event should stay flat. `rapport verify` is then run as the command line
  runs it, in a process of its own, for its peak memory (maximum resident set size): it
  reads the log in rounds of subjects, so this should stay near flat too.

Without --url it uses a temporary SQLite file (WAL, synchronous=NORMAL); with a PostgreSQL
URL it creates and drops `<name>_api` and `<name>_floor` (only the first is used; the name
must contain "bench" or "test").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text

from app.db import models as m
from app.db.engine import Database, make_engine
from app.db.migrate import upgrade
from app.domain import facts as f
from app.domain.evaluation import evaluate_heat, evaluate_level
from app.domain.rulebook import load_rulebook
from app.grading import HEAT, LEVEL, snapshot
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.projects import create_project
from app.services.verify import replay
from app.settings import Settings
from batch_import import databases
from single_post import check_name

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
CHUNK = 10_000  # triples per transaction of the fill
FRESH = {"tags": [], "version": 1, "created_at": NOW, "updated_at": NOW}
CYCLE = [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}), ("impression_confirmed", {}),
         ("visit", {"reception": "neutral"}), ("visit", {"reception": "welcoming"}), ("visit", {"reception": "rejecting"}), ("visit", {"reception": "welcoming"})]


def fill(db: Database, start: int, stop: int) -> None:
    """Add triples number `start` to `stop` - 1 with SQLAlchemy Core, in chunks.

    Each triple is what the service would have stored for it (a visit to the owner,
    samples to the installer, the installer's bid on the project, the project's stage):
    the events, the grades evaluated from them by the domain functions the service uses,
    and one history row per grade that left 0, so `rapport verify` finds nothing to
    report. Ids are assigned here, because the evidence names the events."""
    with db.engine.begin() as conn:
        ids = {table: conn.scalar(select(func.coalesce(func.max(table.id), 0))) for table in (m.Customer, m.Project, m.Event)}
    for first in range(start, stop, CHUNK):
        rows: dict[type, list[dict[str, Any]]] = {m.Customer: [], m.Project: [], m.Event: [], m.GradeChange: []}
        for i in range(first, min(first + CHUNK, stop)):
            owner, installer = ids[m.Customer] + 1, ids[m.Customer] + 2
            project = ids[m.Project] + 1
            at = NOW - timedelta(days=i % 30)
            events = [
                f.Event(ids[m.Event] + 1 + n, type_, at, c, p, attrs)
                for n, (type_, c, p, attrs) in enumerate([
                    ("visit", owner, None, {"reception": "welcoming"}),
                    ("materials_sent", installer, None, {"items": ["samples"]}),
                    ("bid_joined", installer, project, {"with_our_product": True}),
                    ("stage_changed", None, project, {"stage": "bidding"}),
                ])
            ]
            ids[m.Customer] += 2
            ids[m.Project] += 1
            ids[m.Event] += len(events)
            own = tuple(e for e in events if e.project_id is not None)
            owner_grade = evaluate_level(RULEBOOK, f.CustomerFacts(owner, "owner", (events[0],), (f.OwnedProject(project, own),)), NOW)
            installer_grade = evaluate_level(RULEBOOK, f.CustomerFacts(installer, "installer", tuple(e for e in events if e.customer_id == installer)), NOW)
            heat = evaluate_heat(
                RULEBOOK,
                f.ProjectFacts(project, f.LinkedCustomer(owner, owner_grade.level, (events[0],)), own,
                               {installer: f.LinkedCustomer(installer, installer_grade.level, (events[1],))}),
                NOW,
            )
            for cid, kind, grade in ((owner, "owner", owner_grade), (installer, "installer", installer_grade)):
                rows[m.Customer].append({"id": cid, "name": f"{kind} {i}", "kind": kind, "level": grade.level, "level_since": NOW, "grade": snapshot(grade), "contact": {}, **FRESH})
                if grade.level:
                    rows[m.GradeChange].append(_change("customer", cid, LEVEL, grade.level, snapshot(grade)))
            rows[m.Project].append({"id": project, "name": f"project {i}", "owner_id": owner, "heat": heat.percent, "heat_since": NOW, "stage": heat.stage,
                                    "closed": heat.closed, "grade": snapshot(heat), **FRESH})
            if heat.percent:
                rows[m.GradeChange].append(_change("project", project, HEAT, heat.percent, snapshot(heat)))
            rows[m.Event].extend({"id": e.id, "type": e.type, "customer_id": e.customer_id, "project_id": e.project_id, "occurred_at": e.occurred_at,
                                  "recorded_at": NOW, "attributes": dict(e.attributes), "source": "api", "actor": "bench"} for e in events)
        with db.engine.begin() as conn:
            for model, chunk in rows.items():
                if chunk:
                    conn.execute(insert(model), chunk)
    if db.engine.dialect.name == "postgresql":  # ids were given: move the sequences past them
        with db.engine.begin() as conn:
            for table in ("customers", "projects", "events", "grade_history"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 1) FROM {table}))"))


def _change(subject: str, subject_id: int, metric: str, new: int, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"subject_type": subject, "subject_id": subject_id, "metric": metric, "old": 0, "new": new, "rulebook_version": RULEBOOK.version,
            "evidence": evidence, "trigger": {"kind": "event", "event_type": "bench fill"}, "actor": "bench", "at": NOW}


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


def probe(db: Database, count: int) -> list[tuple[float, float]]:
    """Wall-clock and CPU seconds of each recorded event."""
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "probe owner", "kind": "owner"}, now=NOW).id
        installer = create_customer(s, RULEBOOK, {"name": "probe installer", "kind": "installer"}, now=NOW).id
        project = create_project(s, RULEBOOK, {"name": "probe project", "owner_id": owner}, now=NOW).id
        record_event(s, RULEBOOK, NewEvent(type="bid_joined", customer_id=installer, project_id=project, occurred_at=NOW), actor="bench", now=NOW)
    times = []
    for i in range(count):
        type_, attrs = CYCLE[i % len(CYCLE)]
        new = NewEvent(type=type_, customer_id=installer, attributes=attrs, occurred_at=NOW - timedelta(minutes=count - i))
        start, cpu = time.perf_counter(), time.process_time()
        with db.session(write=True) as s:
            record_event(s, RULEBOOK, new, actor="bench", now=NOW)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def verify(db: Database) -> tuple[float, float]:
    """Wall-clock and CPU seconds of this process that `rapport verify`'s replay of
    everything takes (CPU time is the steadier figure on a shared machine; on PostgreSQL
    it leaves out the server's share). Stops the run if the replay disagrees."""
    start, cpu = time.perf_counter(), time.process_time()
    with db.session(write=False) as session:
        disagreements = replay(session, RULEBOOK, as_of=NOW)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if disagreements:
        raise SystemExit(f"the database disagrees with its replay: {len(disagreements)}, e.g. {disagreements[:3]}")
    return elapsed, cpu


# `rapport verify` for its peak memory runs in a process forked from a small fork server
# started before the fill: a process forked from this one, grown by the fill, would report
# this process's peak (Linux carries the maximum resident size across fork and exec).
FORKSERVER = multiprocessing.get_context("forkserver")


def _verify_as_operator(url: str) -> tuple[int, float]:
    """In the child: `rapport verify` as the command line runs it; its exit status and peak MB."""
    os.environ["RAPPORT_DATABASE_URL"] = url
    from app.cli import main

    try:
        main(["verify", "--as-of", NOW.strftime("%Y-%m-%dT%H:%M:%S%z")])
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    return status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def verify_peak_mb(url: str) -> float:
    """Peak resident memory, in MB, of `rapport verify` in a process of its own. Stops the
    run if it reports a disagreement."""
    with ProcessPoolExecutor(max_workers=1, mp_context=FORKSERVER) as pool:
        status, peak = pool.submit(_verify_as_operator, url).result()
    if status != 0:
        raise SystemExit(f"rapport verify exited with {status}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", help="a PostgreSQL database to throw away (its name must contain 'bench' or 'test'); default: a SQLite file")
    parser.add_argument("--sizes", default="1000,10000,100000", help="events in the database at each probe, ascending")
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (for bench/plot_growth.py)")
    args = parser.parse_args()
    check_name(args.url)
    warm = FORKSERVER.Process(target=int)  # the fork server starts now, while this process is small
    warm.start()
    warm.join()
    with tempfile.TemporaryDirectory() as tmp:
        url, _, drop = databases(args.url, Path(tmp))
        try:
            figures = grow(url, [int(x) for x in args.sizes.split(",")], args.probes)
        finally:
            drop()
    if args.json:
        args.json.write_text(json.dumps({"database": "postgresql" if args.url else "sqlite", "probes": args.probes, "sizes": figures}, indent=1))


def grow(url: str, sizes: list[int], probes: int) -> list[dict[str, float]]:
    upgrade(Settings(database_url=url))
    db = Database(make_engine(url))
    print(f"database: {db.engine.dialect.name}; {probes} events per size; one transaction per event")
    print(f"{'events in db':>12} {'fill s':>7} {'median ms':>10} {'p95 ms':>8} {'median / smallest':>18} {'CPU ms':>7} {'CPU / smallest':>15} {'verify s':>9} {'CPU s':>9} {'CPU µs/event':>16} {'verify MB':>10}")
    figures = []
    triples = 0
    for size in sizes:
        started = time.perf_counter()
        fill(db, triples, size // 4)
        triples = size // 4
        settle(db)
        filled = time.perf_counter() - started
        with db.engine.connect() as conn:
            events = conn.scalar(select(func.count()).select_from(m.Event))
        measured = probe(db, probes)
        times = sorted(wall for wall, _ in measured)
        median, p95 = statistics.median(times) * 1000, times[int(len(times) * 0.95)] * 1000
        cpu_median = statistics.median(cpu for _, cpu in measured) * 1000
        replayed, cpu = verify(db)
        peak = verify_peak_mb(url)
        figures.append({"events": events, "fill_s": filled, "median_ms": median, "p95_ms": p95, "cpu_median_ms": cpu_median, "verify_s": replayed, "verify_cpu_s": cpu,
                        "verify_peak_mb": peak})
        print(f"{events:>12} {filled:>7.0f} {median:>10.2f} {p95:>8.2f} {median / figures[0]['median_ms']:>18.2f} {cpu_median:>7.2f} "
              f"{cpu_median / figures[0]['cpu_median_ms']:>15.2f} {replayed:>9.2f} {cpu:>9.2f} {cpu / events * 1e6:>16.1f} {peak:>10.0f}")
        sys.stdout.flush()
    db.engine.dispose()
    return figures


if __name__ == "__main__":
    main()
