"""Relationship level and deal heat: pure functions of the facts, a rulebook and `as_of`.

No clock, no database: the caller passes everything in. Every criterion of the
subject's kind is reported, met or not, with the events (and the linked customers'
levels) that it found, so a grade always explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple
from datetime import datetime, timedelta

from app.domain.conditions import (
    AllOf,
    AnyOf,
    Condition,
    HasEvent,
    Latest,
    LinkedCustomer,
    OwnedProject,
    StageReached,
)
from app.domain.facts import CustomerFacts, Event, ProjectFacts, bidder_ids, latest, winner_id
from app.domain.rulebook import Criterion, Label, Rulebook, Step


@dataclass(frozen=True)
class Related:
    """A linked subject whose state a criterion used (e.g. a bidder and its level)."""

    subject: str  # "customer" | "project"
    id: int
    level: int | None = None


@dataclass(frozen=True)
class CriterionResult:
    id: str
    label: Label
    step: int  # the level, or the tier's percent, the criterion belongs to
    met: bool
    evidence: tuple[int, ...]  # event ids, ascending
    related: tuple[Related, ...] = ()


@dataclass(frozen=True)
class Gap:
    """What stands between the grade and the next one up."""

    target: int  # the next level, or the next tier's percent
    missing: tuple[str, ...]  # ids of its unmet criteria
    need: int  # how many of them must still be met


@dataclass(frozen=True)
class LevelGrade:
    level: int
    label: Label
    criteria: tuple[CriterionResult, ...]
    next: Gap | None


@dataclass(frozen=True)
class HeatGrade:
    percent: int
    label: Label
    closed: bool  # won or lost
    stage: str | None  # the current stage (latest stage change), if any
    criteria: tuple[CriterionResult, ...]
    next: Gap | None


class _Outcome(NamedTuple):
    # A named tuple, not a frozen dataclass: one is made per condition node evaluated, and
    # a frozen dataclass costs several times as much to build.
    met: bool
    evidence: frozenset[int] = frozenset()
    related: tuple[Related, ...] = ()


_NO = _Outcome(False)


@dataclass(slots=True)
class _Scope:
    """The facts a condition is evaluated against. Built once per subject (and per owned
    project or linked customer) and never changed, so not frozen: that is cheaper to build."""

    by_type: dict[str, list[Event]]  # live events only, by type: a condition reads one type
    as_of: datetime
    stages: tuple[str, ...]  # the rulebook's ordered stages
    owned: tuple[tuple[Related, _Scope], ...] = ()  # owner: each owned project and its live events
    won_projects: frozenset[int] = frozenset()  # installer: projects it won
    project: _ProjectScope | None = None


class _Link(NamedTuple):
    """A customer linked to the project, and what a `has` reads of it."""

    related: Related  # its id and level
    scope: _Scope  # its events on this project and its own events on no project


@dataclass(slots=True)
class _ProjectScope:
    owner: _Link
    bidders: tuple[_Link, ...]
    winner: _Link | None


def evaluate_level(rulebook: Rulebook, facts: CustomerFacts, as_of: datetime) -> LevelGrade:
    """The customer's relationship level: cumulative, level N needs N−1 and its own
    requirement; no level held is 0 (ungraded)."""
    stages = rulebook.ordered_stages
    by_type = _live_by_type(facts.events)
    scope = _Scope(
        by_type=by_type,
        as_of=as_of,
        stages=stages,
        owned=tuple((Related("project", p.project_id), _Scope(_live_by_type(p.events), as_of, stages)) for p in facts.owned_projects),
        won_projects=frozenset(e.project_id for e in by_type.get("bid_won", ()) if e.project_id is not None),
    )
    steps = rulebook.levels[facts.kind]
    results = [_criteria(step, scope) for step in steps]
    level = 0
    for step, crit in zip(steps, results):
        if not step.holds(sum(c.met for c in crit)):
            break
        level = step.value
    gap = _gap(steps[level], results[level]) if level < len(steps) else None
    return LevelGrade(
        level=level,
        label=rulebook.level_labels[level],
        criteria=tuple(c for crit in results for c in crit),
        next=gap,
    )


def evaluate_heat(rulebook: Rulebook, facts: ProjectFacts, as_of: datetime) -> HeatGrade:
    """The project's deal heat: the highest tier whose requirement holds (tiers are not
    cumulative); a closed stage (won/lost) decides by itself; none holding is 0 (cold)."""
    by_type = _live_by_type(facts.events)
    bids = [*by_type.get("bid_joined", ()), *by_type.get("bid_won", ())]
    win = winner_id(bids)
    bidders = bidder_ids(bids)
    links = _links(facts, bidders, as_of, rulebook.ordered_stages)
    scope = _Scope(
        by_type=by_type,
        as_of=as_of,
        stages=rulebook.ordered_stages,
        project=_ProjectScope(
            owner=links[facts.owner.customer_id],
            bidders=tuple(links[cid] for cid in bidders),
            winner=links[win] if win is not None else None,
        ),
    )
    stage_event = latest(by_type.get("stage_changed", []))
    stage = stage_event.attributes.get("stage") if stage_event else None
    results = [_criteria(tier, scope) for tier in rulebook.tiers]
    criteria = tuple(c for crit in results for c in crit)

    if stage in rulebook.closed_stages:
        return HeatGrade(
            percent=rulebook.closed_stages[stage],
            label=rulebook.closed_labels.get(stage, rulebook.cold_label),
            closed=True,
            stage=stage,
            criteria=criteria,
            next=None,
        )
    held = next((i for i, (tier, crit) in enumerate(zip(rulebook.tiers, results)) if tier.holds(sum(c.met for c in crit))), None)
    if held is None:
        lowest = len(rulebook.tiers) - 1
        return HeatGrade(0, rulebook.cold_label, False, stage, criteria, _gap(rulebook.tiers[lowest], results[lowest]))
    tier = rulebook.tiers[held]
    gap = _gap(rulebook.tiers[held - 1], results[held - 1]) if held > 0 else None
    return HeatGrade(tier.value, tier.label, False, stage, criteria, gap)


def _live_by_type(events: tuple[Event, ...] | list[Event]) -> dict[str, list[Event]]:
    """The events that count (not retracted), grouped by type."""
    out: dict[str, list[Event]] = {}
    for e in events:
        if not e.retracted:
            if e.type in out:
                out[e.type].append(e)
            else:
                out[e.type] = [e]
    return out


def _links(facts: ProjectFacts, bidders: list[int], as_of: datetime, stages: tuple[str, ...]) -> dict[int, _Link]:
    """The project's bidders and its owner by customer id, each with its level and the events
    a linked customer's `has` reads: its events on this project, and its own events on no
    project (one on another project is about that project, not this one)."""
    owner_id = facts.owner.customer_id
    wanted = {*bidders, owner_id}
    on_project: dict[int, list[Event]] = {cid: [] for cid in wanted}
    for e in facts.events:
        if e.customer_id in wanted:
            on_project[e.customer_id].append(e)
    links = {}
    for cid in wanted:
        linked = facts.owner if cid == owner_id else facts.linked.get(cid)
        own = [e for e in linked.events if e.project_id is None] if linked else []
        level = linked.level if linked else 0
        links[cid] = _Link(Related("customer", cid, level), _Scope(_live_by_type(on_project[cid] + own), as_of, stages))
    return links


def _criteria(step: Step, scope: _Scope) -> list[CriterionResult]:
    out = []
    for c in step.criteria:
        o = _eval(c.when, scope)
        if o == _NO:
            out.append(_unmet(c, step.value))
        else:
            out.append(CriterionResult(c.id, c.label, step.value, o.met, tuple(sorted(o.evidence)), o.related))
    return out


# Most criteria of most subjects are unmet with nothing found, and that result is the same
# value every time: it is built once (a frozen dataclass costs ~0.7 µs to build; sharing
# one is safe). Keyed by value, so a rulebook's edits can never be served a stale result.
_UNMET: dict[tuple[str, str, str, int], CriterionResult] = {}


def _unmet(c: Criterion, step_value: int) -> CriterionResult:
    key = (c.id, c.label.zh, c.label.en, step_value)
    result = _UNMET.get(key)
    if result is None:
        result = _UNMET[key] = CriterionResult(c.id, c.label, step_value, False, ())
    return result


def _gap(step: Step, results: list[CriterionResult]) -> Gap:
    missing = tuple(c.id for c in results if not c.met)
    return Gap(target=step.value, missing=missing, need=max(step.at_least - (len(results) - len(missing)), 0))


def _of_type(scope: _Scope, event_type: str, within_days: int | None) -> list[Event]:
    """The scope's events of one type, within the last `within_days` before `as_of` if given."""
    events = scope.by_type.get(event_type, [])
    if within_days is None:
        return events
    start = scope.as_of - timedelta(days=within_days)
    return [e for e in events if start <= e.occurred_at <= scope.as_of]


