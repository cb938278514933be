"""The batch path under a concurrent writer: when another request stores one of the
batch's events between the batch's duplicate check and its multi-row INSERT, the batch
stores the others and reports that item as the duplicate it now is; and writes that share
one transaction (SQLite's groups) name records by the codes the writes before them gave."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from app.db import models as m
from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services import batch
from app.services.customers import create_customer, update_customer
from app.services.events import NewEvent, record_event
from app.services.projects import create_project, update_project
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


@pytest.mark.parametrize("kind", ["customer", "project"])
def test_writes_in_one_transaction_find_a_record_by_the_code_a_patch_before_them_gave_it(db: Database, kind: str) -> None:
    """On SQLite writes that wait together run as one transaction, which keeps each record's
    state as first read. A PATCH of its code there left the state's code as it was: a later
    event naming the new code was refused, and a batch item naming the old code was
    recorded against it (a hunt's find). One session stands for such a group here."""
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner", "external_ref": "C-A"}, now=NOW)
        record = owner if kind == "customer" else create_project(s, RULEBOOK, {"name": "仁济医院新院区", "owner_id": owner.id, "external_ref": "P-A"}, now=NOW)
        rid, old = record.id, record.external_ref
    new = old.replace("-A", "-B")
    by_id, by_ref = f"{kind}_id", f"{kind}_ref"
    fact = {"type": "visit", "attributes": {"reception": "neutral"}} if kind == "customer" else {"type": "stage_changed", "attributes": {"stage": "bidding"}}

    with db.session(write=True) as s:
        record_event(s, RULEBOOK, NewEvent(**fact, occurred_at=NOW, **{by_id: rid}), actor="mobile", now=NOW)  # its state is read
        (update_customer if kind == "customer" else update_project)(s, rid, {"external_ref": new}, if_match=None, now=NOW)
        named = record_event(s, RULEBOOK, NewEvent(**fact, occurred_at=NOW, external_id="by-new", source="erp", **{by_ref: new}), actor="erp", now=NOW)
        assert getattr(named.event, by_id) == rid
        outcome = batch.record_batch(
            s,
            RULEBOOK,
            [NewEvent(**fact, occurred_at=NOW, source="erp", external_id="b1", **{by_id: rid}), NewEvent(**fact, occurred_at=NOW, source="erp", external_id="b2", **{by_ref: old})],
            atomic=False,
            actor="erp",
            now=NOW,
        )
    assert [r.status for r in outcome.results] == ["created", "rejected"]
    assert [e.reason for e in outcome.results[1].errors] == [f"no {kind} with external_ref {old!r}"]
