"""Turning a form submission into events.

`apply_mapping(spec, submission, received_at=…)` reads a `Submission` (app.domain.form_payloads)
through a `FormSpec` (app.domain.form_specs, where the spec format is described) and returns
one `EventDraft` per event of the spec whose `when` holds, or raises `MappingError` listing
every problem with the submission (a missing answer, an answer the value map does not know,
a time it cannot read). Looking the customer and project up, and checking each draft with
`check_event`, is the caller's part.

The names a caller needs from all three modules are importable from here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, Mapping

from app.domain.form_payloads import TOOLS, PayloadError, Submission, Unreadable, parse_payload
from app.domain.form_specs import (
    LOCAL_TIME_FORMATS,
    MAX_NOTE,
    SUBJECT_KEYS,
    TIME_FORMATS,
    FormSpec,
    FormSpecError,
    Source,
    SubjectSource,
    TimeSource,
    When,
    parse_form_spec,
)
from app.domain.rulebook import AttributeSpec, EventType, attribute_problem, quoted
from app.domain.texts import unstorable_texts
from app.domain.validation import MAX_ACTOR, number_in_text, reserved_actor

__all__ = [
    "TOOLS",
    "SUBJECT_KEYS",
    "TIME_FORMATS",
    "PayloadError",
    "Submission",
    "parse_payload",
    "FormSpec",
    "FormSpecError",
    "parse_form_spec",
    "SubjectRef",
    "EventDraft",
    "MappingError",
    "apply_mapping",
]

# The longest subject reference a lookup takes, as the subject's own field holds it
# (POST /v1/events takes a customer_ref of 100 characters, a customer's name has 200).
MAX_SUBJECT_REF = {"external_ref": 100, "name": 200, "phone": 200}


@dataclass(frozen=True)
class SubjectRef:
    by: str  # external_ref | phone | name
    value: str


@dataclass(frozen=True)
class EventDraft:
    type: str
    customer: SubjectRef | None
    project: SubjectRef | None
    occurred_at: datetime  # aware, UTC
    attributes: dict[str, Any]
    external_id: str
    actor: str | None
    note: str | None


class MappingError(ValueError):
    """A submission the mapping cannot turn into events. `problems` holds (answer key or
    spec place, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{place}: {reason}" for place, reason in problems))


def _unique(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


def apply_mapping(spec: FormSpec, submission: Submission, *, received_at: datetime) -> list[EventDraft]:
    """The events one submission records, in the order of `spec.events` (those whose `when`
    holds). Raises `MappingError` listing every problem."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be an aware datetime")
    m = _Mapper(submission.answers)
    occurred_at = m.time(spec.occurred_at, submission, received_at)
    subjects = {"customer": m.subject(spec.customer, "customer"), "project": m.subject(spec.project, "project")}
    actor = m.text(spec.actor, "actor", limit=MAX_ACTOR, what="an event's actor")
    if actor is not None and spec.actor is not None and (reserved := reserved_actor(actor)):
        m.fail(spec.actor.answer or "actor", reserved)  # a form's submitter is anyone with its link
        actor = None
    note = m.text(spec.note, "note", limit=MAX_NOTE, what="an event's note")

    drafts = []
    for index, event in enumerate(spec.events):
        if event.when is not None and not m.holds(event.when):
            continue
        et = m.event_type(event.type, spec.event_types)
        if et is None:
            continue
        attributes = {}
        for name, source in event.attributes.items():
            value = m.attribute(source, et, et.attributes[name], f"events[{index}].attributes.{name}")
            if value is not _MISSING:
                attributes[name] = value
        refs = {}
        for name, presence in (("customer", et.customer), ("project", et.project)):
            ref = subjects[name] if presence != "forbidden" else None
            if presence == "required" and ref is None and name in m.optional_missing:
                m.fail(f"events[{index}]", f"a {et.name} event needs a {name}, and the answer naming it is missing")
            refs[name] = ref
        if occurred_at is not None:
            drafts.append(
                EventDraft(
                    type=et.name,
                    customer=refs["customer"],
                    project=refs["project"],
                    occurred_at=occurred_at,
                    attributes=attributes,
                    external_id=f"{submission.delivery_id}#{index}",
                    actor=actor,
                    note=note,
                )
            )
    if m.problems:
        raise MappingError(_unique(m.problems))
    return drafts


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


class _Refused:
    def __repr__(self) -> str:
        return "<refused>"


# An answer that holds what no column keeps, already reported: it is no value, and not
# missing either (that would be a second, wrong problem).
_REFUSED: Any = _Refused()


class _Mapper:
    """Reads answers for one submission, collecting problems instead of stopping."""

    def __init__(self, answers: Mapping[str, Any]):
        self.answers = answers
        self.problems: list[tuple[str, str]] = []
        self.optional_missing: set[str] = set()  # subjects left out, as their spec allows

    def fail(self, place: str, reason: str) -> None:
        self.problems.append((place, reason))

    def answer(self, key: str) -> Any:
        """The answer under `key`: `_MISSING` if empty, `_REFUSED` (and a problem) if it holds
        a text no column keeps (a NUL). Every answer is read here, so such a text reaches no
        draft whatever the answer maps to: PostgreSQL keeps no U+0000 in a text or JSON column
        (a 500 that lost the delivery)."""
        value = self.answers.get(key)
        unstorable = next(unstorable_texts(value), None)
        if unstorable is not None:
            self.fail(key, f"answer {key!r} {unstorable[1]}")
            return _REFUSED
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "" or value == [] or value == {}:
            return _MISSING
        return value

    def value(self, source: Source) -> Any:
        """The source's value (mapped), `_MISSING` for a missing answer without default, or
        `_MISSING` after noting a problem."""
        if source.answer is None:
            return source.value
        raw = self.answer(source.answer)
        if raw is _REFUSED:
            return _MISSING
        if raw is _MISSING:
            return source.default if source.default is not None else _MISSING
        if source.map is None:
            return raw
        if isinstance(raw, list):
            mapped = [self._mapped(source, item) for item in raw]
            return _MISSING if _MISSING in mapped else mapped
        return self._mapped(source, raw)

    def _mapped(self, source: Source, raw: Any) -> Any:
        assert source.map is not None and source.answer is not None
        key = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
        key = key.strip()
        if key in source.map:
            return source.map[key]
        known = ", ".join(source.map)
        self.fail(source.answer, f"answer {source.answer!r} is {quoted(key)}, which the value map does not know (known: {known})")
        return _MISSING

    def attribute(self, source: Source, et: EventType, spec: AttributeSpec, place: str) -> Any:
        value = self.value(source)
        if value is _MISSING:
            if source.answer is not None and spec.required and self.answer(source.answer) is _MISSING:
                self.fail(source.answer, f"answer {source.answer!r} is missing, and a {et.name} event requires {spec.name}")
            return _MISSING
        value = _coerce(spec, value)
        reason = attribute_problem(spec, value)
        if reason:
            where = source.answer or place
            self.fail(where, f"answer {source.answer!r} is {quoted(value)}, and {et.name}.{spec.name} {reason}" if source.answer else f"{spec.name} {reason}")
            return _MISSING
        return value

    def event_type(self, source: Source, event_types: Mapping[str, EventType]) -> EventType | None:
        name = self.value(source)
        if name is _MISSING:
            if source.answer is not None and self.answer(source.answer) is _MISSING:
                self.fail(source.answer, f"answer {source.answer!r} is missing, and it names the event type")
            return None
        if isinstance(name, list):
            self.fail(source.answer or "type", f"answer {source.answer!r} holds several values; an event type needs one")
            return None
        return event_types.get(name)

    def subject(self, source: SubjectSource | None, name: str) -> SubjectRef | None:
        if source is None:
            return None
        raw = self.answer(source.answer)
        if raw is _REFUSED:
            return None
        if raw is _MISSING:
            if source.optional:
                self.optional_missing.add(name)
            else:
                self.fail(source.answer, f"answer {source.answer!r} is missing")
            return None
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            self.fail(source.answer, f"answer {source.answer!r} is not a text")
            return None
        limit = MAX_SUBJECT_REF.get(source.by, 200)
        return SubjectRef(source.by, str(raw)) if self.fits(str(raw), source.answer, limit, f"a {name}'s {source.by}") else None

    def text(self, source: Source | None, place: str, *, limit: int, what: str) -> str | None:
        """A note or actor: a text (a number is written as one) of at most `limit` characters."""
        if source is None:
            return None
        value = self.value(source)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(source.answer or place, f"answer {source.answer!r} is not a text")
            return None
        return str(value) if self.fits(str(value), source.answer or place, limit, what) else None

    def fits(self, text: str, place: str, limit: int, what: str) -> bool:
        """Whether `text` is within the limit POST /v1/events applies to `what`; a problem if not."""
        if len(text) <= limit:
            return True
        self.fail(place, f"{quoted(text)} is longer than {limit} characters, the most {what} can have")
        return False

    def holds(self, when: When) -> bool:
        raw = self.answer(when.answer)
        items = raw if isinstance(raw, list) else [raw]
        return any(_same(item, v) for item in items for v in when.values)

    def time(self, source: TimeSource, submission: Submission, received_at: datetime) -> datetime | None:
        if source.kind == "received":
            return received_at.astimezone(timezone.utc)
        if source.kind == "submitted":
            if submission.submitted_at is None or isinstance(submission.submitted_at, Unreadable):
                why = "the payload carries no submission time" if submission.submitted_at is None else f"the payload's submission time: {submission.submitted_at.problem}"
                self.fail("occurred_at", f'{why}; map occurred_at to an answer or to "received"')
                return None
            return submission.submitted_at.astimezone(timezone.utc)
        assert source.answer is not None and source.format is not None
        raw = self.answer(source.answer)
        if raw is _REFUSED:
            return None
        if raw is _MISSING:
            self.fail(source.answer, f"answer {source.answer!r} is missing")
            return None
        try:
            instant = _read_time(raw, source.format, source.zone)
        except _SkippedTime:
            self.fail(source.answer, f"answer {source.answer!r} is {quoted(raw)}, a local time that {source.zone} skips (the clocks went forward)")
            return None
        if instant is None:
            self.fail(source.answer, f"answer {source.answer!r} is {quoted(raw)}, which is not a {_FORMAT_NAMES[source.format]}")
        return instant


_FORMAT_NAMES = {
    "iso": "ISO 8601 time (with an offset, or a timezone in the mapping)",
    "date": "date like 2026-11-20",
    "us_date": "date like 11/20/2026",
    "us_datetime": "time like 11/20/2026 14:42:17",
    "unix_s": "unix time in seconds",
    "unix_ms": "unix time in milliseconds",
}


class _SkippedTime(ValueError):
    """A local time that does not exist in the mapping's zone (a daylight-saving gap)."""


def _read_time(raw: Any, fmt: str, zone: tzinfo | None) -> datetime | None:
    """The instant an answer names, in UTC; None if it is not in `fmt`. _SkippedTime for a
    local time the zone skips: zoneinfo would quietly take it for an hour later or earlier."""
    try:
        if fmt in ("unix_s", "unix_ms"):
            if isinstance(raw, str) and re.fullmatch(r"\d{1,16}(\.\d+)?", raw):
                raw = float(raw)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                return None
            return datetime.fromtimestamp(raw / 1000 if fmt == "unix_ms" else raw, tz=timezone.utc)
        if not isinstance(raw, str):
            return None
        if fmt == "iso":
            parsed = datetime.fromisoformat(raw)
        else:
            parsed = datetime.strptime(raw, LOCAL_TIME_FORMATS[fmt])
    except (ValueError, OverflowError, OSError):
        return None
    local = parsed.tzinfo is None
    if local:
        if zone is None:
            return None
        parsed = parsed.replace(tzinfo=zone)
    try:
        instant = parsed.astimezone(timezone.utc)
    except OverflowError:
        return None
    if local and instant.astimezone(zone).replace(tzinfo=None) != parsed.replace(tzinfo=None):
        raise _SkippedTime(raw)
    return instant


def _coerce(spec: AttributeSpec, value: Any) -> Any:
    """The small conversions a form's texts need to fit an attribute's type."""
    if spec.type == "enum_list" and isinstance(value, str):
        return [value]
    if spec.type == "number" and isinstance(value, str):
        number = number_in_text(value.strip())  # a form's answer may keep its field's spaces
        return value if number is None else number
    if spec.type == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _same(answer: Any, expected: Any) -> bool:
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected
    if isinstance(answer, str) and isinstance(expected, str):
        return answer.strip() == expected.strip()
    return bool(answer == expected)
