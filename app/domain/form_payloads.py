"""Reading a form tool's webhook body into a flat set of answers.

`parse_payload(tool, content_type, body)` returns a `Submission`: the tool's own id for the
delivery (to deduplicate redeliveries), the submission time if the payload holds one, and
`answers`, a flat dict from answer key to value. A mapping (app.domain.forms) names answers
by these keys. What each tool's keys are (the payload shapes are documented with the
fixtures in tests/fixtures/webhooks/README.md):

- `typeform`: each answer under its field `ref` and its field `id`; hidden fields as
  `hidden.<name>`. Values by answer type: text, email, phone number, url, date (a
  `YYYY-MM-DD` string), number, boolean; a choice as its label, choices as a list of labels.
- `jotform`: the `rawRequest` answers under their own key (`q3_customerName`) and under the
  name after `qN_` (`customerName`). A date `{month, day, year}` becomes `YYYY-MM-DD`, a phone
  `{full}` its string; other compound answers also give `key.part` entries.
- `jinshuju`: every key of `entry` (`field_1`, `x_field_1`, `creator_name`, …).
- `tencent_wj`: each question under its id (`q-1-R7mX`, `custom-arg-01`) and, where it has
  one, its title (`cust`). A radio answer is the checked option's text, a checkbox answer the
  list of checked texts, a text question its text.
- `google_forms` (an Apps Script forwarding a `form_response`): each answer under the
  item's title and its item id.
- `google_forms_namedvalues` (an Apps Script forwarding `e.namedValues`): each question
  title with its one-element list unwrapped, `Timestamp` included as the sheet shows it.
- `jiandaoyun`: every key of `data` (`_widget_…`, `creator.name`, …), plus `op`.
- `json` (a custom forwarder): every leaf of the object under its dotted path (`a.b.0.c`).

In every tool a nested object also gives its leaves as `key.part` entries, and a list of
plain values is kept whole under its own key (a multiple choice) as well as item by item,
down to `MAX_ANSWER_DEPTH` levels.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl

from app.domain.texts import unstorable_texts
from app.domain.validation import TOO_MANY_DIGITS

TOOLS = (
    "typeform",
    "jotform",
    "jinshuju",
    "tencent_wj",
    "google_forms",
    "google_forms_namedvalues",
    "jiandaoyun",
    "json",
)
# An event's external_id is the delivery id plus "#<index>", and is stored in 200 characters.
MAX_DELIVERY_ID = 190
# Tencent Survey writes its times without an offset, in China's time.
TENCENT_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")
_JOTFORM_QUESTION = re.compile(r"^q\d+_(.+)$")


@dataclass(frozen=True)
class Unreadable:
    """A submission time the body carries but that cannot be read: a problem only for a
    mapping that takes `occurred_at` from it (`"submitted"`). Refusing the body for it kept
    a submission whose mapping reads another time in the inbox for good (a hunt's find)."""

    problem: str


@dataclass(frozen=True)
class Submission:
    delivery_id: str
    submitted_at: datetime | Unreadable | None
    answers: dict[str, Any]


class PayloadError(ValueError):
    """The body is not what the tool sends; `str()` says why."""


def parse_payload(tool: str, content_type: str, body: bytes, *, headers: Mapping[str, str] | None = None) -> Submission:
    """Read a delivery of `tool` (one of `TOOLS`); raises `PayloadError`."""
    reader = _READERS.get(tool)
    if reader is None:
        raise ValueError(f"unknown form tool {tool!r}; known: {', '.join(TOOLS)}")
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    try:
        submission = reader(content_type, body, lowered)
    except RecursionError as exc:
        raise PayloadError("the body is nested too deeply") from exc
    if not submission.delivery_id.strip():
        raise PayloadError("the delivery id is empty")
    if len(submission.delivery_id) > MAX_DELIVERY_ID:
        raise PayloadError(f"the delivery id is longer than {MAX_DELIVERY_ID} characters")
    if "\x00" in submission.delivery_id:  # it is stored, and PostgreSQL keeps no U+0000 in text
        raise PayloadError("the delivery id must not contain the NUL character (U+0000)")
    return submission


# --- one reader per tool ---------------------------------------------------------------


def _typeform(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    response = _member(top, "form_response", dict)
    answers: dict[str, Any] = {}
    raw_answers = response.get("answers") or []
    if not isinstance(raw_answers, list):
        raise PayloadError("form_response.answers is not a list")
    for item in raw_answers:
        if not isinstance(item, dict) or not isinstance(item.get("field"), dict):
            raise PayloadError("an answer has no field")
        value = _typeform_value(item)
        for key in (item["field"].get("ref"), item["field"].get("id")):
            if isinstance(key, str) and key:
                _put(answers, key, value)
    hidden = response.get("hidden") or {}
    if isinstance(hidden, dict):
        for name, value in hidden.items():
            _put(answers, f"hidden.{name}", value)
    return Submission(_id_text(top, "event_id"), _time_of(_instant, response.get("submitted_at"), "form_response.submitted_at"), answers)


def _typeform_value(item: dict[str, Any]) -> Any:
    kind = item.get("type")
    if kind == "choice":
        choice = _member_or_empty(item, "choice", dict, "a choice answer's choice is not an object")
        return choice.get("label", choice.get("other"))
    if kind == "choices":
        choices = _member_or_empty(item, "choices", dict, "a choices answer's choices is not an object")
        labels = list(_member_or_empty(choices, "labels", list, "a choices answer's labels is not a list"))
        return labels + [choices["other"]] if choices.get("other") else labels
    return item.get(kind) if isinstance(kind, str) else None


def _jotform(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    fields = _form_fields(content_type, body)
    raw = fields.get("rawRequest")
    if raw is None:
        raise PayloadError("no rawRequest field")
    request = _json_text(raw, "rawRequest", lambda exc: f"at character {exc.pos}")
    if not isinstance(request, dict):
        raise PayloadError("rawRequest is not a JSON object")
    answers: dict[str, Any] = {}
    for key, value in request.items():
        value = _jotform_value(value)
        _put(answers, key, value)
        short = _JOTFORM_QUESTION.match(key)
        if short:
            _put(answers, short.group(1), value)
    if "submissionID" not in fields:
        raise PayloadError("no submissionID field")
    return Submission(fields["submissionID"], _unix_ms(request.get("submitDate")), answers)


def _jotform_value(value: Any) -> Any:
    if isinstance(value, dict):
        if {"month", "day", "year"} <= value.keys():
            try:
                return f"{int(value['year']):04d}-{int(value['month']):02d}-{int(value['day']):02d}"
            except (TypeError, ValueError):
                return value
        if set(value) == {"full"}:
            return value["full"]
    return value


def _jinshuju(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    entry = _member(top, "entry", dict)
    delivery_id = f"{_id_text(top, 'form')}:{_id_text(entry, 'serial_number', place='entry.serial_number')}"
    answers: dict[str, Any] = {}
    for key, value in entry.items():
        _put(answers, key, value)
    return Submission(delivery_id, _time_of(_instant, entry.get("created_at"), "entry.created_at"), answers)


def _tencent_wj(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    payload = _member(top, "payload", dict)
    delivery_id = f"{_id_text(payload, 'survey_id', place='payload.survey_id')}:{_id_text(payload, 'answer_id', place='payload.answer_id')}"
    pages = payload.get("answer") or []
    if not isinstance(pages, list):
        raise PayloadError("payload.answer is not a list of pages")
    titled: list[tuple[str, Any]] = []
    answers: dict[str, Any] = {}
    for page in pages:
        questions = _member_or_empty(page, "questions", list, "a page's questions is not a list") if isinstance(page, dict) else []
        for question in questions:
            if not isinstance(question, dict) or not isinstance(question.get("id"), str):
                raise PayloadError("a question has no id")
            value = _tencent_value(question)
            _put(answers, question["id"], value)
            if isinstance(question.get("title"), str) and question["title"]:
                titled.append((question["title"], value))
    for title, value in titled:  # an id wins over a title that happens to look like one
        _put(answers, title, value)
    submitted = payload.get("ended_at") or top.get("created_at")
    return Submission(delivery_id, _time_of(_local_time, submitted, "payload.ended_at", TENCENT_TIME), answers)


def _tencent_value(question: dict[str, Any]) -> Any:
    if "options" in question:
        options = _member_or_empty(question, "options", list, "a question's options is not a list")
        checked = [o.get("text") for o in options if isinstance(o, dict) and o.get("checked")]
        if question.get("type") == "radio":
            return checked[0] if checked else None
        return checked
    return question.get("text")


def _google_forms(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    response = _member(top, "form_response", dict)
    raw_answers = response.get("answers") or []
    if not isinstance(raw_answers, list):
        raise PayloadError("form_response.answers is not a list")
    answers: dict[str, Any] = {}
    for item in raw_answers:
        field = item.get("field") if isinstance(item, dict) else None
        if not isinstance(field, dict):
            raise PayloadError("an answer has no field")
        for key in (field.get("title"), field.get("id")):
            if isinstance(key, (str, int)) and not isinstance(key, bool) and str(key):
                _put(answers, str(key), item.get("response"))
    return Submission(_id_text(top, "event_id"), _time_of(_instant, response.get("submitted_at"), "form_response.submitted_at"), answers)


def _google_forms_namedvalues(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    answers: dict[str, Any] = {}
    for title, values in top.items():
        _put(answers, title, values[0] if isinstance(values, list) and len(values) == 1 else values)
    # namedValues carries no id: the same body delivered twice is the same submission.
    return Submission("sha256:" + hashlib.sha256(body).hexdigest(), None, answers)


def _jiandaoyun(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    data = _member(top, "data", dict)
    op = _id_text(top, "op")
    # The id comes from what the signature covers: the record, the operation and its time (a
    # retried push re-sends the same body; each edit of a record is an operation of its own).
    # Not the X-JDY-DeliverId header, which the signature leaves out: a signed push replayed
    # within the timestamp's 5 minutes with another header counted again (a hunt did it).
    op_time = top.get("opTime")
    stamp = f":{op_time}" if isinstance(op_time, (int, str)) and not isinstance(op_time, bool) and str(op_time).strip() else ""
    delivery_id = f"{_id_text(data, '_id', place='data._id')}:{op}{stamp}"
    answers: dict[str, Any] = {"op": op}
    for key, value in data.items():
        _put(answers, key, value)
    return Submission(delivery_id, _unix_ms(top.get("opTime")), answers)


def _generic_json(content_type: str, body: bytes, headers: Mapping[str, str]) -> Submission:
    top = _json_object(content_type, body)
    key = "id" if "id" in top else "submission_id"
    answers: dict[str, Any] = {}
    for name, value in top.items():
        _put(answers, name, value)
    return Submission(_id_text(top, key, place="id (or submission_id)"), _time_of(_instant, top.get("submitted_at"), "submitted_at"), answers)


_READERS: dict[str, Callable[[str, bytes, Mapping[str, str]], Submission]] = {
    "typeform": _typeform,
    "jotform": _jotform,
    "jinshuju": _jinshuju,
    "tencent_wj": _tencent_wj,
    "google_forms": _google_forms,
    "google_forms_namedvalues": _google_forms_namedvalues,
    "jiandaoyun": _jiandaoyun,
    "json": _generic_json,
}


# --- bodies ------------------------------------------------------------------------------


# The character sets a body may declare (`charset=` in its Content-Type), by the codec that
# reads them. A body that declares none is UTF-8. GBK and GB2312, which older Chinese systems
# still send, are read as GB18030, which holds both. Before, every body was read as UTF-8,
# and one in another declared charset waited in the inbox for good: a replay read it the
# same way, so it could only be dismissed.
CHARSETS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "utf-16": "utf-16",
    "utf-16le": "utf-16-le",
    "utf-16be": "utf-16-be",
    "gb18030": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "cp936": "gb18030",
}


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type: str, default: str = "utf-8") -> str:
    """The charset a Content-Type declares (its first `charset=`, unquoted), in lower case;
    `default` if it declares none, or `charset=` with no name. Read by hand: the email
    package's reader decodes RFC 2231 names (`charset*=`), and one holding a NUL raised."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or default
    return default


def _decoded(data: bytes, charset: str, what: str = "the body") -> str:
    """`data` read in `charset` (a key of CHARSETS), without a leading byte order mark, which
    Windows tools write and RFC 8259 lets a JSON reader skip; PayloadError naming the charset
    and the first byte it cannot read otherwise."""
    codec = CHARSETS.get(charset)
    if codec is None:
        raise PayloadError(f"{what} is in charset {charset[:40]!r}, which Rapport does not read (it reads UTF-8, UTF-16, and GB18030 with GBK and GB2312)")
    try:
        return data.decode(codec).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} is not {charset.upper()} (byte {exc.start})") from exc


def body_text(content_type: str, body: bytes) -> str:
    """The body as text, in the charset its Content-Type declares (UTF-8 if none)."""
    return _decoded(body, _charset(content_type))


def shown_text(content_type: str, body: bytes) -> str:
    """The body as an admin reads it in the inbox: as `body_text` reads it, and where that
    fails, in its declared charset if Rapport reads it (else UTF-8), each byte that cannot
    be read replaced with U+FFFD."""
    try:
        return body_text(content_type, body)
    except PayloadError:
        return body.decode(CHARSETS.get(_charset(content_type), "utf-8"), "replace")


def _json_object(content_type: str, body: bytes) -> dict[str, Any]:
    media = _media_type(content_type)
    if media != "application/json" and not media.endswith("+json"):
        raise PayloadError(f"expected Content-Type application/json, got {content_type or 'none'!r}")
    data = _json_text(body_text(content_type, body), "the body", lambda exc: f"at line {exc.lineno} column {exc.colno}")
    if not isinstance(data, dict):
        raise PayloadError("the body is not a JSON object")
    return data


def _json_text(text: str, what: str, where: Callable[[json.JSONDecodeError], str]) -> Any:
    """`text` read as JSON, or PayloadError naming what is wrong with `what`: also for what
    json reads but no text column can keep (a lone surrogate escape such as \\ud800, which
    a text box that cut an emoji in half sends) and for an integer over Python's 4,300
    digits. Both were a 500 that lost the delivery; a PayloadError keeps it in the inbox."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc.msg} {where(exc)}") from exc
    except ValueError as exc:  # an integer beyond the interpreter's digit limit
        raise PayloadError(f"{what} holds {TOO_MANY_DIGITS}") from exc
    unstorable = next(unstorable_texts(data, nul=False), None)  # a NUL is the answer's problem, if it is mapped
    if unstorable is not None:
        place, reason = unstorable
        raise PayloadError(f"{what}{f' at {place}' if place else ''}: {reason}")
    return data


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data or urlencoded body; the first of a repeated name."""
    media = _media_type(content_type)
    charset = _charset(content_type)
    if media == "application/x-www-form-urlencoded":
        fields: dict[str, str] = {}
        text = _decoded(body, charset)
        try:  # strict: a percent-escaped byte that is not UTF-8 became U+FFFD, and was stored
            pairs = parse_qsl(text, keep_blank_values=True, encoding=CHARSETS[charset], errors="strict")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"a form field is not {charset.upper()} once its %-escapes are decoded") from exc
        for name, value in pairs:
            fields.setdefault(name, value)
        return fields
    if media != "multipart/form-data":
        raise PayloadError(f"expected Content-Type multipart/form-data, got {content_type or 'none'!r}")
    try:
        return _multipart_fields(content_type, body, charset)
    except PayloadError:
        raise
    except Exception as exc:  # the email package's own failures on odd headers
        # `charset*` with no value in a part's Content-Type raised IndexError inside the
        # email package (a review's find): any failure of its reading is this body's problem.
        raise PayloadError(f"the body is not multipart data Rapport can read ({type(exc).__name__})") from exc


def _multipart_fields(content_type: str, body: bytes, charset: str) -> dict[str, str]:
    # The email package reads MIME multipart (RFC 7578 is MIME); it wants a header block.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("utf-8", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.get_param("boundary"):
        raise PayloadError("the multipart Content-Type has no boundary")
    if message.defects or not message.is_multipart():
        raise PayloadError("the body is not multipart data with the boundary its Content-Type names")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        part_name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(part_name, str) or not isinstance(payload, bytes):
            raise PayloadError("a multipart part has no form-data name")
        fields.setdefault(part_name, _decoded(payload, _charset(str(part.get("content-type", "")), charset), f"the part {part_name[:40]!r}"))
    return fields


# --- values ------------------------------------------------------------------------------


def _member(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise PayloadError(f"no {key} object" if kind is dict else f"no {key}")
    return value


def _member_or_empty(data: dict[str, Any], key: str, kind: type, reason: str) -> Any:
    """`data[key]` if it is a `kind`; an empty one if it is absent or empty; PayloadError
    saying `reason` if it is something else (a tool's answer of another type was a 500
    that lost the delivery; this keeps it in the inbox)."""
    value = data.get(key)
    if not value:
        return kind()
    if not isinstance(value, kind):
        raise PayloadError(reason)
    return value


def _id_text(data: dict[str, Any], key: str, *, place: str | None = None) -> str:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise PayloadError(f"no {place or key} (the tool's id for this submission)")
    return str(value)


# How deep `key.part` entries go. Every level's key repeats the levels above it, so a
# chain nested d deep cost on the order of d² characters: 650 chains 800 deep, a 1 MiB
# body, took half a gigabyte and 4 s (a hunt's find). A mapping names answers a few levels
# down; what lies deeper is still there, whole, in the entry at this depth.
MAX_ANSWER_DEPTH = 16


def _put(answers: dict[str, Any], key: str, value: Any, depth: int = 0) -> None:
    """Adds an answer unless the key is taken; nested objects also give `key.part`
    entries, lists `key.0` entries, down to `MAX_ANSWER_DEPTH` levels."""
    answers.setdefault(key, value)
    if depth >= MAX_ANSWER_DEPTH:
        return
    if isinstance(value, dict):
        for part, inner in value.items():
            _put(answers, f"{key}.{part}", inner, depth + 1)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _put(answers, f"{key}.{index}", inner, depth + 1)


def _time_of(read: Callable[..., datetime | None], *args: Any) -> datetime | Unreadable | None:
    """The submission time `read` takes from `args`, or why it cannot."""
    try:
        return read(*args)
    except PayloadError as exc:
        return Unreadable(str(exc))


def _instant(value: Any, place: str) -> datetime | None:
    """An ISO 8601 instant with its offset; None when absent."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise PayloadError(f"{place} is not an ISO 8601 instant with an offset")
    return parsed


def _local_time(value: Any, place: str, zone: timezone) -> datetime | None:
    """A `YYYY-MM-DD HH:MM:SS` time the tool writes without an offset, in `zone`."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{place} is not a time like 2026-11-20 14:42:17") from exc


# Milliseconds stay under 16 digits until the year 33658; Python reads at most 4,300 digits.
_MAX_MS_DIGITS = 15


def _unix_ms(value: Any) -> datetime | None:
    """Milliseconds since 1970, as a number or digits; None when absent or not that."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_MS_DIGITS:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
