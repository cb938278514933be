"""Replaying the whole event log and comparing it with what is stored.

Deliberately a second code path: it reads the log with its own queries and builds the facts
itself, without the loaders grading uses, so a bug in those loaders shows up as a
disagreement here.

It walks the subjects in rounds of `chunk` by id (customers first: heat reads levels), and
each round reads only its subjects' logs and histories. Memory holds one round and the
replayed level of every customer (an integer each), not the log: a database of any size
can be verified on the machine that serves it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator

from sqlalchemy import Row, Table, case, exists, null, select
from sqlalchemy.orm import Session

from app.chunks import IN_LIST, chunked
from app.db import models as m
from app.db.facts import to_fact
from app.domain import facts as f
from app.domain.evaluation import evaluate_heat, evaluate_level
from app.domain.rulebook import Rulebook
from app.grading import HEAT, LEVEL, gap_closed, snapshot

CHUNK = IN_LIST  # subjects per round

_E, _R, _H = m.Event.__table__, m.Retraction.__table__, m.GradeChange.__table__
_C, _P = m.Customer.__table__, m.Project.__table__


@dataclass(frozen=True)
class Disagreement:
    subject: str  # "customer" | "project"
    id: int
    what: str  # "grade", "evidence", "history"
    detail: str


def replay(session: Session, rulebook: Rulebook, *, as_of: datetime, chunk: int = CHUNK) -> list[Disagreement]:
    """Every subject whose stored grade, evidence or history disagrees with a fresh
    evaluation of the whole log under `rulebook` as of `as_of`."""
    return list(disagreements(session, rulebook, as_of=as_of, chunk=chunk))


def disagreements(session: Session, rulebook: Rulebook, *, as_of: datetime, chunk: int = CHUNK) -> Iterator[Disagreement]:
    """`replay`'s findings, as each round of `chunk` subjects finds them. Run it in one
    transaction (a snapshot), or rounds may see different states of the log."""
    levels: dict[int, int] = {}  # every customer's replayed level, for the heat of projects
    for customers in _rounds(session, _C, chunk):
        yield from _customers(session, rulebook, customers, as_of, levels)
    for projects in _rounds(session, _P, chunk):
        yield from _projects(session, rulebook, projects, as_of, levels)
    yield from _orphans(session)


def _rounds(session: Session, table: Table, chunk: int) -> Iterator[list[Row[Any]]]:
    """The table's rows in rounds of `chunk`, by id (keyset, so each round is an index range)."""
    last = 0
    while rows := session.execute(select(table).where(table.c.id > last).order_by(table.c.id).limit(chunk)).all():
        yield rows
        last = rows[-1].id


def _log(session: Session, by: str, ids: Iterable[int]) -> dict[int, list[f.Event]]:
    """The events whose `by` (customer_id or project_id) is one of `ids`, grouped by it."""
    out: dict[int, list[f.Event]] = {}
    column = _E.c[by]
    for part in chunked(sorted(set(ids))):
        rows = session.execute(
            select(_E.c.id, _E.c.type, _E.c.occurred_at, _E.c.customer_id, _E.c.project_id, _E.c.attributes, _R.c.id.is_not(None).label("retracted"))
            .outerjoin(_R, _R.c.event_id == _E.c.id)
            .where(column.in_(part))
            .order_by(_E.c.id)
        )
        for row in rows:
            event = to_fact(row, retracted=bool(row.retracted))
            out.setdefault(getattr(event, by), []).append(event)
    return out


def _customers(session: Session, rulebook: Rulebook, customers: list[Row[Any]], as_of: datetime, levels: dict[int, int]) -> Iterator[Disagreement]:
    events = _log(session, "customer_id", (c.id for c in customers))
    owners = [c.id for c in customers if c.kind == "owner"]
    owned: dict[int, list[int]] = {}
    for part in chunked(owners):
        for pid, owner_id in session.execute(select(_P.c.id, _P.c.owner_id).where(_P.c.owner_id.in_(part)).order_by(_P.c.id)):
            owned.setdefault(owner_id, []).append(pid)
    project_events = _log(session, "project_id", (pid for pids in owned.values() for pid in pids))
    for c in customers:
        projects = tuple(f.OwnedProject(pid, tuple(project_events.get(pid, ()))) for pid in owned.get(c.id, ())) if c.kind == "owner" else ()
        grade = evaluate_level(rulebook, f.CustomerFacts(c.id, c.kind, tuple(events.get(c.id, ())), projects), as_of)
        levels[c.id] = grade.level
        if grade.level != c.level:
            yield Disagreement("customer", c.id, "grade", f"stored level {c.level}, replay gives {grade.level}")
        elif snapshot(grade) != c.grade:
            yield Disagreement("customer", c.id, "evidence", "stored evidence differs from the replay's")
    yield from _history(session, "customer", LEVEL, {c.id: c.level for c in customers})


