"""Relationship level and deal heat: pure functions of the facts, a rulebook and `as_of`.

No clock, no database: the caller passes everything in. Every criterion of the
subject's kind is reported, met or not, with the events (and the linked customers'
levels) that it found, so a grade always explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple
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
    stage_ranks: Mapping[str, int]  # `Rulebook.stage_ranks`: which of stage changes at one instant is the latest
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
    stages, ranks = rulebook.ordered_stages, rulebook.stage_ranks
    by_type = _live_by_type(facts.events)
    scope = _Scope(
        by_type=by_type,
        as_of=as_of,
        stages=stages,
        stage_ranks=ranks,
        owned=tuple((Related("project", p.project_id), _Scope(_live_by_type(p.events), as_of, stages, ranks)) for p in facts.owned_projects),
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
    links = _links(facts, bidders, as_of, rulebook.ordered_stages, rulebook.stage_ranks)
    scope = _Scope(
        by_type=by_type,
        as_of=as_of,
        stages=rulebook.ordered_stages,
        stage_ranks=rulebook.stage_ranks,
        project=_ProjectScope(
            owner=links[facts.owner.customer_id],
            bidders=tuple(links[cid] for cid in bidders),
            winner=links[win] if win is not None else None,
        ),
    )
    stage_event = latest(by_type.get("stage_changed", []), rulebook.stage_ranks)
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


def _links(facts: ProjectFacts, bidders: list[int], as_of: datetime, stages: tuple[str, ...], ranks: Mapping[str, int]) -> dict[int, _Link]:
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
        links[cid] = _Link(Related("customer", cid, level), _Scope(_live_by_type(on_project[cid] + own), as_of, stages, ranks))
    return links


def _criteria(step: Step, scope: _Scope) -> list[CriterionResult]:
    out = []
    for c, check, unmet in _checks(step):
        o = check(scope)
        if o == _NO:
            out.append(unmet)
        else:
            out.append(CriterionResult(c.id, c.label, step.value, o.met, tuple(sorted(o.evidence)), o.related))
    return out


def _gap(step: Step, results: list[CriterionResult]) -> Gap:
    missing = tuple(c.id for c in results if not c.met)
    return Gap(target=step.value, missing=missing, need=max(step.at_least - (len(results) - len(missing)), 0))


# A condition is turned into a function of the scope once per rulebook step, not walked
# node by node, dispatching on each node's type, on every evaluation: 8-17 % less CPU per
# grade (`bench/evaluation.py`, docs/performance.md "The engine-overhead round").
Check = Callable[[_Scope], _Outcome]
_CompiledStep = tuple[tuple[Criterion, Check, CriterionResult], ...]
# By the step's id, with the step kept beside its checks, so an id reused by a later step
# is never served another step's checks. Cleared when full: a process holds one rulebook,
# its tests a few hundred.
_COMPILED: dict[int, tuple[Step, _CompiledStep]] = {}
_COMPILED_MAX = 256


def _checks(step: Step) -> _CompiledStep:
    """Each criterion of `step`, its check, and its result when unmet with nothing found
    (most criteria of most subjects: one shared value, as a frozen dataclass costs ~0.7 µs
    to build)."""
    kept = _COMPILED.get(id(step))
    if kept is not None and kept[0] is step:
        return kept[1]
    compiled = tuple((c, _compile(c.when), CriterionResult(c.id, c.label, step.value, False, ())) for c in step.criteria)
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[id(step)] = (step, compiled)
    return compiled


def _compile(cond: Condition) -> Check:
    if isinstance(cond, HasEvent):
        return _has_event(cond)
    if isinstance(cond, Latest):
        return _latest(cond)
    if isinstance(cond, StageReached):
        stage = cond.stage
        return lambda scope: _stage_reached(stage, scope)
    if isinstance(cond, AllOf):
        all_parts = tuple(_compile(p) for p in cond.parts)

        def all_of(scope: _Scope) -> _Outcome:
            parts = [check(scope) for check in all_parts]
            return _Outcome(all(p.met for p in parts), _union(parts), _related(parts))

        return all_of
    if isinstance(cond, AnyOf):
        any_parts = tuple(_compile(p) for p in cond.parts)
        return lambda scope: _any([check(scope) for check in any_parts])
    if isinstance(cond, OwnedProject):
        return _owned_project(_compile(cond.condition))
    if isinstance(cond, LinkedCustomer):
        return _linked(cond, None if cond.has is None else _compile(cond.has))
    raise TypeError(f"unknown condition node {cond!r}")


def _has_event(cond: HasEvent) -> Check:
    event_type, where, min_count, days, on_won = cond.event_type, cond.where, cond.min_count, cond.within_days, cond.on_won_project
    defaults = dict(cond.defaults)
    where = tuple((key, value, defaults.get(key)) for key, value in where)
    none_found = _NO if min_count > 0 else _Outcome(True)

    def has_event(scope: _Scope) -> _Outcome:
        found = scope.by_type.get(event_type)
        if not found:  # the common case: no event of the type at all
            return none_found
        if days is not None:
            found = _within(found, scope.as_of, days)
        for key, value, default in where:  # one pass per pair: cheaper than all() over the pairs per event
            found = [e for e in found if e.attributes.get(key, default) == value]
        if on_won:
            found = [e for e in found if e.project_id in scope.won_projects]
        if not found:
            return none_found
        return _Outcome(len(found) >= min_count, frozenset([e.id for e in found]))

    return has_event


def _latest(cond: Latest) -> Check:
    event_type, attribute, values, negate, days, default = cond.event_type, cond.attribute, cond.values, cond.negate, cond.within_days, cond.default

    def latest_in(scope: _Scope) -> _Outcome:
        found = scope.by_type.get(event_type)
        if found and days is not None:
            found = _within(found, scope.as_of, days)
        newest = (latest(found, scope.stage_ranks) if event_type == "stage_changed" else latest(found)) if found else None
        if newest is None:
            return _NO
        try:
            inside = newest.attributes.get(attribute, default) in values
        except TypeError:  # a list, stored under a rulebook where the attribute was a list: in no value
            inside = False
        return _Outcome(inside != negate, frozenset({newest.id}))

    return latest_in


def _within(events: list[Event], as_of: datetime, days: int) -> list[Event]:
    """The events in the last `days` before `as_of`."""
    start = as_of - timedelta(days=days)
    return [e for e in events if start <= e.occurred_at <= as_of]


def _stage_reached(stage: str, scope: _Scope) -> _Outcome:
    if stage not in scope.stages:
        return _NO
    at_or_after = scope.stages[scope.stages.index(stage) :]
    found = [e for e in scope.by_type.get("stage_changed", ()) if e.attributes.get("stage") in at_or_after]
    return _Outcome(bool(found), frozenset([e.id for e in found]))


def _owned_project(inner: Check) -> Check:
    def owned_project(scope: _Scope) -> _Outcome:
        parts = []
        for project, project_scope in scope.owned:
            o = inner(project_scope)
            if o.evidence or o.met:
                parts.append(_Outcome(o.met, o.evidence, (project,)))
        return _any(parts)

    return owned_project


def _linked(cond: LinkedCustomer, has: Check | None) -> Check:
    role, min_level = cond.role, cond.min_level

    def linked(scope: _Scope) -> _Outcome:
        ps = scope.project
        if ps is None:
            return _NO
        if role == "owner":
            candidates: tuple[_Link, ...] = (ps.owner,)
        elif role == "winner":
            candidates = (ps.winner,) if ps.winner else ()
        else:
            candidates = ps.bidders
        parts = []
        for related, linked_scope in candidates:
            level_met = related.level >= min_level
            if has is None:
                parts.append(_Outcome(level_met, frozenset(), (related,)))
                continue
            o = has(linked_scope)
            parts.append(_Outcome(level_met and o.met, o.evidence, (related,)))
        return _any(parts)

    return linked


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
