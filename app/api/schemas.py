"""Request and response bodies. Separate from the ORM models; unknown fields are refused."""

from __future__ import annotations

import re
import unicodedata
from decimal import ROUND_HALF_UP, Decimal
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WrapValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.db.types import MAX_ID
from app.domain.rulebook import MAX_NUMBER
from app.domain.texts import unstorable_texts
from app.domain.validation import instant_problem, reserved_source
from app.errors import MAX_LISTED


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store U+0000 in text or JSON (a 500 there, silently kept on SQLite).
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


NoNul = AfterValidator(_no_nul)


def _not_reserved_source(value: str) -> str:
    reason = reserved_source(value)
    if reason:
        raise ValueError(reason)
    return value


def _no_control(value: str) -> str:
    # A ref is also a URL path segment: one with a line break could be stored but never
    # found again by /by-ref/{external_ref}, whose path cannot match it. The C1 block too
    # (U+0085 is a line break to Python; 0x80-0x9F is what a Windows-1252 code read as
    # Latin-1 leaves), and U+2028/2029 (a hunt stored them).
    if any(unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029" for ch in value):
        raise ValueError("must not contain control characters (a line break, a tab…)")
    # Invisible: "\u200bC-1" and "C-1" were two codes that look the same (zero-width and
    # direction marks, a BOM).
    if any(unicodedata.category(ch) == "Cf" for ch in value):
        raise ValueError("must not contain invisible format characters (a zero-width space, a direction mark…)")
    return value


def _visible(value: str) -> str:
    # A name of only a zero-width space or a BOM was stored where one of spaces was refused.
    if all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc", "Zs", "Zl", "Zp") for ch in value):
        raise ValueError("must hold a visible character")
    return value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul, AfterValidator(_visible)]
Ref = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), NoNul, AfterValidator(_no_control)]
# A rep, a region, a tag: with a visible character, as a name (one of a lone zero-width
# space was stored, looked empty, and was a rep of its own to the list's filter: a hunt's find).
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), NoNul, AfterValidator(_visible)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50), NoNul, AfterValidator(_visible)]
MAX_TAGS = 20


def _distinct_tags(tags: list[str]) -> list[str]:
    # A tag is there or not: ["b", "a", "a"] is ["b", "a"], or a PUT that repeated one would
    # store it twice and count as a change (a hunt's find). The limit counts what is kept: a
    # list of 25 times one tag is one tag.
    distinct = list(dict.fromkeys(tags))
    if len(distinct) > MAX_TAGS:
        raise PydanticCustomError("too_many_tags", f"at most {MAX_TAGS} distinct tags, not {len(distinct)}")
    return distinct


Tags = Annotated[list[Tag], AfterValidator(_distinct_tags), Field(json_schema_extra={"description": f"at most {MAX_TAGS} distinct tags; one given twice is kept once"})]
ContactValue = Annotated[str, StringConstraints(max_length=200), NoNul]
QueryText = Annotated[str, StringConstraints(strip_whitespace=True), NoNul]  # a text filter in a query string: stored texts are trimmed
PathRef = Annotated[
    str,
    Path(min_length=1, max_length=100, pattern=r"^\S(.*\S)?$", description="the ERP's code, without surrounding spaces (percent-encode a `/` in it)"),
    NoNul,
    AfterValidator(_no_control),  # as a body's Ref: a code stored here must be one an event can name
]


def _no_bool(value: Any) -> Any:
    # pydantic takes JSON's true as the number 1: `"customer_id": true` named customer 1.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "must be a number, not true or false")
    return value


NotBool = BeforeValidator(_no_bool)

def _in_digits(pattern: str, code: str, what: str) -> BeforeValidator:
    """A number written as text must be its digits and nothing else: pydantic reads "1_0" as
    10, and "+1", " 1", "001" and "1.0" as 1. `PATCH /v1/customers/1_0` changed customer 10,
    `POST /v1/events/1_0/retract` retracted event 10, and heat=3_0 filtered 30 (hunts' finds)."""
    digits = re.compile(pattern)
    reason = f"must be {what} written in digits only (no sign, space, underscore, point or leading zero)"

    def check(value: Any) -> Any:
        if isinstance(value, str) and not digits.fullmatch(value):
            raise PydanticCustomError(code, reason)
        return value

    return BeforeValidator(check)


