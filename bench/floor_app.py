"""The floor the benchmarks measure Rapport against: the least a FastAPI service must do.

    FLOOR_DATABASE_URL=sqlite:///x.db uvicorn floor_app:create_app --factory --app-dir bench

- `POST /events` validates the body with Rapport's own request model (`EventIn`) and
  inserts one row into the `events` table with SQLAlchemy Core, in a sync route (run in the
  thread pool, as Rapport's are), one write transaction per request;
- `GET /customers/{id}` reads one customer row by primary key and returns it as JSON: on
  SQLite on the event loop, as Rapport does; on PostgreSQL on a worker thread with no
  transaction around the read, as a FastAPI service with a synchronous driver does
  (Rapport reads on the loop, on psycopg's asyncio connections: app/db/loop_reads.py);
- `GET /ping` does nothing: what the load generator can drive at most.

The database is one Rapport has migrated (same tables, indexes and engine settings: SQLite
in WAL with synchronous=NORMAL and BEGIN IMMEDIATE writes, or PostgreSQL), so the only
difference from Rapport is what Rapport does on top: auth, idempotency, re-grading,
history and the response it builds. On SQLite the floor's writes take turns on a lock in
the process, as Rapport's do (`Database`): without it, the threads that lose the race for
SQLite's write lock sleep in its busy handler, and the floor's own p99 was 233 ms.
"""

from __future__ import annotations

import gc
import os
import threading
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from anyio import to_thread
from fastapi import FastAPI, HTTPException
from sqlalchemy import insert, select

from app.api.schemas import EventIn, PathId
from app.db import models as m
from app.db.engine import WRITE_BEGIN, for_reads, make_engine, sqlite_begin

EVENTS = m.Event.__table__
CUSTOMERS = m.Customer.__table__


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[None]:
    """Its start-up objects out of the garbage collector's reach, as Rapport's (app/main.py):
    without it the floor paused ~55 ms every ~2 s for a full collection, a handicap Rapport
    does not have. Its sync routes keep anyio's 40 worker threads (FLOOR_THREADS sets
    another number): with 4, Rapport's default, the floor served 6-7 % fewer POSTs (it
    computes less per request than Rapport, so more threads are waiting on the database),
    and the floor should be at its best."""
    gc.collect()
    gc.freeze()
    if "FLOOR_THREADS" in os.environ:
        to_thread.current_default_thread_limiter().total_tokens = int(os.environ["FLOOR_THREADS"])
    yield


def create_app() -> FastAPI:
    engine = make_engine(os.environ["FLOOR_DATABASE_URL"])
    sqlite = engine.dialect.name == "sqlite"
    turns = threading.Lock() if sqlite else nullcontext()
    reader = for_reads(engine)  # on PostgreSQL no transaction around its one read, as Rapport's
    app = FastAPI(lifespan=serving)

    @app.post("/events", status_code=201)
    def record(body: EventIn) -> dict[str, int]:
        with turns, sqlite_begin(WRITE_BEGIN), engine.begin() as conn:
            row = conn.execute(
                insert(EVENTS).returning(EVENTS.c.id),
                {**body.model_dump(exclude={"customer_ref", "project_ref"}), "recorded_at": datetime.now(timezone.utc), "actor": "floor"},
            ).one()
        return {"id": row.id}

    def read_row(customer_id: int) -> dict[str, Any]:
        with reader.connect() as conn:
            row = conn.execute(select(CUSTOMERS).where(CUSTOMERS.c.id == customer_id)).one_or_none()
        if row is None:
            raise HTTPException(404)
        return dict(row._mapping)

    @app.get("/customers/{customer_id}")
    async def read(customer_id: PathId) -> dict[str, Any]:
        # On SQLite on the event loop, as Rapport reads a row by its key; on PostgreSQL on a
        # worker thread, as a synchronous driver must.
        if sqlite:
            return read_row(customer_id)
        return await to_thread.run_sync(read_row, customer_id)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {}

    return app
