"""Form submissions into event drafts: the example mappings on the vendors' real payloads,
every problem a mapping spec or a submission can have, and the bodies that are refused."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.form_payloads import MAX_ANSWER_DEPTH, Unreadable, shown_text
from app.domain.forms import (
    EventDraft,
    FormSpec,
    FormSpecError,
    MappingError,
    PayloadError,
    SubjectRef,
    Submission,
    apply_mapping,
    parse_form_spec,
    parse_payload,
)
from app.domain.rulebook import Rulebook, load_rulebook

ROOT = Path(__file__).parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
EXAMPLES = ROOT / "examples" / "forms"
JSON = "application/json"
JOTFORM_BOUNDARY = "------------------------Xq7bP2mLk9RtV4sNw8cE3a"
JOTFORM = f"multipart/form-data; boundary={JOTFORM_BOUNDARY}"
RECEIVED = datetime(2026, 11, 20, 6, 42, 20, tzinfo=timezone.utc)
# 2026-11-20 in Shanghai: a date-only answer means local midnight.
VISIT_DAY = datetime(2026, 11, 19, 16, 0, tzinfo=timezone.utc)
CUSTOMER = SubjectRef("name", "上海建工安装有限公司")
NOTE = "王经理介绍了浦东新区医院项目的机电安装分包进度，对我司变频水泵方案感兴趣，约定下周一送样。"
WELCOMING_WITH_MANAGER = {"reception": "welcoming", "with_manager": True}


@cache
def rulebook() -> Rulebook:
    return load_rulebook(None)


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def spec_data(name: str = "typeform-visit-report.json") -> dict[str, Any]:
    return copy.deepcopy(example(name)["spec"])


def visit(external_id: str, *, actor: str | None = None, note: str = NOTE) -> EventDraft:
    return EventDraft(
        type="visit",
        customer=CUSTOMER,
        project=None,
        occurred_at=VISIT_DAY,
        attributes=WELCOMING_WITH_MANAGER,
        external_id=external_id,
        actor=actor,
        note=note,
    )


@dataclass(frozen=True)
class Example:
    mapping: str
    fixture: str
    content_type: str
    expected: list[EventDraft]
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.mapping


EXAMPLE_CASES = [
    Example("typeform-visit-report.json", "typeform-form_response-visit-report.json", JSON,
            [visit("01JD9Q3V6ZK4R2YB7N9TXC5WQE#0", actor="S-0217")]),
    Example("jotform-visit-report.json", "jotform-submission-visit-report.multipart.txt", JOTFORM,
            [visit("6418793025512345678#0")]),
    Example("jinshuju-visit-report.json", "jinshuju-entry-visit-report.json", JSON,
            [visit("Vk3Pq8:128#0", actor="S-0217",
                   note="王经理介绍了浦东新区医院项目的机电安装分包进度。\r\n对我司变频水泵方案感兴趣，约定下周一送样。")]),
    Example("google-forms-visit-report.json", "google-forms-apps-script-form_response-visit-report.json", JSON,
            [visit("2_ABaOnufS2x7Kq0Lm9Vd4Rt1Yw8Pc3Ne6Hb5Gj0Zs7Xa4Qk1Um8Tf2Wy5Io9Lr3Dv6Ce0Bn7Mh#0")]),
    Example("google-forms-namedvalues-visit-report.json", "google-forms-apps-script-namedvalues-visit-report.json", JSON,
            [visit("sha256:588227457b3d861974a960eeb8cc10c8ccee8a2fbaa008282ec17bb0d728b466#0")]),
    Example("jiandaoyun-visit-report.json", "jiandaoyun-data_create-visit-report.json", JSON,
            [visit("673d8f29c1e2a4000b7d3e21:data_create:1795156937305#0")],
            headers={"X-JDY-DeliverId": "3b1f6c2e-8d4a-4f7b-9e0c-5a2d7f1b8c6e"}),
    Example("tencent-wj-promotion-signup.json", "tencent-wj-answer.create-promotion-signup.json", JSON, [
        EventDraft(
            type="rep_accepted",
            customer=CUSTOMER,
            project=None,
            occurred_at=datetime(2026, 11, 20, 6, 42, 17, tzinfo=timezone.utc),
            attributes={},
            external_id="18273645:57#0",
            actor="S-0217",
            note="2026 暖通新品推介会（上海站，12月5日）",
        )
    ]),
]


def submission_of(case: Example) -> Submission:
    return parse_payload(example(case.mapping)["spec"]["tool"], case.content_type, (FIXTURES / case.fixture).read_bytes(), headers=case.headers)


@cache
def parsed_spec(mapping: str) -> FormSpec:
    return parse_form_spec(example(mapping)["spec"], rulebook())


# --- the examples ------------------------------------------------------------------------


@pytest.mark.parametrize("case", EXAMPLE_CASES, ids=str)
def test_each_example_mapping_turns_its_fixture_into_the_expected_events(case: Example) -> None:
    drafts = apply_mapping(parsed_spec(case.mapping), submission_of(case), received_at=RECEIVED)
    assert drafts == case.expected
    assert all(d.occurred_at.utcoffset() is not None for d in drafts)


def test_every_example_file_is_covered_and_is_a_form_body() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(c.mapping for c in EXAMPLE_CASES)
    for case in EXAMPLE_CASES:
        body = example(case.mapping)
        assert set(body) == {"form_id", "name", "description", "auth_scheme", "spec"}


def test_a_promotion_sign_up_without_a_request_for_contact_records_nothing() -> None:
    case = EXAMPLE_CASES[-1]
    submission = submission_of(case)
    answers = {**submission.answers, "q-3-D5eP": "否"}
    assert apply_mapping(parsed_spec(case.mapping), replace(submission, answers=answers), received_at=RECEIVED) == []


def test_a_redelivered_submission_gives_the_same_external_ids() -> None:
    case = EXAMPLE_CASES[0]
    first = apply_mapping(parsed_spec(case.mapping), submission_of(case), received_at=RECEIVED)
    again = apply_mapping(parsed_spec(case.mapping), submission_of(case), received_at=datetime(2026, 11, 21, tzinfo=timezone.utc))
    assert [d.external_id for d in again] == [d.external_id for d in first]


@pytest.mark.parametrize("headers", [{}, {"X-JDY-DeliverId": "3b1f6c2e-8d4a-4f7b-9e0c-5a2d7f1b8c6e"}, {"X-JDY-DeliverId": "other"}])
def test_a_jiandaoyun_push_is_known_by_what_its_signature_covers_not_by_its_deliver_id(headers: dict[str, str]) -> None:
    # The header is not signed: a captured push re-sent with another one was another delivery.
    body = (FIXTURES / "jiandaoyun-data_create-visit-report.json").read_bytes()
    assert parse_payload("jiandaoyun", JSON, body, headers=headers).delivery_id == "673d8f29c1e2a4000b7d3e21:data_create:1795156937305"


def test_each_operation_on_a_jiandaoyun_record_is_a_delivery_of_its_own() -> None:
    body = (FIXTURES / "jiandaoyun-data_create-visit-report.json").read_bytes()
    first, second = (body.replace(b'"op":"data_create"', b'"op":"data_update"').replace(b"1795156937305", stamp) for stamp in (b"1795156999000", b"1795157111000"))
    assert parse_payload("jiandaoyun", JSON, first).delivery_id != parse_payload("jiandaoyun", JSON, second).delivery_id
    assert parse_payload("jiandaoyun", JSON, body.replace(b'"opTime":1795156937305,', b"")).delivery_id == "673d8f29c1e2a4000b7d3e21:data_create"


def test_a_jiandaoyun_update_push_records_nothing() -> None:
    body = (FIXTURES / "jiandaoyun-data_create-visit-report.json").read_bytes().replace(b'"op":"data_create"', b'"op":"data_update"')
    submission = parse_payload("jiandaoyun", JSON, body)
    assert apply_mapping(parsed_spec("jiandaoyun-visit-report.json"), submission, received_at=RECEIVED) == []


# --- reading payloads --------------------------------------------------------------------


def multipart(fields: dict[str, str], boundary: str = "b0undary") -> tuple[str, bytes]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n' for name, value in fields.items()]
    return f"multipart/form-data; boundary={boundary}", ("".join(parts) + f"--{boundary}--\r\n").encode()


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
def test_jotform_answers_come_by_question_key_and_by_name(ensure_ascii: bool) -> None:
    raw = json.dumps({"q3_customerName": "上海建工", "q4_visitDate": {"month": "1", "day": "5", "year": "2026"},
                      "q8_phoneNumber": {"full": "13912345678"}, "q11_name": {"first": "伟", "last": "王"},
                      "slug": "submit/1"}, ensure_ascii=ensure_ascii).replace("/", "\\/")
    content_type, body = multipart({"formID": "1", "submissionID": "42", "rawRequest": raw})
    answers = parse_payload("jotform", content_type, body).answers
    assert answers["q3_customerName"] == answers["customerName"] == "上海建工"
    assert answers["visitDate"] == "2026-01-05"
    assert answers["phoneNumber"] == "13912345678"
    assert answers["name.last"] == "王"
    assert answers["slug"] == "submit/1"


def test_jotform_may_also_arrive_urlencoded() -> None:
    body = "submissionID=42&rawRequest=%7B%22q3_customerName%22%3A%22ACME%22%7D".encode()
    submission = parse_payload("jotform", "application/x-www-form-urlencoded", body)
    assert (submission.delivery_id, submission.answers["customerName"]) == ("42", "ACME")


@pytest.mark.parametrize(
    "tool, fixture, key, value",
    [
        ("typeform", "typeform-form_response-visit-report.json", "Rc4Hv9Ge0QjU", "热情"),
        ("typeform", "typeform-form_response-visit-report.json", "contact_phone", "+8613912345678"),
        ("google_forms", "google-forms-apps-script-form_response-visit-report.json", "1765023348", "热情"),
        ("tencent_wj", "tencent-wj-answer.create-promotion-signup.json", "custom-arg-01", "上海建工安装有限公司"),
        ("tencent_wj", "tencent-wj-answer.create-promotion-signup.json", "q-2-H9cL", "2人"),
        ("jinshuju", "jinshuju-entry-visit-report.json", "info_region.city", "上海市"),
        ("jiandaoyun", "jiandaoyun-data_create-visit-report.json", "creator.name", "李明"),
        ("google_forms_namedvalues", "google-forms-apps-script-namedvalues-visit-report.json", "Timestamp", "11/20/2026 14:42:17"),
    ],
)
def test_answers_are_found_under_each_documented_key(tool: str, fixture: str, key: str, value: Any) -> None:
    assert parse_payload(tool, JSON, (FIXTURES / fixture).read_bytes()).answers[key] == value


def test_typeform_choices_and_generic_json_lists_keep_the_whole_list() -> None:
    body = json.dumps({"event_id": "e1", "form_response": {"answers": [
        {"type": "choices", "choices": {"labels": ["样品", "报价表"]}, "field": {"id": "f1", "ref": "items"}}]}}).encode()
    assert parse_payload("typeform", JSON, body).answers["items"] == ["样品", "报价表"]
    answers = parse_payload("json", JSON, b'{"id": 7, "a": {"b": [{"c": 1}], "tags": ["x", "y"]}}').answers
    assert (answers["a.b.0.c"], answers["a.tags"], answers["a.tags.1"]) == (1, ["x", "y"], "y")


def test_the_generic_json_tool_takes_submission_id_and_submitted_at() -> None:
    submission = parse_payload("json", "application/json; charset=utf-8", b'{"submission_id": "s-1", "submitted_at": "2026-11-20T14:42:17+08:00"}')
    assert submission.delivery_id == "s-1"
    assert submission.submitted_at == datetime(2026, 11, 20, 6, 42, 17, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "tool, content_type, body, reason",
    [
        ("typeform", JSON, b'{"event_id": "x", ', "not valid JSON"),
        ("json", JSON, b'{"id": "\xff"}', "not UTF-8"),
        ("json", JSON, b"[1, 2]", "not a JSON object"),
        ("json", JSON, b'{"name": "no id"}', "no id (or submission_id)"),
        ("json", JSON, b'{"id": true}', "no id (or submission_id)"),
        ("json", JSON, b'{"id": "' + b"x" * 191 + b'"}', "longer than 190"),
        ("json", JSON, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("json", "text/plain", b'{"id": 1}', "expected Content-Type application/json"),
        ("typeform", JSON, b'{"form_response": {"answers": []}}', "no event_id"),
        ("typeform", JSON, b'{"event_id": "x"}', "no form_response object"),
        ("jinshuju", JSON, b'{"form": "Vk3Pq8", "entry": {"field_1": "x"}}', "no entry.serial_number"),
        ("google_forms", JSON, b'{"form_response": {"answers": []}}', "no event_id"),
        ("jiandaoyun", JSON, b'{"op": "data_create", "data": {}}', "no data._id"),
        ("jotform", "multipart/form-data", b"--x\r\n\r\n--x--", "has no boundary"),
        ("jotform", "multipart/form-data; boundary=other", multipart({"submissionID": "1"})[1], "the boundary its Content-Type names"),
        ("jotform", JSON, b"{}", "expected Content-Type multipart/form-data"),
        ("jotform", *multipart({"submissionID": "1"}), "no rawRequest"),
        ("jotform", *multipart({"submissionID": "1", "rawRequest": "{oops"}), "rawRequest is not valid JSON"),
        ("jotform", *multipart({"rawRequest": "{}"}), "no submissionID"),
        ("jotform", *multipart({"submissionID": "", "rawRequest": "{}"}), "delivery id is empty"),
    ],
)
def test_a_body_the_tool_would_not_send_is_refused_with_a_reason(tool: str, content_type: str, body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        parse_payload(tool, content_type, body)


@pytest.mark.parametrize(
    "tool, body, reason",
    [
        ("json", b'{"id": 1, "submitted_at": "yesterday", "code": "P-1", "stage": "bidding"}', "submitted_at is not an ISO 8601 instant"),
        ("json", b'{"id": 1, "submitted_at": "2026-11-20 14:42:17", "code": "P-1", "stage": "bidding"}', "submitted_at is not an ISO 8601 instant"),
        (
            "tencent_wj",
            b'{"payload": {"survey_id": 1, "answer_id": 2, "ended_at": "11/20/2026", "answer": [{"questions": [{"id": "code", "text": "P-1"}, {"id": "stage", "text": "bidding"}]}]}}',
            "payload.ended_at is not a time",
        ),
    ],
)
def test_a_submission_time_that_cannot_be_read_matters_only_to_a_mapping_that_takes_it(tool: str, body: bytes, reason: str) -> None:
    """A hunt's find: the body was refused for it, so a submission whose mapping takes its time
    from `received` (or an answer) waited in the inbox for good, replays included."""
    submission = parse_payload(tool, JSON, body)
    assert submission.submitted_at == Unreadable(submission.submitted_at.problem) and reason in submission.submitted_at.problem
    data = {"tool": tool, "project": {"by": "external_ref", "answer": "code"}, "occurred_at": "received",
            "events": [{"type": "stage_changed", "attributes": {"stage": {"answer": "stage"}}}]}
    (draft,) = apply_mapping(parse_form_spec(data, rulebook()), submission, received_at=RECEIVED)
    assert draft.occurred_at == RECEIVED
    with pytest.raises(MappingError, match=re.escape(f"the payload's submission time: {reason}")):
        apply_mapping(parse_form_spec({**data, "occurred_at": "submitted"}, rulebook()), submission, received_at=RECEIVED)


def test_an_unknown_tool_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown form tool"):
        parse_payload("wufoo", JSON, b"{}")


@settings(max_examples=200)
@given(tool=st.sampled_from(["typeform", "jotform", "jinshuju", "tencent_wj", "google_forms", "google_forms_namedvalues", "jiandaoyun", "json"]),
       body=st.one_of(st.binary(max_size=200), st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                                             max_leaves=10).map(lambda v: json.dumps(v).encode())))
def test_any_body_is_read_or_refused_with_a_payload_error(tool: str, body: bytes) -> None:
    content_type = JOTFORM if tool == "jotform" else JSON
    try:
        parse_payload(tool, content_type, body)
    except PayloadError:
        pass



def _places(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in decoded JSON, as the keys and indexes that lead to it."""
    inner = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    return [path, *(p for key, value in inner for p in _places(value, (*path, key)))]