def _eval(cond: Condition, scope: _Scope) -> _Outcome:
    if isinstance(cond, HasEvent):
        found = _of_type(scope, cond.event_type, cond.within_days)
        for key, value in cond.where:  # one pass per pair: cheaper than all() over the pairs per event
            found = [e for e in found if e.attributes.get(key) == value]
        if cond.on_won_project:
            found = [e for e in found if e.project_id in scope.won_projects]
        if not found:  # the common case, without building an empty set
            return _NO if cond.min_count > 0 else _Outcome(True)
        return _Outcome(len(found) >= cond.min_count, frozenset([e.id for e in found]))
    if isinstance(cond, Latest):
        newest = latest(_of_type(scope, cond.event_type, cond.within_days))
        if newest is None:
            return _NO
        inside = newest.attributes.get(cond.attribute) in cond.values
        return _Outcome(inside != cond.negate, frozenset({newest.id}))
    if isinstance(cond, StageReached):
        return _stage_reached(cond.stage, scope)
    if isinstance(cond, AllOf):
        parts = [_eval(p, scope) for p in cond.parts]
        return _Outcome(all(p.met for p in parts), _union(parts), _related(parts))
    if isinstance(cond, AnyOf):
        return _any([_eval(p, scope) for p in cond.parts])
    if isinstance(cond, OwnedProject):
        parts = []
        for project, project_scope in scope.owned:
            o = _eval(cond.condition, project_scope)
            if o.evidence or o.met:
                parts.append(_Outcome(o.met, o.evidence, (project,)))
        return _any(parts)
    if isinstance(cond, LinkedCustomer):
        return _linked(cond, scope)
    raise TypeError(f"unknown condition node {cond!r}")


