"""`GRADING` (app/grading.py) must change whenever what a log grades to changes: the first
start-up of a release with a new `GRADING` re-grades every stored subject, and one
without it leaves grades made by the old code in place, so `rapport verify` fails after
the upgrade and processes of the two releases write different grades side by side.

This test keeps that promise from resting on memory. It logs fixed, seeded sequences of
events of every type of the default rulebook, with retractions, whole levels' worth of
events, and days on which an ERP logs two stage changes at one instant, and takes a
fingerprint of everything grading stored: each subject's level, heat, stage, grade
(criteria, evidence, gaps) and the moment its grade last moved, and every history row.
Tried against the tree it came with: changing the tie-break between events at one instant,
or leaving stage changes out of it, changes the fingerprint. The fingerprint is recorded here beside the
`GRADING` and the rulebook digest it was taken with:

- same `GRADING`, same rulebook, another fingerprint: grading changed without a new
  `GRADING`. Set `GRADING` to today's date, say why in its comment, and record the new
  fingerprint here;
- another `GRADING` or another default rulebook: record the new fingerprint here.

Both engines must give the one fingerprint (grades do not depend on the database)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from app.db import models as m
from app.db.engine import Database
from app.db.types import encode_grade
from app.domain.conditions import AllOf, AnyOf, HasEvent, Latest, LinkedCustomer, OwnedProject, StageReached
from app.domain.rulebook import AttributeSpec
from app.grading import GRADING
from app.services.events import NewEvent, record_event, retract_event
from tests.conftest import empty_tables
from tests.log_strategies import INSTALLERS, OWNERS, PROJECTS, RULEBOOK, make_world, satisfying

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
WORLDS, STEPS = 10, 100  # each world starts with no events, so levels climb and fall many times

RECORDED_WITH = ("2026-12-08", "7128392afbcafa6643561af2289bf4701c7255fb982716f76d736e01c4c5d506")
RECORDED = "0f113aa6cecffd20422dbb5811b309d30766d35e56308376fc1fecef9138ee82"


class _Draws(random.Random):
    """Every draw made from `random()`, the one sequence Python promises to keep from one
    version to the next (its `choice`, `randrange` and `sample` may change)."""

    def randrange(self, start: int, stop: int) -> int:  # type: ignore[override]
        return start + int(self.random() * (stop - start))

    def randint(self, a: int, b: int) -> int:
        return self.randrange(a, b + 1)

    def choice(self, seq: Any) -> Any:
        return seq[self.randrange(0, len(seq))]

    def sample(self, population: Any, k: int) -> list[Any]:  # type: ignore[override]
        pool = list(population)
        return [pool.pop(self.randrange(0, len(pool))) for _ in range(k)]


def _looked_for(condition: Any, out: dict[tuple[str, str], list[Any]]) -> None:
    """The attribute values the rulebook's conditions look for, by (event type, attribute); not
    those a condition must not see, which would hold every level down."""
    if isinstance(condition, HasEvent):
        for name, value in condition.where:
            out.setdefault((condition.event_type, name), []).append(value)
    elif isinstance(condition, Latest) and not condition.negate:
        out.setdefault((condition.event_type, condition.attribute), []).extend(sorted(condition.values, key=repr))
    elif isinstance(condition, StageReached):
        out.setdefault(("stage_changed", "stage"), []).append(condition.stage)
    elif isinstance(condition, (AllOf, AnyOf)):
        for part in condition.parts:
            _looked_for(part, out)
    elif isinstance(condition, OwnedProject):
        _looked_for(condition.condition, out)
    elif isinstance(condition, LinkedCustomer) and condition.has is not None:
        _looked_for(condition.has, out)


LOOKED_FOR: dict[tuple[str, str], list[Any]] = {}
for _step in (*RULEBOOK.tiers, *(s for steps in RULEBOOK.levels.values() for s in steps)):
    for _criterion in _step.criteria:
        _looked_for(_criterion.when, LOOKED_FOR)


ON_PROJECTS = sorted(name for name, et in RULEBOOK.event_types.items() if et.project != "forbidden")


def _value(rnd: random.Random, event_type: str, spec: AttributeSpec) -> Any:
    # Mostly what some criterion looks for, so that levels and heats really move.
    wanted = LOOKED_FOR.get((event_type, spec.name))
    if wanted and rnd.random() < 0.7:
        value = rnd.choice(wanted)
        return [value] if spec.type == "enum_list" and not isinstance(value, list) else value
    if spec.type == "enum":
        return rnd.choice(spec.values)
    if spec.type == "enum_list":
        return rnd.sample(spec.values, rnd.randint(1, len(spec.values)))
    if spec.type == "bool":
        return rnd.random() < 0.5
    if spec.type == "number":
        return rnd.choice((0, 1, 250_000, 1_000_000.5))
    return rnd.choice(("", "招标", "note"))


def _at(rnd: random.Random) -> datetime:
    # A fifth fall on midnight and the days are few, so equal instants are common.
    at = NOW - timedelta(days=rnd.randrange(0, 12))
    return at.replace(hour=0) if rnd.random() < 0.3 else at - timedelta(minutes=rnd.randrange(0, 600))


def _new(rnd: random.Random, name: str, customer: int | None, project: int | None, given: dict[str, Any]) -> NewEvent:
    et = RULEBOOK.event_types[name]
    if project is None and et.project == "required":
        project = rnd.choice(sorted(PROJECTS))
    attributes = {n: _value(rnd, name, s) for n, s in sorted(et.attributes.items()) if s.required or rnd.random() < 0.5}
    return NewEvent(type=name, customer_id=customer, project_id=project, attributes={**attributes, **given}, occurred_at=_at(rnd))


def _events(rnd: random.Random, kits: dict[int, int]) -> list[NewEvent]:
    """One event of any type; or, one time in six, everything the next level of one
    customer needs (`satisfying`; `kits` counts each customer's), so levels climb and heats
    follow."""
    if rnd.random() < 1 / 6:
        customer = rnd.choice(OWNERS + INSTALLERS)
        steps = RULEBOOK.levels["owner" if customer in OWNERS else "installer"]
        step = steps[kits.get(customer, 0) % len(steps)]
        kits[customer] = kits.get(customer, 0) + 1
        return [_new(rnd, name, customer, None, dict(where)) for c in step.criteria for name, where in satisfying(c.when)]
    if rnd.random() < 0.1:
        # An ERP's day: stage changes of one project, all dated that day's midnight.
        project, day = rnd.choice(sorted(PROJECTS)), (NOW - timedelta(days=rnd.randrange(0, 12))).replace(hour=0)
        stages = RULEBOOK.event_types["stage_changed"].attributes["stage"].values
        return [replace(_new(rnd, "stage_changed", None, project, {"stage": stage}), occurred_at=day) for stage in rnd.sample(stages, 2)]
    # Half of them about a project, where heats are made.
    on_project = rnd.random() < 0.5
    name = rnd.choice(ON_PROJECTS if on_project else sorted(RULEBOOK.event_types))
    et = RULEBOOK.event_types[name]
    customer = project = None
    if et.customer == "required" or (et.customer == "optional" and rnd.random() < 0.5):
        customer = rnd.choice(INSTALLERS if et.customer_kind == "installer" else OWNERS + INSTALLERS)
    if et.project == "optional" and (on_project or rnd.random() < 0.5):
        project = rnd.choice(sorted(PROJECTS))
    return [_new(rnd, name, customer, project, {})]


def _log(db: Database, rnd: random.Random) -> None:
    """A fresh world, then `STEPS` writes, each a minute after the one before (so that
    what a grade records of its moment, such as a heat's `since`, counts too)."""
    empty_tables(db.engine)
    with db.session(write=True) as session:
        make_world(session, NOW)
    recorded: list[int] = []
    kits: dict[int, int] = {}
    for step in range(STEPS):
        now = NOW + timedelta(minutes=step)
        with db.session(write=True) as session:
            if recorded and rnd.random() < 0.2:
                retract_event(session, RULEBOOK, rnd.choice(recorded), "test", actor="t", now=now)
            else:
                recorded.extend(record_event(session, RULEBOOK, new, actor="t", now=now).event.id for new in _events(rnd, kits))


def _fingerprint(db: Database, digest: Any) -> None:
    with db.session(write=False) as session:
        for c in session.scalars(select(m.Customer).order_by(m.Customer.id)):
            digest.update(repr(("customer", c.id, c.level, c.level_since.isoformat())).encode() + encode_grade(c.grade))
        for p in session.scalars(select(m.Project).order_by(m.Project.id)):
            digest.update(repr(("project", p.id, p.heat, p.heat_since.isoformat(), p.stage, p.closed)).encode() + encode_grade(p.grade))
        for h in session.scalars(select(m.GradeChange).order_by(m.GradeChange.id)):
            head = (h.subject_type, h.subject_id, h.metric, h.old, h.new, h.at.isoformat())
            digest.update(repr(head).encode() + encode_grade(h.evidence) + encode_grade(h.trigger))


def test_grades_change_only_with_a_new_grading_release(db: Database) -> None:
    rnd = _Draws(20261207)
    digest = hashlib.sha256()
    for _ in range(WORLDS):
        _log(db, rnd)
        _fingerprint(db, digest)
    fingerprint = digest.hexdigest()
    taken_with = (GRADING, RULEBOOK.digest)
    assert taken_with == RECORDED_WITH or fingerprint == RECORDED, (
        f"GRADING or the default rulebook changed: record RECORDED_WITH = {taken_with!r} and RECORDED = {fingerprint!r}"
    )
    assert fingerprint == RECORDED, (
        f"what this log grades to changed, and GRADING ({GRADING!r}) did not: set GRADING in app/grading.py to today's date "
        f"(say why in its comment), then record RECORDED_WITH and RECORDED = {fingerprint!r} here"
    )
