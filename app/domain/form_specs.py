"""The mapping spec an admin writes for a form: which answers say what about which events.

A spec is JSON. `parse_form_spec` checks it against the rulebook's catalogue and either
returns a frozen `FormSpec` or raises `FormSpecError` listing every problem with its place
(e.g. `events[0].attributes.reception.map.热情`). Parse the stored spec against the current
rulebook for each submission: the rulebook may have changed since the spec was saved.
app.domain.forms applies a spec to a submission.

The spec::

    {
      "tool": "typeform",                         one of TOOLS
      "customer": {"by": "name", "answer": "customer_name"},
      "project":  {"by": "external_ref", "answer": "project_code", "optional": true},
      "actor":    {"answer": "hidden.rep_id"},    or {"value": "S-0217"}
      "note":     {"answer": "notes"},
      "occurred_at": {"answer": "visit_date", "format": "date", "timezone": "+08:00"},
      "events": [
        {"type": "visit",
         "attributes": {
           "reception":    {"answer": "reception", "map": {"热情": "welcoming", "一般": "neutral", "冷淡": "rejecting"}},
           "with_manager": {"answer": "with_manager", "map": {"是": true, "否": false}}}},
        {"type": {"answer": "outcome", "map": {"询价": "inquiry_received", "介绍了产品": "company_introduced"}}},
        {"type": "materials_sent", "when": {"answer": "sent", "in": ["样品", "报价表"]},
         "attributes": {"items": {"answer": "sent", "map": {"样品": "samples", "报价表": "price_list"}}}}
      ]
    }

- `customer`, `project`: `by` is how the caller finds the subject: `external_ref`, `phone`
  or `name`; the answer holds the value. Leave one out when no event of the form takes it.
  A missing answer is a problem unless `optional` is true. An event whose type forbids a
  subject is drafted without it.
- `actor`, `note` (optional): an answer or a constant text. A missing answer gives none.
  An event's actor holds 100 characters and its note 2,000: a longer answer is a problem
  with the submission, a longer constant one with the spec.
- No text in a spec, and no answer a submission maps, may hold the NUL character (U+0000),
  which PostgreSQL cannot store; nor may a spec's text hold a lone surrogate (`\ud800`).
- `occurred_at`: `"received"` (when Rapport received the delivery), `"submitted"` (the
  submission time the payload carries), or an answer read in one of `TIME_FORMATS`:
  `iso` (ISO 8601; an instant, or a local time read in `timezone`), `date` (`YYYY-MM-DD`),
  `us_date` (`MM/DD/YYYY`), `us_datetime` (`MM/DD/YYYY HH:MM:SS`, a Google Sheets
  timestamp), `unix_s`, `unix_ms`. `timezone` is an offset (`+08:00`) or a zone name
  (`Asia/Shanghai`), needed by every format that has no offset of its own. A date without
  a time means local midnight: the instant Jiandaoyun itself sends for a date, and one
  that never lies after the real visit (so never in the future).
- `events`: one draft per entry (whose `when` holds), in order; draft `i` gets the
  external id `<delivery id>#i`, so a redelivered submission finds its events again.
  `type` is an event type name, or an answer with a `map` from answer to type name.
  `when` (optional) drafts the event only if the answer is one of `in` (for a list answer,
  if any item is).
- Attribute sources: `{"value": constant}`, or `{"answer": key}` with an optional `map`
  (answer → value; true/false/numbers are looked up as "true", "false", "2") and an
  optional `default` for a missing answer. Without a default, a missing answer leaves the
  attribute out (the rulebook's default applies) unless the rulebook requires it. An answer
  the map does not know is a problem, never a silent default. A list answer is mapped item
  by item (an `enum_list`); a lone text becomes a one-item list for an `enum_list`, a
  numeric text a number for a `number`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from datetime import timedelta, timezone, tzinfo
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.domain.form_payloads import TOOLS
from app.domain.rulebook import AttributeSpec, EventType, Rulebook, Reader, attribute_problem
from app.domain.texts import join_path, unstorable_texts
from app.domain.validation import MAX_ACTOR

SUBJECT_KEYS = ("external_ref", "phone", "name")
TIME_FORMATS = ("iso", "date", "us_date", "us_datetime", "unix_s", "unix_ms")
# The formats without an offset of their own, read in the spec's timezone.
LOCAL_TIME_FORMATS = {"date": "%Y-%m-%d", "us_date": "%m/%d/%Y", "us_datetime": "%m/%d/%Y %H:%M:%S"}
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
# The events table's limits, as POST /v1/events applies them (MAX_ACTOR: app/domain/validation.py).
MAX_NOTE = 2000


@dataclass(frozen=True)
class Source:
    """Where one value comes from: a constant, or an answer (optionally mapped)."""

    answer: str | None
    value: Any = None
    map: Mapping[str, Any] | None = None
    default: Any = None


@dataclass(frozen=True)
class SubjectSource:
    by: str
    answer: str
    optional: bool


@dataclass(frozen=True)
class TimeSource:
    kind: str  # received | submitted | answer
    answer: str | None = None
    format: str | None = None
    zone: tzinfo | None = None


@dataclass(frozen=True)
class When:
    answer: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class EventSpec:
    type: Source  # a constant type name, or an answer mapped to type names
    attributes: Mapping[str, Source]
    when: When | None


@dataclass(frozen=True)
class FormSpec:
    tool: str
    customer: SubjectSource | None
    project: SubjectSource | None
    actor: Source | None
    note: Source | None
    occurred_at: TimeSource
    events: tuple[EventSpec, ...]
    event_types: Mapping[str, EventType]  # the catalogue entries these events may take


class FormSpecError(ValueError):
    """A mapping spec that cannot be used. `problems` holds (place, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {place}: {reason}" for place, reason in problems)
        super().__init__(f"invalid form mapping ({len(problems)} problem(s)):\n{lines}")


def parse_form_spec(data: Any, rulebook: Rulebook) -> FormSpec:
    """Validate a mapping spec (decoded JSON) against the rulebook's catalogue."""
    unstorable = list(unstorable_texts(data))
    if unstorable:  # alone: the other problems' places could name a key that cannot be written
        raise FormSpecError(unstorable)
    r = Reader()
    top = r.obj(
        data,
        "",
        allowed={"tool", "customer", "project", "actor", "note", "occurred_at", "events"},
        required={"tool", "occurred_at", "events"},
    )
    if top is None:
        raise FormSpecError(r.problems)
    tool = top.get("tool")
    if "tool" in top and tool not in TOOLS:
        r.fail("tool", f"unknown tool {tool!r}; known: {', '.join(TOOLS)}")
    customer = _subject(r, top["customer"], "customer") if "customer" in top else None
    project = _subject(r, top["project"], "project") if "project" in top else None
    actor = _text_source(r, top["actor"], "actor", MAX_ACTOR) if "actor" in top else None
    note = _text_source(r, top["note"], "note", MAX_NOTE) if "note" in top else None
    occurred_at = _time_source(r, top.get("occurred_at"), "occurred_at")

    events: list[EventSpec] = []
    used: dict[str, EventType] = {}
    raw_events = top.get("events")
    if "events" in top and (not isinstance(raw_events, list) or not raw_events):
        r.fail("events", "must be a non-empty list")
    for i, raw in enumerate(raw_events if isinstance(raw_events, list) else []):
        place = f"events[{i}]"
        spec = _event(r, rulebook, raw, place)
        if spec is None:
            continue
        events.append(spec[0])
        for et in spec[1]:
            used[et.name] = et
            for name, presence, given in (("customer", et.customer, customer), ("project", et.project, project)):
                if presence == "required" and given is None and name not in top:
                    r.fail(name, f"is required: {place} can be a {et.name} event, which needs a {name}")
    if r.problems:
        raise FormSpecError(r.problems)
    return FormSpec(
        tool=str(tool),
        customer=customer,
        project=project,
        actor=actor,
        note=note,
        occurred_at=occurred_at,
        events=tuple(events),
        event_types=used,
    )


def _subject(r: Reader, raw: Any, place: str) -> SubjectSource | None:
    d = r.obj(raw, place, allowed={"by", "answer", "optional"}, required={"by", "answer"})
    if d is None:
        return None
    if "by" in d and d["by"] not in SUBJECT_KEYS:
        r.fail(f"{place}.by", f"must be one of {', '.join(SUBJECT_KEYS)}")
    answer = r.text(d["answer"], f"{place}.answer") if "answer" in d else None
    optional = d.get("optional", False)
    if not isinstance(optional, bool):
        r.fail(f"{place}.optional", "must be true or false")
    return SubjectSource(str(d.get("by")), answer or "?", optional is True)


def _text_source(r: Reader, raw: Any, place: str, limit: int) -> Source | None:
    d = r.obj(raw, place, allowed={"answer", "value"}, required=set())
    if d is None:
        return None
    if ("answer" in d) == ("value" in d):
        r.fail(place, "needs exactly one of answer / value")
        return None
    if "value" in d:
        value = r.text(d["value"], f"{place}.value")
        if value is not None and len(value) > limit:
            r.fail(f"{place}.value", f"at most {limit} characters")
        return Source(None, value)
    return Source(r.text(d["answer"], f"{place}.answer"))


def _time_source(r: Reader, raw: Any, place: str) -> TimeSource:
    if raw in ("received", "submitted"):
        return TimeSource(raw)
    if not isinstance(raw, dict):
        r.fail(place, 'must be "received", "submitted" or {"answer", "format", "timezone"}')
        return TimeSource("received")
    d = r.obj(raw, place, allowed={"answer", "format", "timezone"}, required={"answer", "format"}) or {}
    answer = r.text(d["answer"], f"{place}.answer") if "answer" in d else None
    fmt = d.get("format")
    if "format" in d and fmt not in TIME_FORMATS:
        r.fail(f"{place}.format", f"must be one of {', '.join(TIME_FORMATS)}")
    zone = None
    if "timezone" in d:
        zone = _zone(d["timezone"])
        if zone is None:
            r.fail(f"{place}.timezone", "must be an offset like +08:00 or a zone name like Asia/Shanghai")
        elif fmt in ("unix_s", "unix_ms"):
            r.fail(f"{place}.timezone", "a unix time is an instant; it takes no timezone")
    elif isinstance(fmt, str) and fmt in LOCAL_TIME_FORMATS:
        r.fail(f"{place}.timezone", f"is required: a {fmt} answer has no offset of its own")
    return TimeSource("answer", answer, fmt if isinstance(fmt, str) else None, zone)


def _zone(raw: Any) -> tzinfo | None:
    if not isinstance(raw, str):
        return None
    offset = _OFFSET.match(raw)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-delta if sign == "-" else delta) if delta < timedelta(hours=24) else None
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _event(r: Reader, rulebook: Rulebook, raw: Any, place: str) -> tuple[EventSpec, list[EventType]] | None:
    d = r.obj(raw, place, allowed={"type", "attributes", "when"}, required={"type"})
    if d is None:
        return None
    type_source, types = _event_type(r, rulebook, d.get("type"), f"{place}.type")
    attributes: dict[str, Source] = {}
    raw_attrs = d.get("attributes", {})
    if not isinstance(raw_attrs, dict):
        r.fail(f"{place}.attributes", "must be an object of attribute name to source")
        raw_attrs = {}
    for name, raw_source in raw_attrs.items():
        attr_place = join_path(f"{place}.attributes", name)
        specs = []
        for et in types:
            spec = et.attributes.get(name)
            if spec is None:
                r.fail(attr_place, f"event type {et.name!r} has no attribute {name!r} (known: {', '.join(et.attributes) or 'none'})")
            else:
                specs.append(spec)
        source = _source(r, raw_source, attr_place, partial(_attribute_value_problem, specs))
        if source is not None:
            attributes[name] = source
    when = _when(r, d["when"], f"{place}.when") if "when" in d else None
    if type_source is None:
        return None
    return EventSpec(type_source, attributes, when), types


