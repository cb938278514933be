"""A grade changed behind Rapport's back (SQL on the customers or projects table, which
are not append-only) is put back by the next re-grade: `rapport regrade` whatever was
changed, and any re-grade of the subject for a changed level or heat. `rapport regrade`
also puts the change by hand on record: a history row (trigger `outside`) from what the
history last said to what it found, then its own row back, once, not once per run; so
`verify` then finds nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from app.db import models as m
from app.db.engine import Database
from app.db.facts import CustomerState
from app.db.logs import WriteLogs
from app.db.types import encode_grade, grade_digest
from app.domain.rulebook import Rulebook, load_rulebook, parse_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.projects import create_project
from app.grading import Writes
from app.services.state import expect_rulebook, regrade_for_time
from app.services.verify import replay
from tests.conftest import empty_tables

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def _owner_at_level_one(db: Database) -> tuple[int, int]:
    """An owner at level I (the rulebook's worked example 1) and a project it owns."""
    empty_tables(db.engine)
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner"}, now=NOW).id
        project = create_project(s, RULEBOOK, {"name": "门诊楼空调", "owner_id": owner}, now=NOW).id
    level_one = [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("contact_obtained", {}), ("impression_confirmed", {})]
    level_one += [("visit", {"reception": "neutral"})] * 3
    with db.session(write=True) as s:
        for i, (type_, attributes) in enumerate(level_one):
            record_event(s, RULEBOOK, NewEvent(type=type_, customer_id=owner, occurred_at=NOW - timedelta(days=10 - i), attributes=attributes), actor="rep", now=NOW)
        new = NewEvent(type="stage_changed", project_id=project, occurred_at=NOW - timedelta(days=2), attributes={"stage": "tender_drafting"})
        record_event(s, RULEBOOK, new, actor="rep", now=NOW)
    with db.session(write=False) as s:
        assert s.scalar(select(m.Customer.level).where(m.Customer.id == owner)) == 1
    return owner, project


def _stored(db: Database, owner: int) -> tuple[int, int, dict, int]:
    with db.session(write=False) as s:
        row = s.execute(select(m.Customer.level, m.Customer.version, m.Customer.grade).where(m.Customer.id == owner)).one()
        history = s.scalars(select(m.GradeChange.id).where(m.GradeChange.subject_type == "customer", m.GradeChange.subject_id == owner)).all()
    return row.level, row.version, row.grade, len(history)


def _regrade(db: Database) -> None:
    with db.session(write=True) as s:
        regrade_for_time(s, RULEBOOK, now=NOW)


def test_a_level_changed_by_sql_is_put_back_by_one_regrade_with_one_history_row(db: Database) -> None:
    owner, _ = _owner_at_level_one(db)
    level, _, grade, rows = _stored(db, owner)
    with db.session(write=True) as s:
        s.execute(update(m.Customer).where(m.Customer.id == owner).values(level=4))

    _regrade(db)
    _regrade(db)  # a second run finds nothing more to do

    repaired, _, repaired_grade, repaired_rows = _stored(db, owner)
    assert (repaired, repaired_grade) == (level, grade)
    assert repaired_rows == rows + 2  # the change by hand, then 4 → the true level; once
    with db.session(write=False) as s:
        found_row, back = s.scalars(select(m.GradeChange).where(m.GradeChange.subject_type == "customer", m.GradeChange.subject_id == owner).order_by(m.GradeChange.id.desc()).limit(2)).all()[::-1]
        assert (found_row.old, found_row.new, found_row.trigger, found_row.actor) == (level, 4, {"kind": "outside"}, "system")
        assert found_row.evidence == grade  # the grade as found: only the level was changed
        assert (back.old, back.new, back.trigger["kind"]) == (4, level, "time")
        assert replay(s, RULEBOOK, as_of=NOW) == []  # one chain again, ending at the stored level


def test_a_heat_changed_by_sql_is_put_on_record_and_back_by_regrade(db: Database) -> None:
    _, project = _owner_at_level_one(db)
    with db.session(write=False) as s:
        heat = s.scalar(select(m.Project.heat).where(m.Project.id == project))
    assert heat != 90
    with db.session(write=True) as s:
        s.execute(update(m.Project).where(m.Project.id == project).values(heat=90))

    _regrade(db)
    _regrade(db)  # a second run finds nothing more to do

    with db.session(write=False) as s:
        rows = s.execute(
            select(m.GradeChange.old, m.GradeChange.new, m.GradeChange.trigger)
            .where(m.GradeChange.subject_type == "project", m.GradeChange.subject_id == project)
            .order_by(m.GradeChange.id)
        ).all()
        assert s.scalar(select(m.Project.heat).where(m.Project.id == project)) == heat
        assert replay(s, RULEBOOK, as_of=NOW) == []
    assert [(r.old, r.new, r.trigger["kind"]) for r in rows if r.trigger["kind"] in ("outside", "time")] == [(heat, 90, "outside"), (90, heat, "time")]


def test_a_heat_changed_by_sql_is_put_back_with_its_messages_where_a_receiver_wants_heat_changes(db: Database) -> None:
    # A hunt found `rapport regrade` (and a rulebook switch at start-up) ending in an
    # AssertionError here: the `outside` row's message had no grade to name the tier by.
    _, project = _owner_at_level_one(db)
    with db.session(write=True) as s:
        heat = s.scalar(select(m.Project.heat).where(m.Project.id == project))
        s.add(m.Subscription(url="https://erp.example.com/hook", event_types=["project.heat_changed"], secret="whsec_" + "A" * 32, created_at=NOW, updated_at=NOW))
        s.execute(update(m.Project).where(m.Project.id == project).values(heat=90))

    _regrade(db)

    with db.session(write=False) as s:
        sent = s.scalars(select(m.OutboxMessage.payload).where(m.OutboxMessage.type == "project.heat_changed").order_by(m.OutboxMessage.id)).all()
        assert replay(s, RULEBOOK, as_of=NOW) == []
    assert [(p["data"]["old"], p["data"]["new"], p["data"]["tier"], p["data"]["trigger"]["kind"]) for p in sent] == [(heat, 90, "90", "outside"), (90, heat, str(heat) if heat else "cold", "time")]


def test_a_grade_changed_by_sql_is_put_back_by_regrade_without_a_history_row(db: Database) -> None:
    owner, project = _owner_at_level_one(db)
    level, version, grade, rows = _stored(db, owner)
    with db.session(write=True) as s:
        s.execute(update(m.Customer).where(m.Customer.id == owner).values(grade={"criteria": [], "next": None}))
        s.execute(update(m.Project).where(m.Project.id == project).values(grade={"criteria": [], "next": None}))
    with db.session(write=False) as s:
        assert {d.id for d in replay(s, RULEBOOK, as_of=NOW)} == {owner, project}

    _regrade(db)

    assert _stored(db, owner) == (level, version + 1, grade, rows)  # a new version: its representation changed back
    with db.session(write=False) as s:
        assert replay(s, RULEBOOK, as_of=NOW) == []


@pytest.mark.parametrize("stage", ["won", "lost"])
def test_a_projects_closed_flag_changed_by_sql_is_found_by_verify_and_put_back_with_no_history_row(db: Database, stage: str) -> None:
    """Found by a hunt: verify did not compare `closed`, and regrade put the flag back with a
    row from 100 % to 100 % (or 0 to 0 where the history already said closed), a change on
    record of nothing, which verify then reported for ever (history is append-only)."""
    _, project = _owner_at_level_one(db)
    with db.session(write=True) as s:
        new = NewEvent(type="stage_changed", project_id=project, occurred_at=NOW - timedelta(days=1), attributes={"stage": stage})
        record_event(s, RULEBOOK, new, actor="rep", now=NOW)
    rows_before = _project_rows(db, project)
    with db.session(write=True) as s:
        s.execute(update(m.Project).where(m.Project.id == project).values(closed=False))
        found = replay(s, RULEBOOK, as_of=NOW)
    assert [(d.subject, d.id, d.what) for d in found] == [("project", project, "evidence")]

    _regrade(db)

    with db.session(write=False) as s:
        assert s.scalar(select(m.Project.closed).where(m.Project.id == project)) is True
        assert replay(s, RULEBOOK, as_of=NOW) == []
    assert _project_rows(db, project) == rows_before


@pytest.mark.parametrize(
    ("subject", "metric", "whose", "reason"),
    [
        ("customer", "deal_heat", "owner", "records 'deal_heat', which a customer does not have"),  # a hunt's forged row
        ("project", "relationship_level", "project", "records 'relationship_level', which a project does not have"),
        ("customer", "relationship_level", None, "is the history of a customer that does not exist"),
    ],
)
def test_verify_reports_a_history_row_that_belongs_to_no_grade(db: Database, subject: str, metric: str, whose: str | None, reason: str) -> None:
    owner, project = _owner_at_level_one(db)
    sid = {"owner": owner, "project": project, None: 999_999}[whose]
    with db.session(write=True) as s:
        s.add(m.GradeChange(subject_type=subject, subject_id=sid, metric=metric, old=2, new=90, rulebook_version="x", evidence={"criteria": [], "next": None},
                            trigger={"kind": "event"}, actor="evil", at=NOW))
    with db.session(write=False) as s:
        found = replay(s, RULEBOOK, as_of=NOW)
    assert [(d.subject, d.id, d.what) for d in found] == [(subject, sid, "history")]
    assert reason in found[0].detail


def _project_rows(db: Database, project: int) -> list[tuple[int, int]]:
    with db.session(write=False) as s:
        return [tuple(r) for r in s.execute(select(m.GradeChange.old, m.GradeChange.new).where(m.GradeChange.subject_type == "project", m.GradeChange.subject_id == project).order_by(m.GradeChange.id))]


@pytest.mark.parametrize("stored_level, written", [(1, False), (4, True)])
def test_a_row_whose_level_differs_from_its_new_grade_is_written_even_with_the_same_digest(stored_level: int, written: bool) -> None:
    # A re-grade that does not change the subject's log (a project re-graded for a linked
    # customer's sake) trusts the stored digest for the grade, but not for the level read
    # with the row: a history row says the level changed, so the row must change too.
    grade = {"criteria": [], "next": None}
    digest = grade_digest((1,), encode_grade(grade))
    state = CustomerState(id=7, kind="owner", external_ref=None, level=stored_level, log_stamp=5, grade_hash=digest)
    writes = Writes(WriteLogs(None, keep=False))  # type: ignore[arg-type]  # no log changed: no session needed

    writes.add(state, grade=grade, since=NOW, level=1)

    queued = writes._rows.get(CustomerState, [])
    assert [(p["row_id"], p["new_level"], p["new_bump"]) for p in queued] == ([(7, 1, 1)] if written else [])


def test_a_project_created_above_cold_starts_its_history_from_0_so_verify_and_regrade_find_nothing(db: Database) -> None:
    # A hunt found such a project with no history row: verify reported it, and regrade
    # recorded a change "outside Rapport" that nobody made. Under a rulebook whose steps need
    # one criterion each, an owner at level II gives a new project 30 % (H30.2) at once.
    book = json.loads(json.dumps(RULEBOOK.source))
    book["version"] = "one-criterion-a-step"
    for step in [*book["levels"]["owner"], *book["levels"]["installer"], *book["heat"]["tiers"]]:
        step["at_least"] = 1
    lenient = parse_rulebook(book)
    empty_tables(db.engine)
    try:
        _created_above_cold(db, lenient)
    finally:
        empty_tables(db.engine)  # the next tests grade under the default rulebook


def _created_above_cold(db: Database, lenient: Rulebook) -> None:
    with db.session(write=True) as s:
        expect_rulebook(s, lenient, record=True)
        owner = create_customer(s, lenient, {"name": "仁济医院基建处", "kind": "owner"}, now=NOW).id
        for type_, attributes in (("materials_sent", {"items": ["samples"]}), ("product_understood", {})):
            record_event(s, lenient, NewEvent(type=type_, customer_id=owner, occurred_at=NOW - timedelta(days=1), attributes=attributes), actor="rep", now=NOW)
    with db.session(write=True) as s:
        assert s.scalar(select(m.Customer.level).where(m.Customer.id == owner)) == 2
        project = create_project(s, lenient, {"name": "门诊楼空调", "owner_id": owner}, now=NOW)
        assert project.heat == 30

    with db.session(write=True) as s:
        regrade_for_time(s, lenient, now=NOW)

    with db.session(write=False) as s:
        rows = s.execute(select(m.GradeChange.old, m.GradeChange.new, m.GradeChange.trigger, m.GradeChange.actor).where(m.GradeChange.subject_type == "project")).all()
        assert replay(s, lenient, as_of=NOW) == []
    assert [tuple(r) for r in rows] == [(0, 30, {"kind": "created"}, "system")]