# An id or a page's limit (a path, a query, a form tool's value), and a filter's number (0 too).
InDigits = _in_digits(r"[1-9][0-9]*", "id_digits", "a positive integer")
WholeInDigits = _in_digits(r"0|[1-9][0-9]*", "whole_digits", "a whole number")

# Ids are signed 64-bit integers in both databases (`MAX_ID`): a larger one is refused here.
# The bounds before the validator: after it, pydantic writes them into the JSON schema as
# raw `gt`/`le`, which are no JSON Schema (clients and validators dropped them).
Id = Annotated[int, Field(gt=0, le=MAX_ID), NotBool, InDigits]
PathId = Annotated[int, Path(gt=0, le=MAX_ID), InDigits]
MAX_PAGE = 200
# Every list's page size: one bound, so a caller learns one number.
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items per page, 1 to {MAX_PAGE}"), InDigits]
QueryId = Annotated[int | None, Query(gt=0, le=MAX_ID), InDigits]


def _cents(value: float | None) -> float | None:
    # Stored as NUMERIC(16, 2): rounded here, so a re-sent amount compares equal to the stored
    # one; half up on the number as written (round() of the float took 1.005 to 1.0).
    # `+ 0.0` makes -0.0 (which passes `ge=0`) the 0.0 a read of the stored value gives.
    return None if value is None else float(Decimal(repr(value)).quantize(_CENT, ROUND_HALF_UP)) + 0.0


_CENT = Decimal("0.01")
# A JSON number, finite: pydantic's lax float read "1_000" and " 5 " as numbers, and refused
# NaN (which Python's JSON reads) as "less than or equal to 10000000000000".
Amount = Annotated[float, Field(ge=0, le=MAX_NUMBER, strict=True, allow_inf_nan=False), NotBool, AfterValidator(_cents)]

# What a date or an instant must look like as text: pydantic also reads a number (or a
# string of digits) as Unix time, and a date from a date-time at midnight.
_DAY_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_INSTANT_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


DAY_REASON = "must be a date as YYYY-MM-DD, such as 2026-11-20"
INSTANT_REASON = "must be an ISO 8601 date and time with an offset, such as 2026-11-20T14:30:00+08:00"


def _day_text(value: Any) -> Any:
    if isinstance(value, date) or (isinstance(value, str) and _DAY_TEXT.match(value)):
        return value
    raise PydanticCustomError("day_text", DAY_REASON)


def _instant_text(value: Any) -> Any:
    if isinstance(value, datetime) or (isinstance(value, str) and _INSTANT_TEXT.match(value)):
        return value
    raise PydanticCustomError("instant_text", INSTANT_REASON)


Day = Annotated[date, BeforeValidator(_day_text)]


def _accepted_instant(value: datetime) -> datetime:
    problem = instant_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# An aware instant from 1970 up to 2100 (the bounds of every instant a request carries).
Instant = Annotated[AwareDatetime, BeforeValidator(_instant_text), AfterValidator(_accepted_instant)]

_FRACTION = re.compile(r"\d\d:\d\d:\d\d[.,](\d+)")


def _up_to_a_microsecond(value: Any, handler: Any) -> Any:
    # Instants are kept to the microsecond, and pydantic cuts finer digits off: a bound of
    # ….0000001 (.NET writes seven digits) was read as ….000000, and `from` then let in an
    # event before it, `to` left out one before it. A bound is rounded up instead, which
    # keeps both comparisons true to what was written.
    parsed = handler(value)
    match = _FRACTION.search(value) if isinstance(value, str) else None
    if match and match.group(1)[6:].strip("0"):
        parsed += timedelta(microseconds=1)
    return parsed


Bound = Annotated[Instant, WrapValidator(_up_to_a_microsecond)]  # a `from` / `to` filter


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        """A body with more unknown fields than a problem lists is refused in one error.
        pydantic makes one error per unknown field, on the event loop: 100,000 of them in a
        1 MiB body held every request for 2 s and 50-100 MB (a hunt's find)."""
        if isinstance(data, dict) and len(data) > MAX_LISTED:  # no body takes so many fields
            unknown = [name for name in data if name not in cls.model_fields]
            if len(unknown) > MAX_LISTED:
                first = ", ".join(repr(name[:40]) for name in unknown[:5])
                raise ValueError(f"{len(unknown)} fields this does not take (the first: {first}); it takes: {', '.join(cls.model_fields)}")
        return data


