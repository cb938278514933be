"""The rulebook: event catalogue, level criteria per customer kind, heat tiers.

A rulebook is data (JSON). `parse_rulebook` validates it completely and either returns
a frozen `Rulebook` or raises `RulebookError` listing every problem with its place
(a JSON path such as `levels.owner[1].criteria[3].when.event`) and the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from functools import cached_property
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from app.domain.conditions import (
    ROLES,
    AllOf,
    AnyOf,
    Condition,
    HasEvent,
    Latest,
    LinkedCustomer,
    OwnedProject,
    StageReached,
    walk,
)
from app.domain.texts import join_path, unstorable_texts

CUSTOMER_KINDS = ("owner", "installer")
PRESENCE = ("required", "optional", "forbidden")
ATTRIBUTE_TYPES = ("enum", "enum_list", "bool", "number", "string")
MAX_STRING_ATTRIBUTE = 500
MAX_NAME = 64  # a version and an event type's name: the columns that store them hold 64
MAX_DEPTH = 16  # conditions inside conditions
MAX_LEVEL = 9  # levels per kind of customer: the customer list's `level` filter goes up to it
MAX_WITHIN_DAYS = 36_500  # a hundred years: a window longer than dates go back is no window
# The largest size of a number attribute, as of a project's amount (app/api/schemas.py).
# Within it PostgreSQL's jsonb (which keeps a number as `numeric`) and SQLite's JSON give
# back the integer or float that was sent; past it jsonb gave 1e16 back as the integer
# 10000000000000000 where SQLite gave 1e+16.
MAX_NUMBER = 10**13
NUMBER_RANGE = f"from -{MAX_NUMBER} to {MAX_NUMBER} (10¹³)"
QUOTED = 60  # how much of a value a problem quotes (`quoted`)


@dataclass(frozen=True)
class Label:
    zh: str
    en: str

    def as_dict(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: str
    values: tuple[str, ...] = ()
    required: bool = False
    default: Any = None
    min: float | None = None


@dataclass(frozen=True)
class EventType:
    name: str
    label: Label
    customer: str  # required | optional | forbidden
    project: str
    customer_kind: str | None  # the kind a customer of this event must be, if any
    attributes: Mapping[str, AttributeSpec]


@dataclass(frozen=True)
class Criterion:
    id: str
    label: Label
    when: Condition


@dataclass(frozen=True)
class Step:
    """A level (1..n) or a heat tier (its percent): holds when `at_least` of its
    criteria are met (all of them unless the rulebook relaxes it)."""

    value: int
    label: Label
    criteria: tuple[Criterion, ...]
    at_least: int

    def holds(self, met_count: int) -> bool:
        return met_count >= self.at_least


@dataclass(frozen=True)
class Rulebook:
    version: str
    title: Label
    ordered_stages: tuple[str, ...]
    closed_stages: Mapping[str, int]
    event_types: Mapping[str, EventType]
    level_labels: Mapping[int, Label]
    levels: Mapping[str, tuple[Step, ...]]  # customer kind -> levels 1..n
    tiers: tuple[Step, ...]  # highest percent first
    cold_label: Label
    closed_labels: Mapping[str, Label]
    source: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def max_level(self, kind: str) -> int:
        return len(self.levels[kind])

    @cached_property
    def stage_ranks(self) -> Mapping[str, int]:
        """How far along each stage puts a project, for stage changes at one instant: the
        ordered stages in their order, the closed ones after all of them. A stage in
        neither (a rulebook's own, such as on_hold) ranks below every ordered one."""
        ranks = {stage: i for i, stage in enumerate(self.ordered_stages)}
        ranks.update((stage, len(self.ordered_stages)) for stage in self.closed_stages)
        return ranks

    @cached_property
    def digest(self) -> str:
        """What this rulebook says, as a SHA-256 of its JSON with the keys sorted and no
        spaces: the same for the same content however the file is laid out, and different
        for any change, version included. The database records the active rulebook's
        (app/services/state.py), so that a process whose rulebook is no longer the active
        one grades nothing under it, and a version names one content for good."""
        text = json.dumps(self.source, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @cached_property
    def ages(self) -> bool:
        """Whether a grade can change with time alone: some criterion counts only the
        events of its last `within_days` before the moment graded."""
        steps = [*self.tiers, *(step for levels in self.levels.values() for step in levels)]
        return any(getattr(node, "within_days", None) is not None for step in steps for c in step.criteria for node in walk(c.when))

    @cached_property
    def linked_customer_event_types(self) -> frozenset[str]:
        """Event types a project criterion reads from a linked customer's own events."""
        return frozenset(
            node.event_type
            for tier in self.tiers
            for c in tier.criteria
            for link in walk(c.when)
            if isinstance(link, LinkedCustomer) and link.has is not None
            for node in walk(link.has)
            if isinstance(node, (HasEvent, Latest))
        )

    @cached_property
    def owned_project_event_types(self) -> frozenset[str]:
        """Event types an owner criterion reads from the owner's projects."""
        types: set[str] = set()
        for step in self.levels["owner"]:
            for c in step.criteria:
                for node in walk(c.when):
                    if isinstance(node, OwnedProject):
                        for inner in walk(node.condition):
                            if isinstance(inner, (HasEvent, Latest)):
                                types.add(inner.event_type)
                            elif isinstance(inner, StageReached):
                                types.add("stage_changed")
        return frozenset(types)


class RulebookError(ValueError):
    """A rulebook that cannot be used. `problems` holds (place, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {place}: {reason}" for place, reason in problems)
        super().__init__(f"invalid rulebook ({len(problems)} problem(s)):\n{lines}")


class RulebookMismatch(Exception):
    """The configured rulebook is not the database's active one, and this command may not
    switch it (only `rapport serve` and `rapport migrate` do: app/services/state.py); or,
    with `reused`, its version is one the database recorded with other content."""

    def __init__(self, configured: str, active: str, *, reused: bool = False):
        if reused:
            message = f"the configured rulebook {configured!r} is not what the database recorded under that version: a changed rulebook needs a new version"
        else:
            message = f"the configured rulebook is {configured!r}, the database's active one {active!r}"
        super().__init__(message)
        self.configured = configured
        self.active = active
        self.reused = reused


class Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, place: str, reason: str) -> None:
        self.problems.append((place or "(root)", reason))

    def obj(self, value: Any, place: str, *, allowed: set[str], required: set[str]) -> dict | None:
        if not isinstance(value, dict):
            self.fail(place, "must be an object")
            return None
        for key in value:
            if key not in allowed:
                self.fail(join_path(place, key), "unknown key")
        for key in sorted(required - value.keys()):
            self.fail(join_path(place, key), "is required")
        return value

    def text(self, value: Any, place: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(place, "must be a non-empty string")
            return None
        return value

    def label(self, value: Any, place: str) -> Label:
        data = self.obj(value, place, allowed={"zh", "en"}, required={"zh", "en"}) or {}
        zh = self.text(data.get("zh"), join_path(place, "zh")) if "zh" in data else None
        en = self.text(data.get("en"), join_path(place, "en")) if "en" in data else None
        return Label(zh or "?", en or "?")

    def positive_int(self, value: Any, place: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(place, "must be a whole number ≥ 1")
            return None
        return value


def parse_rulebook(data: Any) -> Rulebook:
    """Validate rulebook data (already decoded from JSON) and build the model."""
    r = Reader()
    # A lone surrogate (\ud800, which JSON reads from an escape) is no text: the digest,
    # which encodes the whole rulebook as UTF-8, ended start-up in a traceback (a hunt's find).
    for place, reason in unstorable_texts(data, nul=False):
        r.fail(place, reason)
    top = r.obj(
        data,
        "",
        allowed={"version", "title", "stages", "event_types", "level_labels", "levels", "heat"},
        required={"version", "title", "stages", "event_types", "level_labels", "levels", "heat"},
    )
    if top is None:
        raise RulebookError(r.problems)
    version = r.text(top.get("version"), "version") or "?"
    if len(version) > MAX_NAME:
        r.fail("version", f"at most {MAX_NAME} characters (every history row stores it)")
    title = r.label(top.get("title"), "title")

    stages = r.obj(top.get("stages"), "stages", allowed={"ordered", "closed"}, required={"ordered", "closed"}) or {}
    ordered: tuple[str, ...] = ()
    if isinstance(stages.get("ordered"), list) and stages["ordered"]:
        ordered = tuple(s for i, s in enumerate(stages["ordered"]) if r.text(s, f"stages.ordered[{i}]"))
        if len(set(ordered)) != len(ordered):
            r.fail("stages.ordered", "stages must be unique")
    elif "ordered" in stages:
        r.fail("stages.ordered", "must be a non-empty list of stage names")
    closed: dict[str, int] = {}
    closed_raw = stages.get("closed")
    if isinstance(closed_raw, dict):
        for name, pct in closed_raw.items():
            if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
                r.fail(f"stages.closed.{name}", "must be a percent from 0 to 100")
            elif name in ordered:
                r.fail(f"stages.closed.{name}", "a closed stage cannot also be an ordered stage")
            else:
                closed[name] = pct
    elif "closed" in stages:
        r.fail("stages.closed", "must be an object of stage name to percent")

    event_types = _parse_event_types(r, top.get("event_types"))
    _check_stages_can_be_set(r, event_types, ordered, closed)

    level_labels: dict[int, Label] = {}
    raw_labels = top.get("level_labels")
    if isinstance(raw_labels, dict):
        for key, value in raw_labels.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit()):  # not "²" or "٣"
                r.fail(f"level_labels.{key}", "keys are level numbers")
                continue
            try:
                number = int(key)
            except ValueError:  # more digits than Python converts
                r.fail(f"level_labels.{key}", "keys are level numbers")
                continue
            if key != str(number):  # "01" beside "1" replaced its label, where GET /v1/rulebook showed both
                r.fail(f"level_labels.{key}", f"keys are level numbers without leading zeros: {number}")
                continue
            level_labels[number] = r.label(value, f"level_labels.{key}")
    else:
        r.fail("level_labels", "must be an object of level number to label")

    ctx = _ConditionContext(r, event_types, ordered)
    levels: dict[str, tuple[Step, ...]] = {}
    raw_levels = r.obj(top.get("levels"), "levels", allowed=set(CUSTOMER_KINDS), required=set(CUSTOMER_KINDS)) or {}
    for kind in CUSTOMER_KINDS:
        if kind in raw_levels:
            steps = _parse_steps(r, ctx, raw_levels[kind], f"levels.{kind}", value_key="level", scope=kind)
            for i, step in enumerate(steps):
                if step.value != i + 1:
                    r.fail(f"levels.{kind}[{i}].level", f"levels must be numbered 1, 2, 3… in order; expected {i + 1}")
            levels[kind] = steps
            if len(steps) > MAX_LEVEL:
                r.fail(f"levels.{kind}", f"at most {MAX_LEVEL} levels")
    for n in range(0, max((len(s) for s in levels.values()), default=0) + 1):
        if n not in level_labels:
            r.fail(f"level_labels.{n}", "missing label for this level")
    ctx.top_level = {kind: len(steps) for kind, steps in levels.items()}

    heat = r.obj(
        top.get("heat"),
        "heat",
        allowed={"tiers", "cold_label", "won_label", "lost_label", "closed_labels"},
        required={"tiers", "cold_label", "won_label", "lost_label"},
    ) or {}
    tiers = _parse_steps(r, ctx, heat.get("tiers"), "heat.tiers", value_key="percent", scope="project") if "tiers" in heat else ()
    percents = [t.value for t in tiers]
    if any(not 0 < p < 100 for p in percents):
        r.fail("heat.tiers", "tier percents must be between 1 and 99")
    if percents != sorted(set(percents), reverse=True):
        r.fail("heat.tiers", "tiers must be listed from the highest percent down, each percent once")
    cold_label = r.label(heat.get("cold_label"), "heat.cold_label")
    closed_labels = {"won": r.label(heat.get("won_label"), "heat.won_label"), "lost": r.label(heat.get("lost_label"), "heat.lost_label")}
    closed_labels.update(_other_closed_labels(r, heat.get("closed_labels", {}), closed))

    if r.problems:
        raise RulebookError(r.problems)
    return Rulebook(
        version=version,
        title=title,
        ordered_stages=ordered,
        closed_stages=closed,
        event_types=event_types,
        level_labels=level_labels,
        levels=levels,
        tiers=tiers,
        cold_label=cold_label,
        closed_labels=closed_labels,
        source=data,
    )


def _parse_event_types(r: Reader, raw: Any) -> dict[str, EventType]:
    out: dict[str, EventType] = {}
    if not isinstance(raw, dict) or not raw:
        r.fail("event_types", "must be a non-empty object of type name to definition")
        return out
    for name, spec in raw.items():
        place = f"event_types.{name}"
        if not name or len(name) > MAX_NAME:
            r.fail(place, f"a type name has 1 to {MAX_NAME} characters (every event stores it)")
        d = r.obj(spec, place, allowed={"label", "customer", "project", "customer_kind", "attributes"}, required={"label", "customer", "project"})
        if d is None:
            continue
        for key in ("customer", "project"):
            if key in d and d[key] not in PRESENCE:
                r.fail(f"{place}.{key}", f"must be one of {', '.join(PRESENCE)}")
        if d.get("customer") == "forbidden" and d.get("project") == "forbidden":
            r.fail(place, "an event must be about a customer or a project")
        kind = d.get("customer_kind")
        if kind is not None and kind not in CUSTOMER_KINDS:
            r.fail(f"{place}.customer_kind", f"must be one of {', '.join(CUSTOMER_KINDS)}")
        attrs: dict[str, AttributeSpec] = {}
        raw_attrs = d.get("attributes", {})
        if not isinstance(raw_attrs, dict):
            r.fail(f"{place}.attributes", "must be an object")
            raw_attrs = {}
        for attr_name, a in raw_attrs.items():
            attr_place = f"{place}.attributes.{attr_name}"
            ad = r.obj(a, attr_place, allowed={"type", "values", "required", "default", "min"}, required={"type"})
            if ad is None:
                continue
            atype = ad.get("type")
            if atype not in ATTRIBUTE_TYPES:
                r.fail(f"{attr_place}.type", f"must be one of {', '.join(ATTRIBUTE_TYPES)}")
                continue
            values = ad.get("values", [])
            if atype in ("enum", "enum_list") and (not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values)):
                r.fail(f"{attr_place}.values", "an enum needs a non-empty list of string values")
                values = []
            required = ad.get("required", False)
            if not isinstance(required, bool):
                r.fail(f"{attr_place}.required", "must be true or false")
                required = False
            minimum = ad.get("min")
            if minimum is not None and (atype != "number" or isinstance(minimum, bool) or not isinstance(minimum, (int, float))):
                r.fail(f"{attr_place}.min", "a minimum is a number, on a number attribute")
                minimum = None
            elif isinstance(minimum, float) and not math.isfinite(minimum):  # 1e400, which JSON reads as infinity
                r.fail(f"{attr_place}.min", "must be a finite number")
                minimum = None
            elif minimum is not None and abs(minimum) > MAX_NUMBER:
                r.fail(f"{attr_place}.min", f"must be {NUMBER_RANGE}, the range of a number attribute")
                minimum = None
            spec = AttributeSpec(name=attr_name, type=atype, values=tuple(values), required=required, min=minimum)
            default = ad.get("default")
            if default is not None:
                reason = attribute_problem(spec, default)
                if reason:
                    r.fail(f"{attr_place}.default", reason)
                    default = None
            attrs[attr_name] = AttributeSpec(spec.name, spec.type, spec.values, spec.required, stored_value(spec, default), spec.min)
        out[name] = EventType(
            name=name,
            label=r.label(d.get("label"), f"{place}.label"),
            customer=d.get("customer", "optional"),
            project=d.get("project", "optional"),
            customer_kind=kind,
            attributes=attrs,
        )
    return out


def _other_closed_labels(r: Reader, raw: Any, closed: Mapping[str, int]) -> dict[str, Label]:
    """The labels of the closed stages other than won and lost (`heat.closed_labels`): each
    needs one, or a project closed so was shown as "Cold (0 %)" at any percent."""
    if not isinstance(raw, dict):
        r.fail("heat.closed_labels", "must be an object of closed stage name to label")
        raw = {}
    labels = {}
    for name, label in raw.items():
        place = f"heat.closed_labels.{name}"
        if name in ("won", "lost"):
            r.fail(place, f"give it as heat.{name}_label")
        elif name not in closed:
            r.fail(place, "not a closed stage (stages.closed)")
        else:
            labels[name] = r.label(label, place)
    for name in closed:
        if name not in ("won", "lost") and name not in raw:
            r.fail(f"stages.closed.{name}", f"has no label: give one in heat.closed_labels.{name}")
    return labels


def _check_stages_can_be_set(r: Reader, event_types: Mapping[str, EventType], ordered: tuple[str, ...], closed: Mapping[str, int]) -> None:
    """A project's stage is the `stage` of its latest `stage_changed` event: every stage the
    rulebook names must be one that type can set, or it is never reached (a hunt's closed
    stage `cancelled`)."""
    if not event_types:
        return  # already refused
    et = event_types.get("stage_changed")
    spec = et.attributes.get("stage") if et is not None else None
    if et is None or et.project == "forbidden" or spec is None or spec.type != "enum":
        r.fail("event_types.stage_changed", "needed: a project's stage (and whether it is won or lost) is the enum attribute `stage` of its latest stage_changed event, on the project")
        return
    for name in ordered:
        if name not in spec.values:
            r.fail("stages.ordered", f"{name!r} is not a value of stage_changed.stage, so no project ever reaches it")
    for name in closed:
        if name not in spec.values:
            r.fail(f"stages.closed.{name}", f"{name!r} is not a value of stage_changed.stage, so no project is ever closed so")


def _parse_steps(r: Reader, ctx: "_ConditionContext", raw: Any, place: str, *, value_key: str, scope: str) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        r.fail(place, "must be a non-empty list")
        return ()
    steps = []
    for i, s in enumerate(raw):
        sp = f"{place}[{i}]"
        d = r.obj(s, sp, allowed={value_key, "label", "criteria", "at_least"}, required={value_key, "label", "criteria"})
        if d is None:
            continue
        value = d.get(value_key)
        if isinstance(value, bool) or not isinstance(value, int):
            r.fail(f"{sp}.{value_key}", "must be a whole number")
            value = 0
        criteria = []
        raw_criteria = d.get("criteria")
        if not isinstance(raw_criteria, list) or not raw_criteria:
            r.fail(f"{sp}.criteria", "must be a non-empty list")
            raw_criteria = []
        for j, c in enumerate(raw_criteria):
            cp = f"{sp}.criteria[{j}]"
            cd = r.obj(c, cp, allowed={"id", "label", "when"}, required={"id", "label", "when"})
            if cd is None:
                continue
            cid = ctx.criterion_id(cd.get("id"), f"{cp}.id")
            cond = ctx.condition(cd.get("when"), f"{cp}.when", scope) if "when" in cd else None
            if cond is not None:
                criteria.append(Criterion(cid, r.label(cd.get("label"), f"{cp}.label"), cond))
        at_least = len(criteria)
        if "at_least" in d:
            k = r.positive_int(d["at_least"], f"{sp}.at_least")
            if k is not None and k > len(raw_criteria):
                r.fail(f"{sp}.at_least", f"cannot exceed the number of criteria ({len(raw_criteria)})")
            elif k is not None:
                at_least = k
        steps.append(Step(value=value, label=r.label(d.get("label"), f"{sp}.label"), criteria=tuple(criteria), at_least=at_least))
    return tuple(steps)


class _ConditionContext:
    """Parses condition nodes, checking each against the catalogue and its scope.

    Scopes: "owner"/"installer" (a customer's own events), "project" (a project's events),
    "linked:owner"/"linked:installer" (a linked customer's events, inside an owner's or a
    bidder's or winner's `has`)."""

    def __init__(self, r: Reader, event_types: Mapping[str, EventType], stages: tuple[str, ...]):
        self.r = r
        self.event_types = event_types
        self.stages = stages
        self.criterion_places: dict[str, str] = {}  # criterion id -> where it was first defined
        self.top_level: dict[str, int] = {}  # customer kind -> its highest level, once the levels are read
        self.depth = 0  # conditions inside conditions, where the reader is now
        self.in_owned_project = False  # inside an owner level's `owned_project`

    def condition(self, raw: Any, place: str, scope: str) -> Condition | None:
        """`raw` as a condition, at most MAX_DEPTH conditions deep (a deeper one cannot be
        served back as JSON, and no checklist needs it)."""
        if self.depth >= MAX_DEPTH:
            self.r.fail(place, f"conditions nest at most {MAX_DEPTH} deep")
            return None
        self.depth += 1
        try:
            return self._condition(raw, place, scope)
        finally:
            self.depth -= 1

    def criterion_id(self, raw: Any, place: str) -> str:
        cid = self.r.text(raw, place) or "?"
        if cid in self.criterion_places:
            self.r.fail(place, f"criterion id {cid!r} used twice (first at {self.criterion_places[cid]})")
        else:
            self.criterion_places[cid] = place
        return cid

    def _condition(self, raw: Any, place: str, scope: str) -> Condition | None:
        r = self.r
        if not isinstance(raw, dict) or not raw:
            r.fail(place, "must be a condition object")
            return None
        if "event" in raw:
            return self._has_event(raw, place, scope)
        if "latest" in raw:
            return self._latest(raw, place, scope)
        if "stage_reached" in raw:
            r.obj(raw, place, allowed={"stage_reached"}, required=set())
            if scope != "project":
                r.fail(place, "stage_reached applies to a project (use owned_project for an owner)")
            if not isinstance(raw["stage_reached"], str) or raw["stage_reached"] not in self.stages:
                r.fail(f"{place}.stage_reached", f"unknown stage; ordered stages are {', '.join(self.stages)}")
            return StageReached(raw["stage_reached"])
        for key, cls in (("all_of", AllOf), ("any_of", AnyOf)):
            if key in raw:
                r.obj(raw, place, allowed={key}, required=set())
                parts = raw[key]
                if not isinstance(parts, list) or not parts:
                    r.fail(f"{place}.{key}", "must be a non-empty list of conditions")
                    return None
                parsed = [self.condition(p, f"{place}.{key}[{i}]", scope) for i, p in enumerate(parts)]
                return cls(tuple(p for p in parsed if p is not None))
        if "owned_project" in raw:
            r.obj(raw, place, allowed={"owned_project"}, required=set())
            if scope != "owner":
                r.fail(place, "owned_project applies only to owner levels")
            self.in_owned_project, outer = True, self.in_owned_project
            try:
                inner = self.condition(raw["owned_project"], f"{place}.owned_project", "project")
            finally:
                self.in_owned_project = outer
            return OwnedProject(inner) if inner is not None else None
        for role in ROLES:
            if role in raw:
                r.obj(raw, place, allowed={role}, required=set())
                if scope != "project":
                    r.fail(place, f"{role} applies only to heat tiers")
                elif self.in_owned_project:
                    # An owner's level reads its projects' events, never other customers'
                    # levels (which may read it): accepted, it was never met.
                    r.fail(place, f"{role} applies only to heat tiers, not inside owned_project: an owner's level reads its projects' events, not their customers")
                spec = r.obj(raw[role], f"{place}.{role}", allowed={"min_level", "has"}, required=set()) or {}
                min_level = spec.get("min_level", 0)
                top = self.top_level.get("owner" if role == "owner" else "installer")
                if isinstance(min_level, bool) or not isinstance(min_level, int) or min_level < 0:
                    r.fail(f"{place}.{role}.min_level", "must be a whole number ≥ 0")
                    min_level = 0
                elif top is not None and min_level > top:
                    r.fail(f"{place}.{role}.min_level", f"at most {top}, the highest level of its customers' kind: no {role} could meet it")
                    min_level = 0
                needed = {"bidder": ("bid_joined", "bid_won"), "winner": ("bid_won",)}.get(role, ())
                if needed and not any(self._bids(t) for t in needed):
                    r.fail(place, f"there is no event type {' or '.join(needed)}{self._naming(needed)}, so a project never has a {role}")
                kind = "owner" if role == "owner" else "installer"
                has = self.condition(spec["has"], f"{place}.{role}.has", f"linked:{kind}") if "has" in spec else None
                return LinkedCustomer(role, min_level, has)
        r.fail(place, "unknown condition; expected one of event, latest, stage_reached, all_of, any_of, owned_project, bidder, winner, owner")
        return None

    def _event_type(self, name: Any, place: str) -> EventType | None:
        if not isinstance(name, str):
            self.r.fail(place, "must be an event type name")
            return None
        if name not in self.event_types:
            self.r.fail(place, f"unknown event type {name!r}")
            return None
        return self.event_types[name]

    def _bids(self, name: str) -> bool:
        """Whether events of type `name` can make a bidder or a winner: they must name both
        a customer and a project (app/domain/facts.py `bidder_ids`, `winner_id`)."""
        et = self.event_types.get(name)
        return et is not None and et.customer != "forbidden" and et.project != "forbidden"

    def _naming(self, names: tuple[str, ...]) -> str:
        """How a refusal of `_bids` reads: the types exist, but forbid a customer or a project."""
        return " that names a customer on a project" if any(n in self.event_types for n in names) else ""

    def _within(self, raw: dict, place: str) -> int | None:
        if "within_days" not in raw:
            return None
        days = self.r.positive_int(raw["within_days"], f"{place}.within_days")
        if days is not None and days > MAX_WITHIN_DAYS:
            self.r.fail(f"{place}.within_days", f"at most {MAX_WITHIN_DAYS} days (leave within_days out for no window)")
            return None
        return days

    def _has_event(self, raw: dict, place: str, scope: str) -> HasEvent | None:
        r = self.r
        r.obj(raw, place, allowed={"event", "where", "min_count", "within_days", "on_won_project"}, required=set())
        et = self._event_type(raw["event"], f"{place}.event")
        where = raw.get("where", {})
        if not isinstance(where, dict):
            r.fail(f"{place}.where", "must be an object of attribute to value")
            where = {}
        if not all(isinstance(v, (str, bool, int, float)) for v in where.values()):
            r.fail(f"{place}.where", "values must be strings, numbers or true/false")
            where = {}
        if et is not None:
            for attr, value in where.items():
                self._check_value(et, attr, value, f"{place}.where.{attr}")
        min_count = 1
        if "min_count" in raw:
            min_count = r.positive_int(raw["min_count"], f"{place}.min_count") or 1
        on_won = raw.get("on_won_project", False)
        if on_won not in (True, False):
            r.fail(f"{place}.on_won_project", "must be true or false")
        if on_won and (scope != "installer" or (et is not None and et.project == "forbidden")):
            r.fail(f"{place}.on_won_project", "applies to installer criteria on events that carry a project")
        if on_won and not self._bids("bid_won"):
            r.fail(f"{place}.on_won_project", f"there is no event type bid_won{self._naming(('bid_won',))}, so no project is ever won")
        if et is None:
            return None
        self._check_scope(et, f"{place}.event", scope)
        return HasEvent(
            event_type=raw["event"],
            where=tuple(sorted(where.items())),
            min_count=min_count,
            within_days=self._within(raw, place),
            on_won_project=bool(on_won),
            defaults=tuple(sorted((name, default) for name in where if (default := _default(et, name)) is not None)),
        )

    def _latest(self, raw: dict, place: str, scope: str) -> Latest | None:
        r = self.r
        r.obj(raw, place, allowed={"latest", "attribute", "in", "not_in", "within_days"}, required={"attribute"})
        et = self._event_type(raw["latest"], f"{place}.latest")
        if et is None:
            return None
        self._check_scope(et, f"{place}.latest", scope)
        if ("in" in raw) == ("not_in" in raw):
            r.fail(place, "needs exactly one of in / not_in")
            return None
        key = "in" if "in" in raw else "not_in"
        values = raw[key]
        if not isinstance(values, list) or not values:
            r.fail(f"{place}.{key}", "must be a non-empty list of values")
            return None
        if "attribute" not in raw:  # refused as required (`r.obj`)
            return None
        attribute = raw["attribute"]
        if not isinstance(attribute, str):  # null too: it read as an attribute named "?"
            r.fail(f"{place}.attribute", "must be an attribute name")
            return None
        if not all(isinstance(v, (str, bool, int, float)) for v in values):
            r.fail(f"{place}.{key}", "values must be strings, numbers or true/false")
            return None
        for i, v in enumerate(values):
            self._check_value(et, attribute, v, f"{place}.{key}[{i}]")
        spec = et.attributes.get(attribute)
        every = set(spec.values) if spec is not None and spec.type == "enum" else {True, False} if spec is not None and spec.type == "bool" else None
        if key == "not_in" and every is not None and every <= set(values) and (spec.required or spec.default is not None):
            r.fail(f"{place}.not_in", f"lists every value of {attribute!r}, which an event of this type always has: a condition on it could never be met")
        return Latest(
            event_type=raw["latest"],
            attribute=attribute,
            values=frozenset(values),
            negate=key == "not_in",
            within_days=self._within(raw, place),
            default=_default(et, attribute),
        )

    def _check_scope(self, et: EventType, place: str, scope: str) -> None:
        """A condition on a type of event that is never among the events it reads could
        never be met (a hunt's owner level asking for a bid, which only installers make)."""
        if scope == "project":
            reason = "an event of this type is never on a project (its project is forbidden)" if et.project == "forbidden" else None
        elif et.customer == "forbidden":
            reason = "an event of this type never names a customer (its customer is forbidden)"
        elif (kind := scope.removeprefix("linked:")) in CUSTOMER_KINDS and et.customer_kind not in (None, kind):
            reason = f"only {et.customer_kind}s log events of this type, never an {kind}"
        else:
            reason = None
        if reason:
            self.r.fail(place, f"{reason}: a condition on it could never be met")

    def _check_value(self, et: EventType, attr: str, value: Any, place: str) -> None:
        spec = et.attributes.get(attr)
        if spec is None:
            self.r.fail(place, f"event type {et.name!r} has no attribute {attr!r}")
        elif spec.type == "enum_list":
            self.r.fail(place, f"{attr!r} holds a list of values, which no single value equals: a condition on it could never be met")
        elif spec.type == "enum" and value not in spec.values:
            self.r.fail(place, f"{value!r} is not one of {', '.join(spec.values)}")
        elif spec.type == "bool" and not isinstance(value, bool):
            self.r.fail(place, "must be true or false")
        elif spec.type == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            self.r.fail(place, f"{attr!r} is a number: {value!r} would never equal one")
        elif spec.type == "number" and not abs(value) <= MAX_NUMBER:  # 1e400 reads as infinity
            self.r.fail(place, f"{attr!r} is a number from -10¹³ to 10¹³: {value!r} would never equal one")
        elif spec.type == "string" and not isinstance(value, str):
            self.r.fail(place, f"{attr!r} is a text: {value!r} would never equal one")
        elif (reason := attribute_problem(spec, value)) is not None:  # a minimum, a text's length or NUL
            self.r.fail(place, f"{attr!r} {reason}: {quoted(value)} would never equal one, as no event can carry it")


def quoted(value: Any) -> str:
    """A value as a problem quotes it: its start, for a rulebook's text or a form's answer may
    be long (a problem kept with a submission, an answer of a megabyte)."""
    text = repr(value)
    return text if len(text) <= QUOTED else f"{text[:QUOTED]}…"


def _default(et: EventType, attribute: str) -> Any:
    spec = et.attributes.get(attribute)
    return None if spec is None else spec.default


def attribute_problem(spec: AttributeSpec, value: Any) -> str | None:
    """Why `value` is not valid for the attribute, or None if it is."""
    if spec.type == "enum":
        if not isinstance(value, str) or value not in spec.values:
            return f"must be one of {', '.join(spec.values)}"
    elif spec.type == "enum_list":
        if not isinstance(value, list) or not value:
            return f"must be a non-empty list of {', '.join(spec.values)}"
        bad = [v for v in value if not isinstance(v, str) or v not in spec.values]
        if bad:
            return f"{bad[0]!r} is not one of {', '.join(spec.values)}"
        if len(set(value)) != len(value):
            return "lists each item once"
    elif spec.type == "bool":
        if not isinstance(value, bool):
            return "must be true or false"
    elif spec.type == "number":
        # An int is exact at any size (math.isfinite of one past a float's range raises).
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            return "must be a number"
        if spec.min is not None and value < spec.min:
            return f"must be ≥ {spec.min:g}"
        if value > MAX_NUMBER:
            return f"must be ≤ {MAX_NUMBER} (10¹³)"
        if value < -MAX_NUMBER:
            return f"must be ≥ -{MAX_NUMBER} (-10¹³)"
    elif spec.type == "string":
        if not isinstance(value, str):
            return "must be a string"
        if "\x00" in value:  # PostgreSQL cannot store U+0000 in JSON text
            return "must not contain the NUL character (U+0000)"
        if len(value) > MAX_STRING_ATTRIBUTE:
            return f"at most {MAX_STRING_ATTRIBUTE} characters"
    return None


def stored_value(spec: AttributeSpec, value: Any) -> Any:
    """A valid value as it is stored: a number's -0.0 as 0.0, which is what PostgreSQL's
    jsonb gives back (SQLite's JSON kept the sign), as a project's amount does."""
    if spec.type == "number" and isinstance(value, float):
        return value + 0.0
    return value


def load_rulebook(path: str | Path | None = None) -> Rulebook:
    """Load and validate a rulebook file; without a path, the packaged default."""
    if path is None:
        text = resources.files("app.domain").joinpath("rulebooks/default.json").read_text(encoding="utf-8")
        where = "default rulebook"
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RulebookError([(where, f"cannot be read: {exc.strerror or exc}")]) from exc
        except UnicodeDecodeError as exc:
            raise RulebookError([(f"{where}:byte {exc.start}", "not UTF-8 text")]) from exc
    try:
        data = json.loads(text, parse_constant=_not_json, parse_int=_whole_number, object_pairs_hook=_no_twice)
    except json.JSONDecodeError as exc:
        raise RulebookError([(f"{where}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}")]) from exc
    except _NotJson as exc:
        raise RulebookError([(where, f"not valid JSON: {exc}")]) from None
    except RecursionError:
        raise RulebookError([(where, "not valid JSON: nested too deeply")]) from None
    return parse_rulebook(data)


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON has not: a `min` of NaN compared
    # false with everything, and the minimum was silently off.
    raise _NotJson(f"{constant} is no JSON number")


def _whole_number(digits: str) -> int:
    # Python refuses to convert an integer of more than 4300 digits (sys.int_info): the
    # ValueError was no JSONDecodeError and ended `rapport migrate` in a traceback.
    try:
        return int(digits)
    except ValueError:
        raise _NotJson(f"a number of {len(digits.lstrip('-'))} digits (at most {sys.get_int_max_str_digits()} are read)") from None


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python's json keeps the last of a key given twice: a file whose "version" was written
    # twice served the second without a word.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _NotJson(f"the key {key!r} is given twice in one object")
        seen[key] = value
    return seen