def _replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(data)
    holder = out
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return out


JSON_FIXTURES = [(case.mapping, case.fixture) for case in EXAMPLE_CASES if case.content_type == JSON]
ODD_VALUES = [None, True, 5, -1.5, "x", "", [], [5], {}, {"x": 5}, "9" * 5000]


@settings(max_examples=300)
@given(case=st.sampled_from(JSON_FIXTURES), pick=st.integers(min_value=0), odd=st.sampled_from(ODD_VALUES))
def test_a_real_payload_with_any_one_value_of_another_type_is_read_or_refused_with_a_payload_error(case: tuple[str, str], pick: int, odd: Any) -> None:
    # A tool's own shape with one thing in it of another type (a choice that is a string, a
    # page's questions that are a number): a TypeError or AttributeError here was a 500 that
    # lost an authentic delivery (a hunt's find), where a PayloadError keeps it in the inbox.
    mapping, fixture = case
    data = json.loads((FIXTURES / fixture).read_bytes())
    places = _places(data)
    body = json.dumps(_replaced(data, places[pick % len(places)], odd), ensure_ascii=False).encode()
    try:
        parse_payload(example(mapping)["spec"]["tool"], JSON, body)
    except PayloadError:
        pass


@pytest.mark.parametrize(
    "tool, edit, reason",
    [
        ("typeform", lambda d: d["form_response"]["answers"][2].update(choice="热情"), "a choice answer's choice is not an object"),
        ("tencent_wj", lambda d: d["payload"]["answer"][0].update(questions=5), "a page's questions is not a list"),
        ("tencent_wj", lambda d: d["payload"]["answer"][0]["questions"][0].update(options=5), "a question's options is not a list"),
    ],
)
def test_an_answer_of_another_shape_is_refused_with_a_reason(tool: str, edit: Callable[[dict[str, Any]], None], reason: str) -> None:
    fixture = next(f for m, f in JSON_FIXTURES if example(m)["spec"]["tool"] == tool)
    data = json.loads((FIXTURES / fixture).read_bytes())
    edit(data)
    with pytest.raises(PayloadError, match=re.escape(reason)):
        parse_payload(tool, JSON, json.dumps(data).encode())


