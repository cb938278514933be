"""The statements an event's write sends, on each engine.

Every statement it runs of its own goes to the DBAPI cursor (`run`, app/db/engine.py):
SQLAlchemy's execution path cost about 40 µs of CPU per statement on PostgreSQL
(docs/performance.md, "The cursor round"), and a statement leaves the cursor without a
sign: a list it carries, or a column SQLAlchemy converts by the server's type
(`_CursorStatement.of`). Only the ORM's unit of work, which writes a grade's history row
and the webhooks' messages, runs through SQLAlchemy.

And it sends no statement it can do without, each a round trip on PostgreSQL: an owner's
projects come back with the INSERT, and a project with its owner's lock
(docs/performance.md, "The round-trip round")."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from app.db import engine
from app.db.engine import Database
from app.db.facts import _OWNED_BY, INSERT_OWNERS, customer_facts_many, lock_customers, lock_with_project
from app.db.logs import WriteLogs
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, Subjects, check_new_event, event_values, record_event, store_event
from app.services.projects import create_project

RULEBOOK = load_rulebook()
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)
# The ORM's unit of work: history rows and outbox messages, added to the session.
UNIT_OF_WORK = ("INSERT INTO grade_history", "INSERT INTO outbox_messages")

EVENTS = {
    "a visit to an owner": ("owner", None, "visit", {"reception": "welcoming"}),
    "materials to an installer": ("installer", None, "materials_sent", {"items": ["samples"]}),
    "an order": ("owner", None, "order_placed", {"amount": 120000}),
    "a project's stage": (None, "project", "stage_changed", {"stage": "bidding"}),
    # The project has a bidder already: its heat reads that bidder's level and own events.
    "a second installer's bid": ("rival", "project", "bid_joined", {"with_our_product": True}),
    "a win": ("installer", "project", "bid_won", {}),
}


@pytest.fixture
def through_sqlalchemy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement that goes through SQLAlchemy's execution, as it runs."""
    seen: list[str] = []
    original = Connection._execute_context

    def counted(self: Connection, dialect: Any, constructor: Any, statement: Any, *args: Any, **kw: Any) -> Any:
        seen.append(" ".join(str(statement).split()))
        return original(self, dialect, constructor, statement, *args, **kw)

    monkeypatch.setattr(Connection, "_execute_context", counted)
    return seen


def _subjects(db: Database) -> dict[str | None, int | None]:
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "业主", "kind": "owner"}, now=NOW)
        installer = create_customer(s, RULEBOOK, {"name": "安装公司", "kind": "installer"}, now=NOW)
        rival = create_customer(s, RULEBOOK, {"name": "另一家安装公司", "kind": "installer"}, now=NOW)
        project = create_project(s, RULEBOOK, {"name": "医院", "owner_id": owner.id}, now=NOW)
        record_event(s, RULEBOOK, NewEvent(type="bid_joined", customer_id=installer.id, project_id=project.id, attributes={"with_our_product": False}, occurred_at=NOW), actor="t", now=NOW)
    return {"owner": owner.id, "installer": installer.id, "rival": rival.id, "project": project.id, None: None}


def _own(seen: list[str]) -> list[str]:
    return [sql for sql in seen if not sql.startswith(UNIT_OF_WORK)]


@pytest.mark.parametrize("case", EVENTS)
def test_an_event_write_runs_its_own_statements_on_the_cursor(db: Database, through_sqlalchemy: list[str], on_cursor: list[str], case: str) -> None:
    ids = _subjects(db)
    customer, project, type_, attributes = EVENTS[case]
    new = NewEvent(type=type_, customer_id=ids[customer], project_id=ids[project], attributes=attributes, occurred_at=NOW)
    through_sqlalchemy.clear()
    on_cursor.clear()
    with db.session(write=True) as s:
        assert record_event(s, RULEBOOK, new, actor="t", now=NOW).created
    assert _own(through_sqlalchemy) == []
    # Stored and graded: its row and the grades' UPDATEs went by the cursor.
    assert [sql.split()[:3] for sql in on_cursor if not sql.startswith("SELECT")][0] == ["INSERT", "INTO", "events"]
    assert any(sql.startswith(("UPDATE customers", "UPDATE projects")) for sql in on_cursor)