class Contact(Strict):
    person: ContactValue | None = None
    phone: ContactValue | None = None
    email: ContactValue | None = None
    address: ContactValue | None = None


class CustomerIn(Strict):
    name: Name
    kind: Literal["owner", "installer"]
    external_ref: Ref | None = Field(default=None, description="the ERP's code; unique")
    region: Short | None = None
    rep: Short | None = Field(default=None, description="the responsible sales rep")
    contact: Contact | None = None
    tags: Tags = Field(default_factory=list)


class CustomerPut(Strict):
    """The whole customer as the ERP knows it: omitted optional fields are cleared."""

    name: Name
    kind: Literal["owner", "installer"] = Field(description="cannot change once stored")
    region: Short | None = None
    rep: Short | None = None
    contact: Contact | None = None
    tags: Tags = Field(default_factory=list)


class Patch(Strict):
    """A partial update: omitted fields stay as they are; `null` clears an optional field,
    and is refused for a field that cannot be empty (those named here, in any patch)."""

    @field_validator("name", "tags", "enabled", "spec", "url", "event_types", "status", mode="before", check_fields=False)
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; omit the field to leave it unchanged")
        return value


class CustomerPatch(Patch):
    """Descriptive fields only; `kind` cannot change (past events depend on it)."""

    name: Name | None = None
    external_ref: Ref | None = None
    region: Short | None = None
    rep: Short | None = None
    contact: Contact | None = None
    tags: Tags | None = Field(default=None)


class ProjectIn(Strict):
    name: Name
    owner_id: Id = Field(description="an `owner` customer")
    external_ref: Ref | None = None
    region: Short | None = None
    amount: Amount | None = Field(default=None, description="expected order value (rounded to cents)")
    expected_close: Day | None = None
    rep: Short | None = None
    tags: Tags = Field(default_factory=list)


class ProjectPut(Strict):
    """The whole project as the ERP knows it: omitted optional fields are cleared. The owner
    is named by id or by its external_ref, and cannot change once stored."""

    name: Name
    owner_id: Id | None = None
    owner_ref: Ref | None = None
    region: Short | None = None
    amount: Amount | None = None
    expected_close: Day | None = None
    rep: Short | None = None
    tags: Tags = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_owner(self) -> "ProjectPut":
        if (self.owner_id is None) == (self.owner_ref is None):
            raise PydanticCustomError("owner", "give exactly one of owner_id and owner_ref")
        return self


class ProjectPatch(Patch):
    """Descriptive fields only; the owner cannot change (its grades depend on the project)."""

    name: Name | None = None
    external_ref: Ref | None = None
    region: Short | None = None
    amount: Amount | None = None
    expected_close: Day | None = None
    rep: Short | None = None
    tags: Tags | None = Field(default=None)


MAX_ATTRIBUTES = 20
MAX_ATTRIBUTE_NAME = 64
# No attribute type nests (a value is a scalar, or an enum_list's list of texts), so this
# only bounds what a wrong value may be: one 255 deep broke pydantic's serializer, which
# fingerprints a keyed POST before the catalogue's check, and was a 500 (a hunt's find).
MAX_ATTRIBUTE_DEPTH = 32


def _attribute_names(value: dict[str, Any]) -> dict[str, Any]:
    # Checked on the whole object, so that the error does not echo a name of any length,
    # nor one that cannot be written as UTF-8.
    if any(len(name) > MAX_ATTRIBUTE_NAME for name in value):
        raise ValueError(f"attribute names are at most {MAX_ATTRIBUTE_NAME} characters")
    # JSON reads a lone surrogate escape (\\ud800, half an emoji) into a string no column or
    # answer can hold, which was a 500: pydantic checks the strings of typed fields, not
    # these. (A NUL in an attribute's text is named by the catalogue's check, with its name.)
    if next(unstorable_texts(value, nul=False), None) is not None:
        raise ValueError("attribute names and texts must be Unicode: one holds a lone surrogate escape such as \\ud800")
    if not _flat(value) and _deeper_than(value, MAX_ATTRIBUTE_DEPTH):
        raise ValueError(f"attribute values nest at most {MAX_ATTRIBUTE_DEPTH} deep (no attribute type nests at all)")
    return value