def test_nested_answers_give_dotted_keys_down_to_a_bounded_depth() -> None:
    # Each level's key repeats the ones above it: without a bound, 650 chains 800 deep (a
    # 1 MiB body) made half a gigabyte of keys.
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    answers = parse_payload("json", JSON, json.dumps({"id": 1, "a": deep}).encode()).answers
    bottom = "a" + ".0" * MAX_ANSWER_DEPTH
    assert bottom in answers and bottom + ".0" not in answers
    assert json.dumps(answers[bottom]).count("[") == 40 - MAX_ANSWER_DEPTH  # the rest, whole
    assert len(answers) == MAX_ANSWER_DEPTH + 2  # "id", "a" and one key a level


def test_a_chain_of_lists_a_megabyte_long_is_read_in_linear_space() -> None:
    chain = "[" * 800 + "]" * 800
    body = ('{"id": 1, ' + ", ".join(f'"f{i}": {chain}' for i in range(650)) + "}").encode()
    answers = parse_payload("json", JSON, body).answers
    assert sum(len(key) for key in answers) < 2 * len(body)


def test_a_urlencoded_field_that_is_not_utf8_is_refused_not_replaced() -> None:
    # %C4%E3 is 你 in GBK: decoded as UTF-8 with replacement, it was stored as two U+FFFD.
    body = b"submissionID=42&rawRequest=%7B%22q10_notes%22%3A%22%C4%E3%22%7D"
    with pytest.raises(PayloadError, match="a form field is not UTF-8"):
        parse_payload("jotform", "application/x-www-form-urlencoded", body)


