"""`run` (app/db/engine.py) gives the rows SQLAlchemy's own execution gives, on each engine:
a prebuilt statement runs on the DBAPI cursor and converts its values itself, so every
kind of column a write reads is compared here (integers, text, JSON, timestamps, a
numeric amount, a retraction's missing id), with parameters from the caller and from the
statement, and an INSERT … RETURNING, and the errors the database raises, are SQLAlchemy's."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, column, insert, select, table, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.db import engine
from app.db import models as m
from app.db.engine import Database, _CursorStatement, _cursor_statement, run, run_many
from app.db.facts import _BID, _PROJECTLESS_LOG, STATES_BY_ID, CustomerState, ProjectState
from app.db.logs import _LOG_OF
from app.domain.rulebook import load_rulebook
from app.grading import _UPDATES
from app.services.customers import create_customer
from app.services.events import INSERT_NEW_EVENT, NewEvent, record_event, retract_event
from app.services.projects import _BIDS, create_project
from app.services.records import _READS

RULEBOOK = load_rulebook()
NOW = datetime(2026, 12, 5, 5, 0, tzinfo=timezone.utc)
C = m.Customer.__table__
E = m.Event.__table__


@pytest.fixture(scope="module")
def subjects(db: Database) -> dict[str, int]:
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "上海建工", "kind": "owner", "external_ref": "CRM-cursor-1"}, now=NOW)
        project = create_project(s, RULEBOOK, {"name": "浦东医院", "owner_id": owner.id, "amount": 1234567.89}, now=NOW)
        visit = record_event(s, RULEBOOK, NewEvent(type="visit", customer_id=owner.id, attributes={"reception": "welcoming"}, occurred_at=NOW), actor="t", now=NOW)
        record_event(s, RULEBOOK, NewEvent(type="stage_changed", project_id=project.id, attributes={"stage": "bidding"}, occurred_at=NOW), actor="t", now=NOW)
        installer = create_customer(s, RULEBOOK, {"name": "中建安装", "kind": "installer"}, now=NOW)
        bid = NewEvent(type="bid_joined", customer_id=installer.id, project_id=project.id, attributes={"with_our_product": True}, occurred_at=NOW)
        record_event(s, RULEBOOK, bid, actor="t", now=NOW)
        s.flush()
        retract_event(s, RULEBOOK, visit.event.id, "logged twice", actor="t", now=NOW)
    return {"owner": owner.id, "project": project.id}


CASES = {
    "a customer's state": (STATES_BY_ID[CustomerState].one, "owner", "ids"),
    "a project's state": (STATES_BY_ID[ProjectState].one, "project", "ids"),
    "a customer's whole row (JSON grade, timestamps)": (_READS[(m.Customer, "id")], "owner", "value"),
    "a project's whole row (a numeric amount)": (_READS[(m.Project, "id")], "project", "value"),
    "a customer's log (a retracted event, JSON attributes)": (_LOG_OF["customer"].one, "owner", "ids"),
    "a project's log": (_LOG_OF["project"].one, "project", "ids"),
    "a project's bids, with their customers' names and levels": (_BIDS.one, "project", "ids"),
}


@pytest.mark.parametrize("case", CASES)
def test_run_gives_what_a_session_gives(db: Database, subjects: dict[str, int], case: str) -> None:
    statement, subject, name = CASES[case]
    with db.session(write=True) as s:
        expected = s.execute(statement, {name: subjects[subject]}).all()
        got = run(s, statement, **{name: subjects[subject]})
    assert got == expected and got
    assert [tuple(r._fields) for r in got] == [tuple(r._fields) for r in expected]  # by name, as callers read them
    assert got.first() == expected[0] and got.scalars() == [r[0] for r in expected]


def test_a_project_read_runs_its_statements_on_the_cursor(db: Database) -> None:
    """Every GET of a project reads its row (with a NUMERIC `amount`) and its bids (a list
    of event types the statement carries): neither leaves the cursor for SQLAlchemy's
    execution, on either engine (a project read cost 1.1 ms of CPU on PostgreSQL, a
    customer read 0.6)."""
    dialect = db.engine.dialect
    by_ids = _BIDS.array if dialect.name == "postgresql" else _BIDS.many
    for statement in (_READS[(m.Project, "id")], _READS[(m.Project, "external_ref")], _BIDS.one, by_ids, _BID):
        assert _cursor_statement(statement, dialect) is not None, statement


def test_a_numeric_expression_is_left_to_sqlalchemy_on_postgresql(db: Database, subjects: dict[str, int]) -> None:
    """What the server sends for a numeric expression (numeric, or double precision) decides
    how SQLAlchemy converts it, and only a result tells: such a select keeps SQLAlchemy's
    path on PostgreSQL, and gives its rows either way."""
    P = m.Project.__table__
    statement = select(P.c.id, (P.c.amount * 2).label("twice")).where(P.c.id == bindparam("value"))
    assert (_cursor_statement(statement, db.engine.dialect) is None) == (db.engine.dialect.name == "postgresql")
    with db.session(write=False) as s:
        expected = s.execute(statement, {"value": subjects["project"]}).all()
        got = run(s, statement, value=subjects["project"])
    assert got == expected and got[0].twice == 2469135.78


def test_rows_by_several_ids_are_those_read_one_by_one(db: Database, subjects: dict[str, int]) -> None:
    by_ids = STATES_BY_ID[CustomerState]
    with db.session(write=True) as s:
        other = create_customer(s, RULEBOOK, {"name": "中建安装", "kind": "installer"}, now=NOW)
    ids = [subjects["owner"], other.id, other.id + 10_000]  # the last one is not there
    with db.session(write=False) as s:
        together = list(by_ids.rows(s, ids))
        alone = [row for id_ in ids for row in by_ids.rows(s, [id_])]
    assert together == sorted(alone) and len(together) == 2
    if db.engine.dialect.name == "postgresql":
        # One array parameter: compiled once, run on the cursor (an expanding IN list is
        # rendered by SQLAlchemy on every run).
        assert _cursor_statement(by_ids.array, db.engine.dialect) is not None
        assert _cursor_statement(by_ids.many, db.engine.dialect) is None


@pytest.mark.parametrize("lengths", [(1, 1), (2, 2), (3, 1), (0, 1), (2, 0)])
def test_a_select_by_lists_gives_what_a_session_gives(db: Database, subjects: dict[str, int], lengths: tuple[int, int], on_cursor: list[str]) -> None:
    """Lists (IN) run on the cursor on SQLite, rendered for their lengths, with the rows
    SQLAlchemy's execution gives; an empty list is SQLAlchemy's to render. `_BID` (a
    customer's bids: its event types are comparisons, not a list) runs on the cursor on
    both engines."""
    by_lists = _PROJECTLESS_LOG["sqlite"].many  # customer ids, and the event types as an IN list
    ids = [subjects["owner"], subjects["owner"] + 10_000, subjects["owner"] + 20_000][: lengths[0]]
    types = ["visit", "order_placed"][: lengths[1]]
    on_cursor.clear()
    with db.session(write=False) as s:
        expected = s.execute(by_lists, {"ids": ids, "types": types}).all()
        got = run(s, by_lists, ids=ids, types=types)
        bid = run(s, _BID, customer_id=subjects["owner"])
    assert got == expected and [tuple(r._fields) for r in got] == [tuple(r._fields) for r in expected]
    assert (len(got) == 1) == (lengths[0] > 0 and lengths[1] > 0)  # the owner's retracted visit
    assert bid == []
    sqlite = db.engine.dialect.name == "sqlite"
    assert len(on_cursor) == 1 + int(sqlite and 0 not in lengths)
    if sqlite and 0 not in lengths:
        assert on_cursor[0].count("?") == sum(lengths)


def test_run_binds_the_values_the_statement_carries(db: Database, subjects: dict[str, int]) -> None:
    statement = select(C.c.id, C.c.kind, C.c.created_at).where(C.c.kind == "owner", C.c.external_ref == "CRM-cursor-1")
    with db.session(write=False) as s:
        rows = run(s, statement)
    assert [(r.id, r.kind) for r in rows] == [(subjects["owner"], "owner")]
    assert rows[0].created_at == NOW  # an aware datetime, not SQLite's text


def test_a_failing_select_raises_sqlalchemys_error(db: Database) -> None:
    with db.session(write=False) as s, pytest.raises(DBAPIError):
        run(s, select(table("no_such_table", column("x"))))


def test_a_returning_insert_and_a_refused_one(db: Database) -> None:
    keys = m.ApiKey.__table__
    values = {"name": "cursor-insert", "secret_hash": "h" * 64, "scopes": ["read"], "created_at": NOW, "revoked_at": None}
    statement = insert(keys).values({name: bindparam(name, type_=keys.c[name].type) for name in values}).returning(keys.c.id, keys.c.scopes, keys.c.created_at)
    with db.session(write=True) as s:
        (row,) = run(s, statement, **values)
        assert row.scopes == ["read"] and row.created_at == NOW
        stored = s.execute(select(keys.c.name, keys.c.scopes, keys.c.created_at).where(keys.c.id == row.id)).one()
        assert tuple(stored) == ("cursor-insert", ["read"], NOW)
        with pytest.raises(IntegrityError):  # the same name and secret again: refused by the database
            run(s, statement, **values)
        s.rollback()


def test_run_many_updates_as_sqlalchemys_executemany_does(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """An UPDATE run for many rows goes to the driver's executemany, with each parameter
    bound as SQLAlchemy binds it (an aware datetime in a UTC column, JSON text cast on
    PostgreSQL): the rows end as SQLAlchemy's own executemany leaves them."""
    sent: list[int] = []
    run_many_on_cursor = _CursorStatement.run_many
    monkeypatch.setattr(_CursorStatement, "run_many", lambda self, pooled, arguments: sent.append(len(arguments)) or run_many_on_cursor(self, pooled, arguments))
    statement = _UPDATES[CustomerState, db.engine.dialect.name]
    later = datetime(2026, 12, 6, 8, 30, tzinfo=timezone(timedelta(hours=8)))
    with db.session(write=True) as s:
        ids = [create_customer(s, RULEBOOK, {"name": f"批量 {i}", "kind": "owner"}, now=NOW).id for i in range(3)]
    params = [
        {"row_id": id_, "new_level": i + 1, "new_since": later, "new_moved": False, "new_grade_hash": 1000 + i, "new_log_stamp": 7 + i, "new_bump": i % 2, "new_grade": f'{{"n": {i}, "名": "批"}}'}
        for i, id_ in enumerate(ids)
    ]
    columns = select(C.c.id, C.c.level, C.c.level_since, C.c.grade, C.c.grade_hash, C.c.log_stamp, C.c.version).where(C.c.id.in_(ids)).order_by(C.c.id)
    with db.session(write=True) as s:
        assert run_many(s, statement, params) is None
        on_cursor = s.execute(columns).all()
        s.rollback()
    assert sent == [3]
    with db.session(write=True) as s:
        s.connection().execute(statement, params)
        by_sqlalchemy = s.execute(columns).all()
    assert on_cursor == by_sqlalchemy
    assert [(r.level, r.level_since, r.grade, r.version) for r in on_cursor] == [(i + 1, later, {"n": i, "名": "批"}, 1 + i % 2) for i in range(3)]


def test_a_refused_executemany_raises_sqlalchemys_error(db: Database) -> None:
    statement = update(C).where(C.c.id == bindparam("row_id")).values(kind=bindparam("new_kind"))
    with db.session(write=True) as s:
        ids = [create_customer(s, RULEBOOK, {"name": f"拒绝 {i}", "kind": "owner"}, now=NOW).id for i in range(2)]
    with db.session(write=True) as s, pytest.raises(IntegrityError):
        run_many(s, statement, [{"row_id": ids[0], "new_kind": "owner"}, {"row_id": ids[1], "new_kind": None}])  # kind is NOT NULL
    with db.session(write=False) as s:
        assert s.execute(select(C.c.kind).where(C.c.id.in_(ids))).scalars().all() == ["owner", "owner"]


def test_run_many_inserts_in_chunks_and_returns_every_inserted_row(db: Database, subjects: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """An INSERT … ON CONFLICT DO NOTHING RETURNING for many rows (a batch's events): every
    row inserted comes back once, with its values as stored, however the rows are cut
    into statements; a row whose key is taken is skipped, not an error."""
    monkeypatch.setattr(engine, "_VALUES_ROWS", 2)  # 5 rows: statements of 2, 2 and 1 row
    statement = INSERT_NEW_EVENT[db.engine.dialect.name].returning(E.c.source, E.c.external_id, E.c.occurred_at, E.c.attributes)
    at = datetime(2026, 12, 5, 16, 30, tzinfo=timezone(timedelta(hours=8)))

    def row(i: int) -> dict[str, object]:
        return {
            "type": "visit", "customer_id": subjects["owner"], "project_id": None, "occurred_at": at + timedelta(minutes=i), "recorded_at": NOW,
            "attributes": {"reception": "welcoming", "备注": f"第{i}次", "big": 2**70}, "source": "erp", "external_id": f"chunk-{i}", "actor": "t", "note": None,
        }

    with db.session(write=True) as s:
        run(s, INSERT_NEW_EVENT[db.engine.dialect.name], **row(3))  # taken before
        returned = run_many(s, statement, [row(i) for i in range(5)])
    assert returned is not None
    got = sorted(returned, key=lambda r: r.external_id)
    assert [r.external_id for r in got] == ["chunk-0", "chunk-1", "chunk-2", "chunk-4"]
    assert all(r.source == "erp" and r.occurred_at == at + timedelta(minutes=int(r.external_id[-1])) for r in got)
    assert got[2].attributes == {"reception": "welcoming", "备注": "第2次", "big": 2**70}
    with db.session(write=False) as s:
        stored = s.execute(select(E.c.id, E.c.external_id).where(E.c.external_id.like("chunk-%")).order_by(E.c.external_id)).all()
    assert [r.external_id for r in stored] == [f"chunk-{i}" for i in range(5)]
    assert {r.id for r in got} == {r.id for r in stored if r.external_id != "chunk-3"}
