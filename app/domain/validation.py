"""Checking an event against the rulebook's catalogue before anything is stored, and the
range of instants the service accepts anywhere."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from app.domain.rulebook import Rulebook, attribute_problem, stored_value
from app.domain.texts import text_problem


# Nothing in this business happened before 1970, and an instant in the 22nd century is a
# typo or a probe: the same bounds hold for every instant a request carries.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)


# What json.loads raises, beside its syntax errors, for an integer of more digits than
# Python converts (sys.get_int_max_str_digits(), 4,300), said as a reason. One wording for
# every reader of a request's JSON (a single body, a batch, a form's delivery).
TOO_MANY_DIGITS = "a number of more than 4,300 digits"


def too_many_digits(exc: ValueError) -> bool:
    return "integer string conversion" in str(exc)


def instant_problem(value: datetime) -> str | None:
    """Why an aware instant is out of the accepted range, or None."""
    if value < EARLIEST:
        return "must not be before 1970-01-01T00:00:00Z"
    if value >= LATEST:
        return "must be before 2100-01-01T00:00:00Z"
    return None


# A number as a CSV cell or a form's answer writes it: ASCII digits, an optional sign,
# point and exponent. Python's own int() and float() also take "1_000", full-width
# "１２３" and other scripts' digits, and surrounding spaces: a typo or a pasted figure would
# have been read as a number the file never said (docs/import.md: "350000 or 12.5,
# written without thousands separators").
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number_in_text(text: str) -> int | float | None:
    """The number `text` writes (an int where it is a whole number: exact when written as
    one, and "12.0" is 12 below 2**53), or None where it writes none."""
    if not _NUMBER.fullmatch(text):
        return None
    if text.lstrip("+-").isdigit():
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (4300), as "1e999" is past a float's range
            return None
    number = float(text)
    if not math.isfinite(number):  # "1e999"
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


# What Rapport writes itself as an actor or a source: the service ("system"), a key that
# named no one ("key:<name>"), a form's deliveries ("form:<form_id>"). A caller who could
# write them could pass its events off as another key's, the service's, or a form's (and
# take a form's delivery ids before the form's own deliveries came: a hunt's find).
FORM_PREFIX = "form:"  # a form's deliveries: their events' source, and their actor unless mapped
RESERVED_PREFIXES = ("key:", FORM_PREFIX)


# The longest actor the events table keeps (what X-Actor, a form's mapping and an import
# may name).
MAX_ACTOR = 100


def actor_problem(actor: str) -> str | None:
    """Why `actor` cannot be recorded as a person's id, or None: too long, holding a control
    character (a NUL, which PostgreSQL refuses), or one Rapport records itself."""
    if len(actor) > MAX_ACTOR:
        return f"at most {MAX_ACTOR} characters"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in actor):
        return "must not contain control characters"
    return text_problem(actor, nul=False) or reserved_actor(actor)  # a lone surrogate: bytes that were not UTF-8


def reserved_actor(actor: str) -> str | None:
    """Why `actor` cannot be sent as a person's id, or None."""
    folded = actor.strip().casefold()
    if folded == "system" or folded.startswith(RESERVED_PREFIXES):
        return "system, key:… and form:… are the actors Rapport records itself: send the person's own id"
    return None


def reserved_source(source: str) -> str | None:
    """Why an API write cannot carry `source`, or None."""
    if source.startswith(FORM_PREFIX):
        return "form:… is the source of a form's own deliveries (POST /v1/hooks/forms/…); choose another"
    return None


@dataclass(frozen=True)
class FieldProblem:
    field: str  # a path in the request body, e.g. "attributes.reception"
    reason: str


class EventRejected(ValueError):
    def __init__(self, problems: list[FieldProblem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))


def with_defaults(rulebook: Rulebook, event_type: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """`attributes` with the defaults of those the type's catalogue gives one and that were
    left out, as `check_event` fills them; nothing is checked (an unknown type: as given)."""
    et = rulebook.event_types.get(event_type)
    filled = {} if et is None else {name: spec.default for name, spec in et.attributes.items() if spec.default is not None and name not in attributes}
    return {**attributes, **filled}


def check_event(
    rulebook: Rulebook,
    event_type: str,
    attributes: Mapping[str, Any],
    *,
    customer_kind: str | None,
    has_customer: bool,
    has_project: bool,
    customer_field: str = "customer_id",
    project_field: str = "project_id",
) -> dict[str, Any]:
    """Validate type, scope and attributes; return the attributes with defaults filled.

    `customer_kind` is the kind of the referenced customer (None when there is none or it
    was not found — the caller reports unknown references itself). The fields are the ones
    the caller named its subjects by (`customer_ref` for an ERP's code): a problem names
    what was sent, not a field the request never had."""
    et = rulebook.event_types.get(event_type)
    if et is None:
        raise EventRejected([FieldProblem("type", f"unknown event type {event_type!r}; see GET /v1/rulebook")])
    problems: list[FieldProblem] = []
    for fld, has, presence, what in ((customer_field, has_customer, et.customer, "project"), (project_field, has_project, et.project, "customer")):
        if presence == "required" and not has:
            problems.append(FieldProblem(fld, f"required for a {event_type} event"))
        elif presence == "forbidden" and has:
            problems.append(FieldProblem(fld, f"a {event_type} event is about a {what} only; remove {fld}"))
    if et.customer_kind and customer_kind and customer_kind != et.customer_kind:
        problems.append(FieldProblem(customer_field, f"a {event_type} event needs an {et.customer_kind}, and this customer is an {customer_kind}"))

    out: dict[str, Any] = {}
    for name, value in attributes.items():
        spec = et.attributes.get(name)
        if spec is None:
            known = ", ".join(et.attributes) or "none"
            problems.append(FieldProblem(f"attributes.{name}", f"unknown attribute for {event_type} (known: {known})"))
            continue
        reason = attribute_problem(spec, value)
        if reason:
            problems.append(FieldProblem(f"attributes.{name}", reason))
        else:
            out[name] = stored_value(spec, value)
    for name, spec in et.attributes.items():
        if name not in attributes and spec.required:
            problems.append(FieldProblem(f"attributes.{name}", f"required for a {event_type} event"))
    if problems:
        raise EventRejected(problems)
    return with_defaults(rulebook, event_type, out)
