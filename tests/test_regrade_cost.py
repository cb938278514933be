"""Re-grading an event touches only the subjects it can change: its cost must not grow with
the size of the database. Checked without timings (the machines are shared and noisy): the
same event issues the same SQL statements whether the database holds 10 or 200 unrelated
subjects, and on SQLite every statement reaches its rows through an index, never a scan."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event

from app import grading
from app.db.engine import Database
from app.domain.evaluation import evaluate_heat, evaluate_level
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event, retract_event
from app.services.projects import create_project
from tests.conftest import empty_tables

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def _add_unrelated(db: Database, count: int) -> None:
    """Owners with a project each and installers bidding on them, each with a few events."""
    with db.session(write=True) as s:
        for i in range(count):
            owner = create_customer(s, RULEBOOK, {"name": f"owner {i}", "kind": "owner"}, now=NOW)
            installer = create_customer(s, RULEBOOK, {"name": f"installer {i}", "kind": "installer"}, now=NOW)
            project = create_project(s, RULEBOOK, {"name": f"project {i}", "owner_id": owner.id}, now=NOW)
            for type_, c, p, attrs in [
                ("visit", owner.id, None, {"reception": "welcoming"}),
                ("materials_sent", installer.id, None, {"items": ["samples"]}),
                ("bid_joined", installer.id, project.id, {"with_our_product": True}),
                ("stage_changed", None, project.id, {"stage": "bidding"}),
            ]:
                record_event(s, RULEBOOK, NewEvent(type=type_, customer_id=c, project_id=p, attributes=attrs, occurred_at=NOW - timedelta(days=i % 30)), actor="t", now=NOW)


def _probe(db: Database) -> list[tuple[str, object]]:
    """A customer that reaches level I (so its projects' heat is re-computed), then a retraction."""
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):  # noqa: ANN001
        statements.append((statement, parameters))

    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "probe owner", "kind": "owner"}, now=NOW)
        installer = create_customer(s, RULEBOOK, {"name": "probe installer", "kind": "installer"}, now=NOW)
        project = create_project(s, RULEBOOK, {"name": "probe project", "owner_id": owner.id}, now=NOW)
        record_event(s, RULEBOOK, NewEvent(type="bid_joined", customer_id=installer.id, project_id=project.id, occurred_at=NOW), actor="t", now=NOW)
        for type_, attrs in [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}), ("impression_confirmed", {}),
                             ("visit", {"reception": "neutral"}), ("visit", {"reception": "neutral"})]:
            record_event(s, RULEBOOK, NewEvent(type=type_, customer_id=installer.id, attributes=attrs, occurred_at=NOW), actor="t", now=NOW)
    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.session(write=True) as s:
            third = record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=installer.id, attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW)
            assert [e.metric for e in third.effects] == ["relationship_level"]
        with db.session(write=True) as s:
            retract_event(s, RULEBOOK, third.event.id, "probe", actor="t", now=NOW)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    return statements


def _shapes(statements: list[tuple[str, object]]) -> list[str]:
    """The statements' SQL, savepoints unnamed: a savepoint's name counts the savepoints of
    its connection, which the writes of a SQLite process share (`_writing_connection`)."""
    return [re.sub(r"sa_savepoint_\d+", "sa_savepoint", sql) for sql, _ in statements]


def test_one_event_costs_the_same_in_a_small_and_a_large_database(db: Database) -> None:
    empty_tables(db.engine)
    _add_unrelated(db, 10)
    small = _probe(db)
    empty_tables(db.engine)
    _add_unrelated(db, 200)
    large = _probe(db)
    assert _shapes(small) == _shapes(large)
    assert len(small) < 60, f"{len(small)} statements for one event and one retraction"


def test_every_statement_of_an_event_uses_an_index(db: Database) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("query plans are read on SQLite; PostgreSQL's planner may rightly scan tiny tables")
    empty_tables(db.engine)
    _add_unrelated(db, 50)
    scans = []
    statements = _probe(db)
    with db.engine.connect() as conn:
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
            scans += [(sql.split("FROM")[1][:60], row[-1]) for row in plan if row[-1].startswith("SCAN") and "CONSTANT ROW" not in row[-1]]
    assert scans == []


def test_writing_an_event_never_reads_a_stored_grade(db: Database) -> None:
    """Grading tells from the stored grade's digest whether a new grade differs; the old
    grade is never fetched and decoded (it was 15 % of a batch import)."""
    empty_tables(db.engine)
    _add_unrelated(db, 3)
    statements = _probe(db)  # a level change, the heat it moves, then a retraction
    reads = [sql for sql, _ in statements if sql.lstrip().upper().startswith("SELECT") and re.search(r"\b(customers|projects)\.grade\b", sql)]
    assert reads == []
    assert any(sql.lstrip().upper().startswith("UPDATE CUSTOMERS") for sql, _ in statements)


def test_an_event_reads_its_customer_row_once(db: Database) -> None:
    """The customer an event names is found, row-locked and graded from one read (on
    PostgreSQL it used to be read to validate the event, then again to lock it)."""
    empty_tables(db.engine)
    with db.session(write=True) as s:
        customer_id = create_customer(s, RULEBOOK, {"name": "one read", "kind": "installer"}, now=NOW).id
    statements: list[str] = []

    def capture(_conn, _cursor, statement, _parameters, _context, _many):  # noqa: ANN001
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.session(write=True) as s:
            record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=customer_id, attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and re.search(r"\bFROM customers\b", sql)]
    assert len(reads) == 1, reads
    # The webhook subscriptions come back with the INSERT, not from a read of their own.
    assert not [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and "webhook_subscriptions" in sql]


def test_a_bid_re_grades_the_bidder_and_the_project_not_the_owner(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner's level reads only its projects' events of some types (stage_changed,
    tender_brand): a bid on its project leaves it alone, a stage change does not."""
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "owner", "kind": "owner"}, now=NOW).id
        installer = create_customer(s, RULEBOOK, {"name": "installer", "kind": "installer"}, now=NOW).id
        project = create_project(s, RULEBOOK, {"name": "project", "owner_id": owner}, now=NOW).id
    graded: list[tuple[str, int]] = []
    monkeypatch.setattr(grading, "evaluate_level", lambda rulebook, facts, now: graded.append(("customer", facts.customer_id)) or evaluate_level(rulebook, facts, now))
    monkeypatch.setattr(grading, "evaluate_heat", lambda rulebook, facts, now: graded.append(("project", facts.project_id)) or evaluate_heat(rulebook, facts, now))
    for type_, customer, attrs in [("bid_joined", installer, {"with_our_product": True}), ("stage_changed", None, {"stage": "bidding"})]:
        graded.clear()
        with db.session(write=True) as s:
            record_event(s, RULEBOOK, NewEvent(type=type_, customer_id=customer, project_id=project, attributes=attrs, occurred_at=NOW), actor="t", now=NOW)
        expected = [("customer", installer), ("project", project)] if type_ == "bid_joined" else [("customer", owner), ("project", project)]
        assert graded == expected, type_