NOTE = {"id": "d1", "name": "上海建工安装有限公司", "note": "客户要求下周送样"}


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json; charset=gbk", json.dumps(NOTE, ensure_ascii=False).encode("gbk")),
        ('application/json; charset="GB2312"', json.dumps(NOTE, ensure_ascii=False).encode("gb2312")),
        ("application/json;charset=GB18030", json.dumps(NOTE, ensure_ascii=False).encode("gb18030")),
        ("application/json; charset=utf-16", json.dumps(NOTE, ensure_ascii=False).encode("utf-16")),
        ("application/json; charset=utf-16be", json.dumps(NOTE, ensure_ascii=False).encode("utf-16-be")),
        (JSON, b"\xef\xbb\xbf" + json.dumps(NOTE, ensure_ascii=False).encode()),  # a byte order mark
        ("application/json; charset=", json.dumps(NOTE, ensure_ascii=False).encode()),  # no name: UTF-8
    ],
)
def test_a_json_body_is_read_in_the_charset_it_declares(content_type: str, body: bytes) -> None:
    assert parse_payload("json", content_type, body).answers == NOTE


def test_form_fields_are_read_in_the_charset_declared_for_the_body_or_the_part() -> None:
    raw = json.dumps({"q10_notes": "你好"}, ensure_ascii=False)
    urlencoded = urlencode({"submissionID": "42", "rawRequest": raw}, encoding="gbk").encode()  # 你 is %C4%E3
    assert parse_payload("jotform", "application/x-www-form-urlencoded; charset=gbk", urlencoded).answers["notes"] == "你好"
    part = raw.encode("gb18030")
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"submissionID\"\r\n\r\n42\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"rawRequest\"\r\nContent-Type: application/json; charset=gb18030\r\n\r\n" + part + b"\r\n--b--\r\n"
    )
    assert parse_payload("jotform", "multipart/form-data; boundary=b", body).answers["notes"] == "你好"
    with pytest.raises(PayloadError, match="the part 'rawRequest' is in charset 'bogus'"):
        parse_payload("jotform", "multipart/form-data; boundary=b", body.replace(b"charset=gb18030", b"charset=bogus"))
    # The email package raised IndexError reading this part's header (a review's find).
    with pytest.raises(PayloadError, match=re.escape("the body is not multipart data Rapport can read (IndexError)")):
        parse_payload("jotform", "multipart/form-data; boundary=b", body.replace(b"charset=gb18030", b"charset*"))


