"""Read sessions (app/db/engine.py): `Database.snapshot()` sees one snapshot from its first
statement to its end on both engines (`rapport verify` replays the log in one); a plain read
session on PostgreSQL runs each statement on its own, with no transaction held open between
them (no BEGIN and ROLLBACK round trips around a GET)."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import func, select

from app.db import models as m
from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


def _customers(session) -> int:  # noqa: ANN001
    return session.scalar(select(func.count()).select_from(m.Customer))


def _add_customer(db: Database) -> None:
    """A customer created and committed by another write, as a concurrent request would."""
    db.transaction(lambda s: create_customer(s, load_rulebook(), {"name": f"concurrent {uuid4()}", "kind": "owner"}, now=NOW))


def test_a_snapshot_does_not_see_what_commits_after_its_first_read(db: Database) -> None:
    with db.snapshot() as session:
        before = _customers(session)
        _add_customer(db)
        assert _customers(session) == before  # still the snapshot of the first read
    with db.session(write=False) as session:
        assert _customers(session) == before + 1


def test_a_read_session_on_postgresql_holds_no_transaction_between_statements(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite's read session is one deferred transaction, with no round trips to save")
    with db.session(write=False) as session:
        before = _customers(session)
        status = session.connection().connection.dbapi_connection.info.transaction_status
        assert status == TransactionStatus.IDLE  # no BEGIN was sent, so no ROLLBACK will be
        _add_customer(db)
        assert _customers(session) == before + 1  # as under READ COMMITTED in a transaction
