"""What a webhook claim costs beside a paused subscription's backlog (a script that prints
figures, not a test).

    python bench/outbox_claim.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/bench] [--backlog 150000] [--claims 1000] [--idle 0]

A subscription whose receiver stays down ends paused, and keeps being queued for: its
deliveries are pending and due. The worker claims deliveries of active subscriptions only
(app/services/delivery.py `_claim`), in turn. The script times `--claims` claims of a
healthy subscription's deliveries, as a worker takes them (`Failing.claim`), twice: with
no backlog, then with `--backlog` deliveries queued an hour earlier for a paused
subscription. Only the claim is timed, not the sending; each delivery claimed is then
marked sent, as the worker records it. It prints the two claims' p50 and
p99 and their ratio: the claim's cost should not grow with the backlog (1.0 is flat).
`--idle N` adds N active subscriptions with nothing due, which each claim passes over, and
`--finished N` one more, with N deliveries that succeeded (what 30 days of a busy receiver's
log hold).

Default: a SQLite file in a scratch folder; with `--url`, the PostgreSQL database
`<name>_api` is created and dropped (the name must contain "bench" or "test").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from batch_import import databases
from single_post import check_name
from sqlalchemy import insert, select, text, update

from app.db import models as m
from app.db.engine import Database
from app.services import outbox
from app.services.delivery import Failing
from app.settings import Settings
from app.startup import prepare

LEASE = timedelta(minutes=5)
CHUNK = 5_000


def queue_healthy(db: Database, sid: int, n: int, at: datetime) -> None:
    with db.session(write=True) as s:
        for i in range(n):
            outbox.enqueue(s, "webhook.healthy", {"type": "webhook.healthy", "data": {"n": i}}, at, wanted=[sid])


def queue_backlog(db: Database, sid: int, n: int, at: datetime, *, status: str = "pending") -> None:
    """`n` deliveries of `status` for subscription `sid`, written in chunks with Core inserts."""
    for start in range(0, n, CHUNK):
        with db.session(write=True) as s:
            names = [f"msg_{sid}_{i}" for i in range(start, min(n, start + CHUNK))]
            s.execute(insert(m.OutboxMessage), [{"msg_id": name, "type": "webhook.backlog", "payload": {}, "created_at": at} for name in names])
            ids = s.scalars(select(m.OutboxMessage.id).where(m.OutboxMessage.msg_id.in_(names))).all()
            finished = at if status != "pending" else None
            s.execute(insert(m.Delivery), [{"subscription_id": sid, "message_id": mid, "status": status, "attempts": 0, "next_attempt_at": at, "created_at": at, "finished_at": finished} for mid in ids])


def claims_ms(db: Database, n: int, now: datetime) -> list[float]:
    times = []
    turns = Failing()
    for _ in range(n):
        started = time.perf_counter()
        claim = turns.claim(db, now, LEASE)
        times.append((time.perf_counter() - started) * 1000)
        if claim is None:
            raise SystemExit("ran out of deliveries to claim")
        with db.session(write=True) as s:  # sent: as the worker records it, untimed
            s.execute(update(m.Delivery).where(m.Delivery.id == claim.delivery_id).values(status="succeeded", attempts=1, locked_until=None, finished_at=now))
    return times


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--url", help="a PostgreSQL URL whose database name prefixes the scratch database; default: a SQLite file")
    parser.add_argument("--backlog", type=int, default=150_000)
    parser.add_argument("--claims", type=int, default=1_000)
    parser.add_argument("--idle", type=int, default=0, help="active subscriptions with nothing due")
    parser.add_argument("--finished", type=int, default=0, help="succeeded deliveries of one more active subscription, with nothing due")
    args = parser.parse_args()
    check_name(args.url)
    with tempfile.TemporaryDirectory() as tmp:
        api_url, _, drop = databases(args.url, Path(tmp))
        try:
            settings = Settings(database_url=api_url)
            prepare(settings)
            db = Database.from_settings(settings)
            now = datetime.now(timezone.utc)
            with db.session(write=True) as s:
                healthy = outbox.create_subscription(s, {"url": "http://127.0.0.1:9/healthy", "event_types": ["webhook.healthy"]}, now=now).id
                paused = outbox.create_subscription(s, {"url": "http://127.0.0.1:9/paused", "event_types": ["webhook.paused"]}, now=now).id
                outbox.update_subscription(s, paused, {"status": "paused"}, actor="bench", now=now)
                for i in range(args.idle):
                    outbox.create_subscription(s, {"url": f"http://127.0.0.1:9/idle/{i}", "event_types": ["webhook.idle"]}, now=now)
            if args.finished:
                with db.session(write=True) as s:
                    busy = outbox.create_subscription(s, {"url": "http://127.0.0.1:9/busy", "event_types": ["webhook.busy"]}, now=now).id
                queue_backlog(db, busy, args.finished, now - timedelta(days=1), status="succeeded")
            queue_healthy(db, healthy, args.claims, now)
            alone = claims_ms(db, args.claims, now)
            queue_backlog(db, paused, args.backlog, now - timedelta(hours=1))
            queue_healthy(db, healthy, args.claims, now + timedelta(seconds=1))
            with db.engine.connect() as conn:
                conn.execute(text("ANALYZE"))  # as autovacuum (PostgreSQL) would after so many rows
                conn.commit()
            behind = claims_ms(db, args.claims, now + timedelta(seconds=1))
            db.dispose()
        finally:
            drop()
    (a50, a99), (b50, b99) = summary(alone), summary(behind)
    print(f"{db.engine.dialect.name}: {args.claims} claims of a healthy subscription's deliveries beside {args.idle} idle active subscriptions and one with {args.finished:,} succeeded deliveries, ms")
    print(f"  no backlog:                        p50 {a50:.3f}  p99 {a99:.3f}")
    print(f"  beside {args.backlog:,} paused deliveries: p50 {b50:.3f}  p99 {b99:.3f}")
    print(f"  ratio (backlog / none):            p50 {b50 / a50:.2f}  p99 {b99 / a99:.2f}")


if __name__ == "__main__":
    main()