@pytest.mark.parametrize(
    "content_type, body, reason",
    [
        ("application/json; charset=latin-1", b'{"id": 1}', "the body is in charset 'latin-1', which Rapport does not read"),
        ("application/json; charset=utf-8\x00" + "x" * 100, b'{"id": 1}', "charset 'utf-8\\x00xxx"),  # shown escaped, and cut
        (JSON, "客户".encode("gbk"), "the body is not UTF-8 (byte 0)"),  # GBK sent without saying so
        ("application/json; charset=gbk", b'{"id": "\x81"}', "the body is not GBK (byte 8)"),
    ],
)
def test_a_body_in_a_charset_rapport_does_not_read_or_not_in_the_one_it_declares_is_refused(content_type: str, body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        parse_payload("json", content_type, body)


def test_the_inbox_shows_a_body_in_its_declared_charset_where_it_can() -> None:
    assert shown_text("application/json; charset=gbk", "{客户".encode("gbk")) == "{客户"
    assert shown_text("application/json; charset=gbk", b"\xff" + "客户".encode("gbk")) == "\ufffd客户"  # the unreadable byte replaced
    assert shown_text("application/json; charset=latin-1", "客户".encode()) == "客户"  # unknown: as UTF-8


def test_a_submission_time_of_more_digits_than_python_reads_is_no_time() -> None:
    body = urlencode({"submissionID": "42", "rawRequest": json.dumps({"submitDate": "9" * 5000})}).encode()
    assert parse_payload("jotform", "application/x-www-form-urlencoded", body).submitted_at is None


# --- the spec ----------------------------------------------------------------------------


def edited(edit: Callable[[dict[str, Any]], None], name: str = "typeform-visit-report.json") -> dict[str, Any]:
    data = spec_data(name)
    edit(data)
    return data


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets (or with value None, deletes) a dotted path; digits index lists."""
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is None:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return edit


@pytest.mark.parametrize(
    "edit, place, reason",
    [
        (_set("tool", "wufoo"), "tool", "unknown tool 'wufoo'"),
        (_set("colour", "red"), "colour", "unknown key"),
        (_set("events", []), "events", "must be a non-empty list"),
        (_set("events.0.type", "dinner"), "events[0].type", "unknown event type 'dinner'"),
        (_set("events.0.type", 3), "events[0].type", "must be an event type name"),
        (_set("events.0.type", {"answer": "kind"}), "events[0].type.map", "is required"),
        (_set("events.0.type", {"answer": "kind", "map": {"x": "dinner"}}), "events[0].type.map.x", "unknown event type 'dinner'"),
        (_set("events.0.type", {"answer": "kind", "map": {"x": ["visit"]}}), "events[0].type.map.x", "unknown event type ['visit']"),
        (_set("events.0.attributes.mood", {"value": "good"}), "events[0].attributes.mood", "event type 'visit' has no attribute 'mood'"),
        (_set("events.0.attributes.reception.map.热情", "warm"), "events[0].attributes.reception.map.热情", "must be one of welcoming, neutral, rejecting"),
        (_set("events.0.attributes.with_manager", {"answer": "m", "map": {"是": "yes"}}), "events[0].attributes.with_manager.map.是", "must be true or false"),
        (_set("events.0.attributes.with_manager", {"value": "yes"}), "events[0].attributes.with_manager.value", "must be true or false"),
        (_set("events.0.attributes.with_manager", {"answer": "m", "default": 1}), "events[0].attributes.with_manager.default", "must be true or false"),
        (_set("events.0.attributes.with_manager", {"answer": "m", "value": True}), "events[0].attributes.with_manager", "takes no answer, map or default"),
        (_set("events.0.attributes.with_manager", {"map": {"是": True}}), "events[0].attributes.with_manager.answer", "is required"),
        (_set("events.0.attributes.reception.map", {}), "events[0].attributes.reception.map", "must be a non-empty object"),
        (_set("events.0.when", {"answer": "x", "in": []}), "events[0].when.in", "must be a non-empty list"),
        (_set("customer", None), "customer", "is required: events[0] can be a visit event, which needs a customer"),
        (_set("customer.by", "email"), "customer.by", "must be one of external_ref, phone, name"),
        (_set("customer.optional", "yes"), "customer.optional", "must be true or false"),
        (_set("actor", {"answer": "a", "value": "b"}), "actor", "needs exactly one of answer / value"),
        (_set("occurred_at", "yesterday"), "occurred_at", 'must be "received", "submitted"'),
        (_set("occurred_at.format", "dd.mm.yyyy"), "occurred_at.format", "must be one of iso, date"),
        (_set("occurred_at.timezone", "Mars/Olympus"), "occurred_at.timezone", "must be an offset like +08:00"),
        (_set("occurred_at.timezone", None), "occurred_at.timezone", "is required: a date answer has no offset"),
        (_set("occurred_at", {"answer": "t", "format": "unix_s", "timezone": "+08:00"}), "occurred_at.timezone", "takes no timezone"),
    ],
)
def test_each_spec_problem_is_reported_at_its_place(edit: Callable[[dict[str, Any]], None], place: str, reason: str) -> None:
    with pytest.raises(FormSpecError) as caught:
        parse_form_spec(edited(edit), rulebook())
    assert any(p == place and reason in r for p, r in caught.value.problems), caught.value.problems


def test_a_spec_with_several_problems_reports_them_all_at_once() -> None:
    data = spec_data()
    data["tool"] = "wufoo"
    del data["customer"]
    data["events"][0]["attributes"]["reception"]["map"]["热情"] = "warm"
    data["events"].append({"type": "dinner"})
    with pytest.raises(FormSpecError) as caught:
        parse_form_spec(data, rulebook())
    assert [place for place, _ in caught.value.problems] == [
        "tool", "events[0].attributes.reception.map.热情", "customer", "events[1].type",
    ]


@pytest.mark.parametrize("data", [None, [], "visit", {"events": "x"}])
def test_a_spec_that_is_not_an_object_of_the_right_shape_is_refused(data: Any) -> None:
    with pytest.raises(FormSpecError):
        parse_form_spec(data, rulebook())


def test_a_project_only_event_needs_a_project_but_no_customer() -> None:
    data = {"tool": "json", "project": {"by": "external_ref", "answer": "code"}, "occurred_at": "received",
            "events": [{"type": "stage_changed", "attributes": {"stage": {"answer": "stage"}}}]}
    spec = parse_form_spec(data, rulebook())
    drafts = apply_mapping(spec, Submission("d", None, {"code": "P-1", "stage": "bidding"}), received_at=RECEIVED)
    assert drafts == [EventDraft("stage_changed", None, SubjectRef("external_ref", "P-1"), RECEIVED, {"stage": "bidding"}, "d#0", None, None)]


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["tool", "customer", "events", "type", "attributes", "answer", "map", "value", "by", "occurred_at", "format", "when", "in", "reception"]) | st.text(max_size=4),
                        inner, max_size=5),
                    max_leaves=25))
def test_any_json_is_parsed_or_refused_with_a_form_spec_error(data: Any) -> None:
    try:
        parse_form_spec(data, rulebook())
    except FormSpecError:
        pass


# --- applying it -------------------------------------------------------------------------


def typeform_answers(**changes: Any) -> dict[str, Any]:
    answers = dict(submission_of(EXAMPLE_CASES[0]).answers)
    for key, value in changes.items():
        if value is None:
            answers.pop(key, None)
        else:
            answers[key] = value
    return answers


def apply_typeform(answers: dict[str, Any], spec: dict[str, Any] | None = None) -> list[EventDraft]:
    parsed = parse_form_spec(spec or spec_data(), rulebook())
    return apply_mapping(parsed, Submission("e1", None, answers), received_at=RECEIVED)


def test_every_problem_of_a_submission_is_reported_at_once() -> None:
    answers = typeform_answers(customer_name=None, reception="很好", visit_date="20.11.2026")
    with pytest.raises(MappingError) as caught:
        apply_typeform(answers)
    assert caught.value.problems == [
        ("visit_date", "answer 'visit_date' is '20.11.2026', which is not a date like 2026-11-20"),
        ("customer_name", "answer 'customer_name' is missing"),
        ("reception", "answer 'reception' is '很好', which the value map does not know (known: 热情, 一般, 冷淡)"),
    ]


def test_a_missing_required_attribute_is_a_problem_and_an_optional_one_is_left_out() -> None:
    with pytest.raises(MappingError) as caught:
        apply_typeform(typeform_answers(reception=" "))
    assert caught.value.problems == [("reception", "answer 'reception' is missing, and a visit event requires reception")]
    [draft] = apply_typeform(typeform_answers(with_manager=None))
    assert draft.attributes == {"reception": "welcoming"}


def test_a_default_stands_in_for_a_missing_answer_but_not_for_an_unknown_one() -> None:
    spec = edited(_set("events.0.attributes.reception.default", "neutral"))
    assert apply_typeform(typeform_answers(reception=None), spec)[0].attributes["reception"] == "neutral"
    with pytest.raises(MappingError, match="does not know"):
        apply_typeform(typeform_answers(reception="很好"), spec)


def test_an_answer_without_a_map_must_already_be_a_valid_value() -> None:
    spec = edited(_set("events.0.attributes.reception", {"answer": "reception"}))
    with pytest.raises(MappingError) as caught:
        apply_typeform(typeform_answers(), spec)
    assert caught.value.problems == [("reception", "answer 'reception' is '热情', and visit.reception must be one of welcoming, neutral, rejecting")]


def test_the_event_type_can_come_from_an_answer_and_an_event_only_when_an_answer_says_so() -> None:
    data = {
        "tool": "json",
        "customer": {"by": "phone", "answer": "phone"},
        "occurred_at": {"answer": "at", "format": "unix_ms"},
        "events": [
            {"type": {"answer": "outcome", "map": {"介绍": "company_introduced", "询价": "inquiry_received"}}},
            {"type": "materials_sent", "when": {"answer": "sent", "in": ["样品", "报价表"]},
             "attributes": {"items": {"answer": "sent", "map": {"样品": "samples", "报价表": "price_list"}}}},
        ],
    }
    spec = parse_form_spec(data, rulebook())
    answers = {"phone": 13912345678, "at": "1795156937305", "outcome": "询价", "sent": ["报价表", "样品"]}
    drafts = apply_mapping(spec, Submission("d", None, answers), received_at=RECEIVED)
    assert [(d.type, d.attributes, d.external_id) for d in drafts] == [
        ("inquiry_received", {}, "d#0"),
        ("materials_sent", {"items": ["price_list", "samples"]}, "d#1"),
    ]
    assert drafts[0].customer == SubjectRef("phone", "13912345678")
    assert drafts[0].occurred_at == datetime(2026, 11, 20, 6, 42, 17, 305000, tzinfo=timezone.utc)
    only_first = apply_mapping(spec, Submission("d", None, {**answers, "sent": None}), received_at=RECEIVED)
    assert [d.external_id for d in only_first] == ["d#0"]
    with pytest.raises(MappingError, match="answer 'outcome' is missing, and it names the event type"):
        apply_mapping(spec, Submission("d", None, {**answers, "outcome": None}), received_at=RECEIVED)


@pytest.mark.parametrize(
    "occurred_at, answer, expected",
    [
        ({"format": "iso"}, "2026-11-20T14:42:17+08:00", datetime(2026, 11, 20, 6, 42, 17, tzinfo=timezone.utc)),
        ({"format": "iso"}, "2026-11-19T16:00:00.000Z", datetime(2026, 11, 19, 16, tzinfo=timezone.utc)),
        ({"format": "iso", "timezone": "+08:00"}, "2026-11-20 14:42", datetime(2026, 11, 20, 6, 42, tzinfo=timezone.utc)),
        ({"format": "date", "timezone": "Asia/Shanghai"}, "2026-11-20", VISIT_DAY),
        ({"format": "date", "timezone": "-05:00"}, "2026-11-20", datetime(2026, 11, 20, 5, tzinfo=timezone.utc)),
        ({"format": "us_date", "timezone": "+08:00"}, "11/20/2026", VISIT_DAY),
        ({"format": "us_datetime", "timezone": "+08:00"}, "11/20/2026 14:42:17", datetime(2026, 11, 20, 6, 42, 17, tzinfo=timezone.utc)),
        ({"format": "unix_s"}, 1795156937, datetime(2026, 11, 20, 6, 42, 17, tzinfo=timezone.utc)),
        ({"format": "unix_ms"}, "1795156937305", datetime(2026, 11, 20, 6, 42, 17, 305000, tzinfo=timezone.utc)),
    ],
)
def test_occurred_at_reads_each_time_format(occurred_at: dict[str, Any], answer: Any, expected: datetime) -> None:
    spec = edited(_set("occurred_at", {"answer": "visit_date", **occurred_at}))
    [draft] = apply_typeform(typeform_answers(visit_date=answer), spec)
    assert draft.occurred_at == expected


@pytest.mark.parametrize(
    "occurred_at, answer",
    [
        ({"format": "iso"}, "2026-11-20T14:42:17"),  # no offset, no timezone
        ({"format": "date", "timezone": "+08:00"}, "11/20/2026"),
        ({"format": "us_date", "timezone": "+08:00"}, "2026-11-20"),
        ({"format": "unix_s"}, "soon"),
        ({"format": "unix_ms"}, 1e300),
    ],
)
def test_an_answer_not_in_the_time_format_is_a_problem(occurred_at: dict[str, Any], answer: Any) -> None:
    spec = edited(_set("occurred_at", {"answer": "visit_date", **occurred_at}))
    with pytest.raises(MappingError, match="answer 'visit_date' is .*, which is not a"):
        apply_typeform(typeform_answers(visit_date=answer), spec)


@pytest.mark.parametrize(
    "zone, answer, expected",
    [
        ("America/New_York", "2026-03-08 01:59", datetime(2026, 3, 8, 6, 59, tzinfo=timezone.utc)),
        ("America/New_York", "2026-03-08 03:00", datetime(2026, 3, 8, 7, 0, tzinfo=timezone.utc)),
        ("America/New_York", "2026-11-01 01:30", datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)),  # twice that night: the first
        ("Asia/Shanghai", "2026-03-08 02:30", datetime(2026, 3, 7, 18, 30, tzinfo=timezone.utc)),
    ],
)
def test_a_local_time_is_read_in_the_mappings_zone(zone: str, answer: str, expected: datetime) -> None:
    spec = edited(_set("occurred_at", {"answer": "visit_date", "format": "iso", "timezone": zone}))
    assert apply_typeform(typeform_answers(visit_date=answer), spec)[0].occurred_at == expected


def test_a_local_time_the_zone_skips_is_a_problem_not_an_hour_off() -> None:
    # 2026-03-08 02:30 does not exist in New York: the clocks went from 02:00 to 03:00.
    spec = edited(_set("occurred_at", {"answer": "visit_date", "format": "iso", "timezone": "America/New_York"}))
    with pytest.raises(MappingError, match="'2026-03-08 02:30', a local time that America/New_York skips"):
        apply_typeform(typeform_answers(visit_date="2026-03-08 02:30"), spec)


def test_submitted_and_received_times() -> None:
    assert apply_typeform(typeform_answers(), edited(_set("occurred_at", "received")))[0].occurred_at == RECEIVED
    with pytest.raises(MappingError, match="the payload carries no submission time"):
        apply_typeform(typeform_answers(), edited(_set("occurred_at", "submitted")))


def test_an_optional_project_may_be_missing_and_a_present_one_is_named() -> None:
    spec = edited(_set("project", {"by": "external_ref", "answer": "project_code", "optional": True}))
    assert apply_typeform(typeform_answers(), spec)[0].project is None
    assert apply_typeform(typeform_answers(project_code=" P-2026-017 "), spec)[0].project == SubjectRef("external_ref", "P-2026-017")


def test_an_optional_customer_an_event_requires_is_a_problem_when_missing() -> None:
    spec = edited(_set("customer.optional", True))
    with pytest.raises(MappingError, match=r"events\[0\]: a visit event needs a customer"):
        apply_typeform(typeform_answers(customer_name=None), spec)


def test_an_actor_longer_than_the_column_is_a_problem() -> None:
    with pytest.raises(MappingError, match="longer than 100 characters"):
        apply_typeform(typeform_answers(**{"hidden.rep_id": "S" * 101}))


@pytest.mark.parametrize("rep_id", ["system", "key:bootstrap", "form:visit-report"])
def test_an_actor_rapport_records_itself_is_a_problem_not_an_actor(rep_id: str) -> None:
    # A form's submitter is anyone with its link: "system" as the rep's id passed the
    # submission off as the service's own write.
    with pytest.raises(MappingError) as refused:
        apply_typeform(typeform_answers(**{"hidden.rep_id": rep_id}))
    assert refused.value.problems == [("hidden.rep_id", "system, key:… and form:… are the actors Rapport records itself: send the person's own id")]


@settings(max_examples=300, deadline=None)
@given(
    mapping=st.sampled_from([c.mapping for c in EXAMPLE_CASES]),
    answers=st.dictionaries(
        st.sampled_from(["customer_name", "visit_date", "reception", "with_manager", "notes", "hidden.rep_id", "cust", "rep",
                         "q-3-D5eP", "op", "_widget_1698113050002", "field_2", "拜访日期", "q4_visitDate"]) | st.text(max_size=4),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(["热情", "是", "2026-11-20", "11/20/2026"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6),
        max_size=8,
    ),
    submitted=st.none() | st.datetimes(timezones=st.just(timezone.utc)),
)
def test_any_answers_give_drafts_or_a_mapping_error(mapping: str, answers: dict[str, Any], submitted: datetime | None) -> None:
    try:
        drafts = apply_mapping(parsed_spec(mapping), Submission("d", submitted, answers), received_at=RECEIVED)
    except MappingError as exc:
        assert exc.problems
    else:
        assert all(d.occurred_at.tzinfo is not None and d.external_id.startswith("d#") for d in drafts)