def _event_type(r: Reader, rulebook: Rulebook, raw: Any, place: str) -> tuple[Source | None, list[EventType]]:
    def problem(value: Any) -> str | None:
        if isinstance(value, str) and value in rulebook.event_types:
            return None
        return f"unknown event type {value!r}"

    if isinstance(raw, str):
        reason = problem(raw)
        if reason:
            r.fail(place, reason)
            return None, []
        return Source(None, raw), [rulebook.event_types[raw]]
    if not isinstance(raw, dict):
        r.fail(place, "must be an event type name, or {\"answer\", \"map\"} to take it from an answer")
        return None, []
    if "map" not in raw:
        r.fail(f"{place}.map", "is required: a type from an answer maps each answer to an event type")
    source = _source(r, raw, place, problem, constant=False)
    if source is None:
        return None, []
    targets = [*(source.map or {}).values(), source.default]
    names = dict.fromkeys(n for n in targets if isinstance(n, str) and n in rulebook.event_types)
    return source, [rulebook.event_types[n] for n in names]


def _source(r: Reader, raw: Any, place: str, problem: Callable[[Any], str | None], *, constant: bool = True) -> Source | None:
    """An `{"answer", "map"?, "default"?}` or (if `constant`) `{"value"}` source; `problem`
    says why a target value is unfit, or None."""
    d = r.obj(raw, place, allowed={"answer", "map", "default", "value"} if constant else {"answer", "map", "default"}, required=set())
    if d is None:
        return None
    if "value" in d:
        if d.keys() != {"value"}:
            r.fail(place, "a constant value takes no answer, map or default")
            return None
        reason = problem(d["value"])
        if reason:
            r.fail(f"{place}.value", reason)
        return Source(None, d["value"])
    if "answer" not in d:
        r.fail(f"{place}.answer", "is required" if not constant else "is required (or give a constant value)")
        return None
    answer = r.text(d["answer"], f"{place}.answer")
    value_map = d.get("map")
    if value_map is not None:
        if not isinstance(value_map, dict) or not value_map:
            r.fail(f"{place}.map", "must be a non-empty object of answer to value")
            value_map = None
        else:
            for key, target in value_map.items():
                reason = problem(target)
                if reason:
                    r.fail(join_path(f"{place}.map", key), reason)
    if "default" in d:
        reason = problem(d["default"])
        if reason:
            r.fail(f"{place}.default", reason)
    return Source(answer or "?", map=value_map, default=d.get("default"))


def _attribute_value_problem(specs: list[AttributeSpec], value: Any) -> str | None:
    for spec in specs:
        candidate = [value] if spec.type == "enum_list" and isinstance(value, str) else value
        reason = attribute_problem(spec, candidate)
        if reason:
            return reason
    return None


def _when(r: Reader, raw: Any, place: str) -> When | None:
    d = r.obj(raw, place, allowed={"answer", "in"}, required={"answer", "in"})
    if d is None or "answer" not in d or "in" not in d:
        return None
    answer = r.text(d["answer"], f"{place}.answer")
    values = d["in"]
    if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
        r.fail(f"{place}.in", "must be a non-empty list of texts, numbers or true/false")
        return None
    return When(answer or "?", tuple(values))