def test_a_statement_off_the_cursor_is_seen(db: Database, through_sqlalchemy: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: with the cursor path closed, the same write's statements
    all show."""
    monkeypatch.setattr(engine, "_cursor_statement", lambda statement, dialect: None)
    ids = _subjects(db)
    through_sqlalchemy.clear()
    with db.session(write=True) as s:
        record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=ids["owner"], attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW)
    own = _own(through_sqlalchemy)
    assert any(sql.startswith("INSERT INTO events") for sql in own) and any(sql.startswith("UPDATE customers") for sql in own)


def test_the_insert_returns_the_owners_projects_as_grading_would_read_them(db: Database) -> None:
    """An event's INSERT returns the projects of the owners it re-grades (`owned_projects`):
    the same projects and log stamps that grading's own read (`_OWNED_BY`) gives, for an
    owner with projects whose logs have changed, and for one with none."""
    with db.session(write=True) as s:
        busy = create_customer(s, RULEBOOK, {"name": "业主甲", "kind": "owner"}, now=NOW)
        idle = create_customer(s, RULEBOOK, {"name": "业主乙", "kind": "owner"}, now=NOW)
        projects = [create_project(s, RULEBOOK, {"name": f"项目{i}", "owner_id": busy.id}, now=NOW) for i in range(3)]
        for project in projects[:2]:
            record_event(s, RULEBOOK, NewEvent(type="stage_changed", project_id=project.id, attributes={"stage": "bidding"}, occurred_at=NOW), actor="t", now=NOW)
    owners = [busy.id, idle.id]
    with db.session(write=True) as s:
        lock_customers(s, owners)
        new = NewEvent(type="visit", customer_id=busy.id, attributes={"reception": "welcoming"}, occurred_at=NOW)
        checked = check_new_event(RULEBOOK, new, now=NOW, subjects=Subjects(s))
        _, live, owned = store_event(s, new, event_values(checked, actor="t", now=NOW), owners=owners)
        read = [tuple(row) for row in _OWNED_BY.rows(s, owners)]
    assert live is not None
    assert owned == {busy.id: [(pid, stamp) for _, pid, stamp in read], idle.id: []}
    assert [pid for pid, _ in owned[busy.id]] == sorted(p.id for p in projects)
    assert len({stamp for _, stamp in owned[busy.id]}) > 1  # two logs changed, one did not


def test_owners_beyond_what_the_insert_takes_are_read_by_grading(db: Database) -> None:
    """The INSERT reads the projects of at most `INSERT_OWNERS` owners (one parameter each);
    grading reads those of any others itself, and gets the same as for all of them."""
    with db.session(write=True) as s:
        owners = [create_customer(s, RULEBOOK, {"name": f"业主{i}", "kind": "owner"}, now=NOW) for i in range(INSERT_OWNERS + 1)]
        for owner in owners:
            create_project(s, RULEBOOK, {"name": f"项目{owner.id}", "owner_id": owner.id}, now=NOW)
    ids = [o.id for o in owners]
    with db.session(write=True) as s:
        locked = lock_customers(s, ids)
        new = NewEvent(type="visit", customer_id=ids[0], attributes={"reception": "welcoming"}, occurred_at=NOW)
        checked = check_new_event(RULEBOOK, new, now=NOW, subjects=Subjects(s))
        _, _, owned = store_event(s, new, event_values(checked, actor="t", now=NOW), owners=ids)
        assert sorted(owned) == ids[:INSERT_OWNERS]
        types = RULEBOOK.owned_project_event_types
        given = customer_facts_many(s, locked.values(), types, WriteLogs(s, keep=False), owned)
        read = customer_facts_many(s, locked.values(), types, WriteLogs(s, keep=False))
    assert given == read
    assert all(len(given[cid].owned_projects) == 1 for cid in ids)


def test_an_owners_event_reads_no_projects_of_its_own(db: Database, on_cursor: list[str]) -> None:
    """An owner's event re-grades the owner, whose criteria read its projects' events: their
    ids and stamps come back with the INSERT, so the write runs no read of them (a round
    trip on PostgreSQL)."""
    ids = _subjects(db)
    on_cursor.clear()
    with db.session(write=True) as s:
        record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=ids["owner"], attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW)
    reads = [sql for sql in on_cursor if sql.startswith("SELECT")]
    assert reads and not [sql for sql in reads if "FROM projects" in sql]  # its lock, and maybe its log: no projects
    assert len([sql for sql in on_cursor if sql.startswith("INSERT INTO events") and "FROM projects" in sql]) == 1


def test_an_event_on_a_project_locks_its_owner_and_reads_the_project_in_one_statement(db: Database, on_cursor: list[str]) -> None:
    """The project an event names is read in the statement that locks its owner (and the
    customer the event names): an event on a project sent two statements before its
    INSERT, a round trip each on PostgreSQL."""
    ids = _subjects(db)
    on_cursor.clear()
    bid = NewEvent(type="bid_joined", customer_id=ids["rival"], project_id=ids["project"], attributes={"with_our_product": True}, occurred_at=NOW)
    with db.session(write=True) as s:
        assert record_event(s, RULEBOOK, bid, actor="t", now=NOW).created
    before_insert = on_cursor[: next(i for i, sql in enumerate(on_cursor) if sql.startswith("INSERT INTO events"))]
    assert len(before_insert) == 1 and "JOIN projects" in before_insert[0]


@pytest.mark.parametrize(
    "customer, project, locked, found",
    [
        ("rival", "project", ["owner", "rival"], True),  # an installer's event on another's project
        ("owner", "project", ["owner"], True),  # the owner's own
        (None, "project", ["owner"], True),  # a project event
        ("rival", None, ["rival"], False),  # a project that does not exist
        (None, None, [], False),
    ],
)
def test_lock_with_project_locks_the_customer_and_the_owner_and_reads_the_project(db: Database, customer: str | None, project: str | None, locked: list[str], found: bool) -> None:
    ids = _subjects(db)
    project_id = ids[project] if project else 10**9
    with db.session(write=True) as s:
        states, state = lock_with_project(s, ids[customer], project_id)
    assert list(states) == sorted(ids[name] for name in locked)
    assert all(c.id == ids[name] and c.kind == ("owner" if name == "owner" else "installer") for c, name in zip(states.values(), sorted(locked, key=lambda n: ids[n])))
    assert (state is not None) == found
    if state is not None:
        assert (state.id, state.owner_id) == (ids["project"], ids["owner"])


def test_the_event_insert_is_planned_once_on_postgresql(db: Database) -> None:
    """PostgreSQL keeps one (generic) plan for a prepared statement when it costs no more than
    the plans it makes for each run's values; otherwise it plans the statement anew on every
    run. With the owners as one array (`= ANY`) the INSERT's generic plan was costed for ten
    owners and never chosen: every event's INSERT was planned again, about 100 µs of the
    server's CPU (docs/performance.md, "The plan-cache round")."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL's plan cache")
    with db.session(write=True) as s:
        owners = [create_customer(s, RULEBOOK, {"name": f"业主{i}", "kind": "owner"}, now=NOW) for i in range(40)]
        for i in range(200):
            create_project(s, RULEBOOK, {"name": f"项目{i}", "owner_id": owners[i % 40].id}, now=NOW)
    owner = owners[0]
    with db.session(write=True) as s:  # statistics, as autovacuum keeps them: the plans' costs come from them
        s.connection().exec_driver_sql("ANALYZE projects")
    # One session, so one connection: psycopg prepares a statement on its 5th run there, and
    # PostgreSQL weighs a generic plan after 5 custom ones.
    with db.session(write=True) as s:
        lock_customers(s, [owner.id])
        for i in range(16):
            new = NewEvent(type="visit", customer_id=owner.id, attributes={"reception": "welcoming"}, occurred_at=NOW, source="t", external_id=f"plan-{i}")
            checked = check_new_event(RULEBOOK, new, now=NOW, subjects=Subjects(s))
            _, _, owned = store_event(s, new, event_values(checked, actor="t", now=NOW), owners=[owner.id])
            assert list(owned) == [owner.id]
        plans = s.connection().exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO events%%' AND statement LIKE '%%FROM projects%%'"
        ).all()
    assert len(plans) == 1
    generic, custom = plans[0]
    assert generic > 0 and custom <= 5, plans