def _projects(session: Session, rulebook: Rulebook, projects: list[Row[Any]], as_of: datetime, levels: dict[int, int]) -> Iterator[Disagreement]:
    by_project = {pid: tuple(es) for pid, es in _log(session, "project_id", (p.id for p in projects)).items()}
    bidders = {p.id: f.bidder_set(by_project.get(p.id, ())) for p in projects}
    linked_ids = {p.owner_id for p in projects} | {cid for ids in bidders.values() for cid in ids}
    # Filtered here, not by `project_id IS NULL` in the query: SQLite then picked the
    # project_id index and read half the log each round (quadratic: 331 µs per event at a
    # million events against 156 at 100,000).
    own = _log(session, "customer_id", linked_ids)

    def linked(cid: int) -> f.LinkedCustomer:
        return f.LinkedCustomer(cid, levels.get(cid, 0), tuple(e for e in own.get(cid, ()) if e.project_id is None))

    for p in projects:
        facts = f.ProjectFacts(p.id, linked(p.owner_id), by_project.get(p.id, ()), {cid: linked(cid) for cid in sorted(bidders[p.id])})
        grade = evaluate_heat(rulebook, facts, as_of)
        if grade.percent != p.heat:
            yield Disagreement("project", p.id, "grade", f"stored heat {p.heat} %, replay gives {grade.percent} %")
        elif snapshot(grade) != p.grade or grade.stage != p.stage or grade.closed != p.closed:
            yield Disagreement("project", p.id, "evidence", "stored evidence, stage or closed differs from the replay's")
    yield from _history(session, "project", HEAT, {p.id: p.heat for p in projects})


def _history(session: Session, subject: str, metric: str, current: dict[int, int]) -> Iterator[Disagreement]:
    """Each of these subjects' history is a chain from 0 that ends at the stored value, and
    each row is a change. A project's row from 0 to 0 is one when it closes a cold project
    as lost or reopens it (app/grading.py): it is taken as one when its evidence says the
    project is closed (no `next`) and the previous state was open, or the other way round."""
    last: dict[int, int] = {}
    closed: dict[int, bool] = {}  # a project's at its last row to 0 (from its evidence): whether it was closed
    at_zero = case((_H.c.new == 0, _H.c.evidence), else_=null()) if subject == "project" else null()
    for part in chunked(sorted(current)):
        rows = session.execute(
            select(_H.c.subject_id, _H.c.old, _H.c.new, _H.c.id, at_zero)
            .where(_H.c.subject_type == subject, _H.c.metric == metric, _H.c.subject_id.in_(part))
            .order_by(_H.c.subject_id, _H.c.id)
        )
        for sid, old, new, hid, evidence in rows:
            expected = last.get(sid, 0)
            if old != expected:
                yield Disagreement(subject, sid, "history", f"row {hid} starts at {old}, the previous value was {expected}")
            now_closed = gap_closed(evidence)
            if old == new and not (new == 0 and evidence is not None and now_closed != closed.get(sid, False)):
                yield Disagreement(subject, sid, "history", f"row {hid} records no change ({old} → {new})")
            last[sid] = new
            if new == 0:
                closed[sid] = now_closed
    for sid, value in current.items():
        if last.get(sid, 0) != value:
            yield Disagreement(subject, sid, "history", f"history ends at {last.get(sid, 0)}, the stored value is {value}")


def _orphans(session: Session) -> Iterator[Disagreement]:
    """History rows of a customer or project that does not exist, and rows of a metric the
    subject does not have (the rounds above only read each subject's own metric; the
    history endpoint serves every row of the subject: a hunt's inserted `deal_heat` row on a
    customer went unreported)."""
    for subject, table, metric in (("customer", _C, LEVEL), ("project", _P, HEAT)):
        rows = session.execute(
            select(_H.c.subject_id, _H.c.id)
            .where(_H.c.subject_type == subject, ~exists().where(table.c.id == _H.c.subject_id))
            .order_by(_H.c.subject_id, _H.c.id)
        )
        for sid, hid in rows:
            yield Disagreement(subject, sid, "history", f"row {hid} is the history of a {subject} that does not exist")
        rows = session.execute(
            select(_H.c.subject_id, _H.c.id, _H.c.metric).where(_H.c.subject_type == subject, _H.c.metric != metric).order_by(_H.c.subject_id, _H.c.id)
        )
        for sid, hid, other in rows:
            yield Disagreement(subject, sid, "history", f"row {hid} records {other!r}, which a {subject} does not have ({metric} is its grade)")