def _flat(attributes: dict[str, Any]) -> bool:
    """Whether every value is a scalar or a list of scalars, as every valid event's are: the
    walk of `_deeper_than` is then not needed (a fifth of the cost of these checks)."""
    return not any(isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)) for v in attributes.values())


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` holds lists or objects more than `limit` inside each other (not
    recursive: a body may nest as deep as the JSON reader reads)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            pending.extend((inner, depth + 1) for inner in (item.values() if isinstance(item, dict) else item))
    return False


Attributes = Annotated[dict[str, Any], Field(max_length=MAX_ATTRIBUTES), AfterValidator(_attribute_names)]


class EventIn(Strict):
    type: Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]
    customer_id: Id | None = None
    project_id: Id | None = None
    customer_ref: Ref | None = Field(default=None, description="the customer's external_ref, instead of customer_id")
    project_ref: Ref | None = Field(default=None, description="the project's external_ref, instead of project_id")
    occurred_at: Instant = Field(description="when it happened, ISO 8601 with an offset; from 1970, at most a day ahead")
    attributes: Attributes = Field(default_factory=dict, description=f"validated against the type's catalogue; at most {MAX_ATTRIBUTES} names")
    source: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$"), AfterValidator(_not_reserved_source)] = Field(
        default="api", description="api, mobile, erp…; not form:…, the source of a form's own deliveries"
    )
    external_id: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul] | None = Field(
        default=None, description="unique per source: the same source + external_id is recorded once"
    )
    note: Annotated[str, StringConstraints(max_length=2000), NoNul] | None = None


class RetractIn(Strict):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000), NoNul]


class LabelOut(BaseModel):
    zh: str
    en: str


class RelatedOut(BaseModel):
    subject: str
    id: int
    level: int | None = None


class CriterionOut(BaseModel):
    id: str
    label: LabelOut
    step: int = Field(description="the level, or the tier's percent, this criterion belongs to")
    met: bool
    evidence: list[int] = Field(description="ids of the events that meet (or partly meet) it")
    related: list[RelatedOut] = Field(default_factory=list, description="linked subjects whose state it read")


class LevelGapOut(BaseModel):
    level: int
    missing: list[str]
    need: int = Field(description="how many of the missing criteria must still be met")


class HeatGapOut(BaseModel):
    percent: int
    missing: list[str]
    need: int


class RelationshipOut(BaseModel):
    level: int
    label: LabelOut
    criteria: list[CriterionOut]
    next: LevelGapOut | None
    since: datetime
    rulebook_version: str


class HeatOut(BaseModel):
    percent: int
    tier: str = Field(description="cold, 30, 50, 70, 90, won or lost")
    label: LabelOut
    closed: bool
    stage: str | None
    criteria: list[CriterionOut]
    next: HeatGapOut | None
    since: datetime
    rulebook_version: str


class CustomerOut(BaseModel):
    id: int
    name: str
    kind: str
    external_ref: str | None
    region: str | None
    rep: str | None
    contact: dict[str, Any]
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime
    relationship: RelationshipOut


class ParticipantOut(BaseModel):
    id: int
    name: str
    level: int
    with_our_product: bool | None = None


class ProjectOut(BaseModel):
    id: int
    name: str
    owner_id: int
    external_ref: str | None
    region: str | None
    amount: float | None
    expected_close: date | None
    rep: str | None
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime
    heat: HeatOut
    bidders: list[ParticipantOut]
    winner: ParticipantOut | None


class RetractionOut(BaseModel):
    reason: str
    actor: str | None
    at: datetime


class EffectOut(BaseModel):
    subject: Literal["customer", "project"]
    id: int
    metric: Literal["relationship_level", "deal_heat"]
    old: int
    new: int


class EventOut(BaseModel):
    id: int
    type: str
    customer_id: int | None
    project_id: int | None
    occurred_at: datetime
    recorded_at: datetime
    attributes: dict[str, Any]
    source: str
    external_id: str | None
    actor: str | None
    note: str | None
    retraction: RetractionOut | None


class EventRecordedOut(EventOut):
    effects: list[EffectOut] = Field(description="the grade changes this request caused (empty for a duplicate)")


class HistoryItemOut(BaseModel):
    id: int
    metric: str
    old: int
    new: int
    rulebook_version: str
    evidence: dict[str, Any]
    trigger: dict[str, Any]
    actor: str | None
    at: datetime


class CustomerPage(BaseModel):
    items: list[CustomerOut]
    next_cursor: str | None


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class HistoryPage(BaseModel):
    items: list[HistoryItemOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


class ItemProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]]


class BatchItemOut(BaseModel):
    index: int = Field(description="the item's position in the array (or among the non-empty NDJSON lines), from 0")
    status: Literal["created", "duplicate", "rejected"]
    id: int | None = Field(default=None, description="the stored event (for a duplicate: the one stored before)")
    problem: ItemProblemOut | None = None


class BatchOut(BaseModel):
    created: int
    duplicate: int
    rejected: int
    results: list[BatchItemOut] = Field(description="one per item, in input order")
    effects: list[EffectOut] = Field(description="the grade changes the batch caused, one per subject")


# --- form mappings and their submissions ------------------------------------------------------

FormId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
AuthScheme = Literal["standard_webhooks", "typeform", "x_signature", "jiandaoyun", "url_token"]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class FormIn(Strict):
    form_id: FormId = Field(description="the slug in the hook URL: lower-case letters, digits, - and _")
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000), NoNul] | None = Field(default=None, description="what the form is and what it maps, for the next admin")
    auth_scheme: AuthScheme = Field(description="how deliveries are authenticated (url_token is the weaker option, for tools that sign nothing)")
    secret: Secret | None = Field(default=None, description="the signing secret the tool uses; omit to have one generated")
    enabled: bool = True
    spec: dict[str, Any] = Field(description="how a submission becomes events (see openapi.md, 'Form mappings')")


class FormPatch(Patch):
    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000), NoNul] | None = None
    enabled: bool | None = None
    spec: dict[str, Any] | None = None


class RotateSecretIn(Strict):
    auth_scheme: AuthScheme | None = Field(default=None, description="switch to another scheme at the same time (the old secret then stops at once)")
    secret: Secret | None = Field(default=None, description="the new secret; omit to have one generated")
    grace_hours: int = Field(default=24, ge=0, le=168, description="how long the old secret keeps working")


class FormOut(BaseModel):
    id: int
    form_id: str
    name: str
    description: str | None
    tool: str
    auth_scheme: str
    hook_path: str = Field(description="where the tool must POST (for url_token, add ?token=<secret>)")
    enabled: bool
    spec: dict[str, Any]
    previous_secret_until: datetime | None = Field(description="until when the rotated-out secret still works")
    version: int
    created_at: datetime
    updated_at: datetime


class FormSecretOut(FormOut):
    secret: str = Field(description="shown only here: configure it in the form tool")
    hook_url_path: str = Field(description="the hook path as the tool must call it (with the token, for url_token)")


class SubmissionOut(BaseModel):
    id: int
    form_id: str
    delivery_id: str = Field(description="the tool's own submission id (or sha256 of the body when it has none)")
    status: Literal["processed", "inbox", "dismissed"]
    received_at: datetime
    problems: list[dict[str, str]] = Field(description="why it could not be mapped (in the inbox)")
    event_ids: list[int]
    attempts: int
    resolved_at: datetime | None
    resolution: str | None
    actor: str | None


class SubmissionDetailOut(SubmissionOut):
    content_type: str
    body: str = Field(description="the body as received, as text in the charset it declares (UTF-8 if none, or one Rapport does not read); unreadable bytes replaced")


class HookOut(BaseModel):
    outcome: Literal["processed", "inbox", "duplicate"]
    submission: SubmissionOut
    effects: list[EffectOut]


class SubmissionPage(BaseModel):
    items: list[SubmissionOut]
    next_cursor: str | None


class FormPage(BaseModel):
    items: list[FormOut]
    next_cursor: str | None


class DismissIn(Strict):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000), NoNul]
