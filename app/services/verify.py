"""Replaying the whole event log and comparing it with what is stored.

Deliberately a second code path: it reads every row once and builds the facts in memory,
without the per-subject loaders that grading uses, so a bug in those loaders shows up as
a disagreement here."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.facts import to_fact
from app.domain import facts as f
from app.domain.evaluation import evaluate_heat, evaluate_level
from app.domain.rulebook import Rulebook
from app.grading import HEAT, LEVEL, snapshot


@dataclass(frozen=True)
class Disagreement:
    subject: str  # "customer" | "project"
    id: int
    what: str  # "grade", "evidence", "history"
    detail: str


def replay(session: Session, rulebook: Rulebook, *, as_of: datetime) -> list[Disagreement]:
    """Every subject whose stored grade, evidence or history disagrees with a fresh
    evaluation of the whole log under `rulebook` as of `as_of`."""
    retracted = set(session.scalars(select(m.Retraction.event_id)))
    events = [to_fact(e, retracted=e.id in retracted) for e in session.scalars(select(m.Event).order_by(m.Event.id))]
    by_customer: dict[int, list[f.Event]] = defaultdict(list)
    by_project: dict[int, list[f.Event]] = defaultdict(list)
    for e in events:
        if e.customer_id is not None:
            by_customer[e.customer_id].append(e)
        if e.project_id is not None:
            by_project[e.project_id].append(e)
    customers = session.scalars(select(m.Customer).order_by(m.Customer.id)).all()
    projects = session.scalars(select(m.Project).order_by(m.Project.id)).all()
    owned: dict[int, list[int]] = defaultdict(list)
    for p in projects:
        owned[p.owner_id].append(p.id)

    out: list[Disagreement] = []
    levels: dict[int, int] = {}
    for c in customers:
        facts = f.CustomerFacts(
            c.id,
            c.kind,
            tuple(by_customer[c.id]),
            tuple(f.OwnedProject(pid, tuple(by_project[pid])) for pid in owned[c.id]) if c.kind == "owner" else (),
        )
        grade = evaluate_level(rulebook, facts, as_of)
        levels[c.id] = grade.level
        if grade.level != c.level:
            out.append(Disagreement("customer", c.id, "grade", f"stored level {c.level}, replay gives {grade.level}"))
        elif snapshot(grade) != c.grade:
            out.append(Disagreement("customer", c.id, "evidence", "stored evidence differs from the replay's"))

    def linked(cid: int) -> f.LinkedCustomer:
        return f.LinkedCustomer(cid, levels.get(cid, 0), tuple(e for e in by_customer[cid] if e.project_id is None))

    for p in projects:
        pe = tuple(by_project[p.id])
        facts_p = f.ProjectFacts(p.id, linked(p.owner_id), pe, {cid: linked(cid) for cid in f.bidder_ids(pe)})
        grade_p = evaluate_heat(rulebook, facts_p, as_of)
        if grade_p.percent != p.heat:
            out.append(Disagreement("project", p.id, "grade", f"stored heat {p.heat} %, replay gives {grade_p.percent} %"))
        elif snapshot(grade_p) != p.grade or grade_p.stage != p.stage:
            out.append(Disagreement("project", p.id, "evidence", "stored evidence or stage differs from the replay's"))

    out.extend(_history(session, "customer", LEVEL, {c.id: c.level for c in customers}))
    out.extend(_history(session, "project", HEAT, {p.id: p.heat for p in projects}))
    return out


def _history(session: Session, subject: str, metric: str, current: dict[int, int]) -> list[Disagreement]:
    """Each subject's history is a chain from 0 that ends at the stored value."""
    last: dict[int, int] = {}
    out: list[Disagreement] = []
    rows = session.execute(
        select(m.GradeChange.subject_id, m.GradeChange.old, m.GradeChange.new, m.GradeChange.id)
        .where(m.GradeChange.subject_type == subject, m.GradeChange.metric == metric)
        .order_by(m.GradeChange.subject_id, m.GradeChange.id)
    ).all()
    for sid, old, new, hid in rows:
        expected = last.get(sid, 0)
        if old != expected:
            out.append(Disagreement(subject, sid, "history", f"row {hid} starts at {old}, the previous value was {expected}"))
        if old == new:
            out.append(Disagreement(subject, sid, "history", f"row {hid} records no change ({old} → {new})"))
        last[sid] = new
    for sid, value in current.items():
        if last.get(sid, 0) != value:
            out.append(Disagreement(subject, sid, "history", f"history ends at {last.get(sid, 0)}, the stored value is {value}"))
    return out