def _stage_reached(stage: str, scope: _Scope) -> _Outcome:
    if stage not in scope.stages:
        return _NO
    at_or_after = scope.stages[scope.stages.index(stage) :]
    found = [e for e in scope.by_type.get("stage_changed", ()) if e.attributes.get("stage") in at_or_after]
    return _Outcome(bool(found), frozenset([e.id for e in found]))


def _linked(cond: LinkedCustomer, scope: _Scope) -> _Outcome:
    ps = scope.project
    if ps is None:
        return _NO
    if cond.role == "owner":
        candidates: tuple[_Link, ...] = (ps.owner,)
    elif cond.role == "winner":
        candidates = (ps.winner,) if ps.winner else ()
    else:
        candidates = ps.bidders
    parts = []
    for related, linked_scope in candidates:
        level_met = related.level >= cond.min_level
        if cond.has is None:
            parts.append(_Outcome(level_met, frozenset(), (related,)))
            continue
        o = _eval(cond.has, linked_scope)
        parts.append(_Outcome(level_met and o.met, o.evidence, (related,)))
    return _any(parts)


def _any(parts: list[_Outcome]) -> _Outcome:
    """Met if one part is; shows the parts that are met, or all of them if none is."""
    met = [p for p in parts if p.met]
    shown = met or parts
    return _Outcome(bool(met), _union(shown), _related(shown))


def _union(parts: list[_Outcome]) -> frozenset[int]:
    return frozenset().union(*(p.evidence for p in parts)) if parts else frozenset()


def _related(parts: list[_Outcome]) -> tuple[Related, ...]:
    seen: dict[Related, None] = {}
    for p in parts:
        for r in p.related:
            seen.setdefault(r, None)
    return tuple(seen)
