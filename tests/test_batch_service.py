"""The batch path under a concurrent writer: when another request stores one of the
batch's events between the batch's duplicate check and its multi-row INSERT, the batch
stores the others and reports that item as the duplicate it now is."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from app.db import models as m
from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services import batch
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from tests.conftest import empty_tables

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def test_a_twin_stored_after_the_check_is_answered_as_a_duplicate(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner"}, now=NOW).id
    items = [
        NewEvent(type="visit", customer_id=owner, occurred_at=NOW, attributes={"reception": "neutral"}, source="erp", external_id=f"V{i}")
        for i in range(5)
    ]
    with db.session(write=True) as s:
        twin = record_event(s, RULEBOOK, items[2], actor="mobile", now=NOW).event.id
    # The check runs before the twin is seen (as if the twin committed just after it).
    monkeypatch.setattr(batch, "_already_stored", lambda session, items: {})

    with db.session(write=True) as s:
        outcome = batch.record_batch(s, RULEBOOK, items, atomic=False, actor="erp", now=NOW)

    assert [r.status for r in outcome.results] == ["created", "created", "duplicate", "created", "created"]
    assert outcome.results[2].event_id == twin
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(m.Event)) == 5
        assert s.scalar(select(m.Customer.level).where(m.Customer.id == owner)) == 0


def test_a_resent_batch_finds_each_item_under_its_own_source(db: Database) -> None:
    """The same external_id from two sources names two events: a re-sent batch answers each
    item with the event stored under its own source, however many ids a source sends."""
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner"}, now=NOW).id
    items = [
        NewEvent(type="visit", customer_id=owner, occurred_at=NOW, attributes={"reception": "neutral"}, source=source, external_id=f"V{i}")
        for i in range(600)  # more ids than one look-up takes
        for source in ("erp", "crm")
    ]
    with db.session(write=True) as s:
        first = batch.record_batch(s, RULEBOOK, items, atomic=False, actor="erp", now=NOW)
    assert {r.status for r in first.results} == {"created"}

    with db.session(write=True) as s:
        again = batch.record_batch(s, RULEBOOK, items, atomic=False, actor="erp", now=NOW)
    assert [(r.status, r.event_id) for r in again.results] == [("duplicate", r.event_id) for r in first.results]
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(m.Event)) == 1200
