"""Concurrent writers on one customer and one project cannot lose an update: afterwards
the stored grades equal a fresh replay and every history is a chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event, retract_event
from app.services.projects import create_project
from app.services.verify import replay
from tests.conftest import empty_tables

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
LEVEL_ONE = [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}), ("impression_confirmed", {}),
             ("visit", {"reception": "neutral"}), ("visit", {"reception": "welcoming"}), ("visit", {"reception": "welcoming"})]


def _in_session(db: Database, work):  # noqa: ANN001, ANN202
    with db.session(write=True) as s:
        return work(s)


# Each write in a session of its own, or through `Database.transaction`, where on SQLite the
# writes that wait for the writer lock together share one transaction.
WAYS = {"session": _in_session, "transaction": lambda db, work: db.transaction(work)}


@pytest.mark.parametrize("way", WAYS)
def test_concurrent_events_and_retractions_on_one_subject_keep_the_invariant(db: Database, way: str) -> None:
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "owner", "kind": "owner"}, now=NOW).id
        installer = create_customer(s, RULEBOOK, {"name": "installer", "kind": "installer"}, now=NOW).id
        project = create_project(s, RULEBOOK, {"name": "project", "owner_id": owner}, now=NOW).id
        record_event(s, RULEBOOK, NewEvent(type="bid_joined", customer_id=installer, project_id=project, occurred_at=NOW), actor="t", now=NOW)
        for type_ in ("stage_changed", "spec_agreed"):
            attrs = {"stage": "tender_drafting"} if type_ == "stage_changed" else {}
            record_event(s, RULEBOOK, NewEvent(type=type_, project_id=project, attributes=attrs, occurred_at=NOW), actor="t", now=NOW)

    def writer(round_: int) -> None:
        # Each writer lifts the installer to level I with its own events, then retracts one
        # of them again, so levels and the project's bidder criterion flip many times.
        write = WAYS[way]
        ids = []
        for i, (type_, attrs) in enumerate(LEVEL_ONE):
            new = NewEvent(type=type_, customer_id=installer, attributes=attrs, occurred_at=NOW - timedelta(hours=round_ * 10 + i))
            ids.append(write(db, lambda s: record_event(s, RULEBOOK, new, actor=f"w{round_}", now=NOW).event.id))
        write(db, lambda s: retract_event(s, RULEBOOK, ids[round_ % len(ids)], "concurrency test", actor=f"w{round_}", now=NOW))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, range(16)))

    with db.session(write=False) as s:
        assert replay(s, RULEBOOK, as_of=NOW) == []
