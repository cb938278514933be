"""The texts a form brings in meet the limits every stored text meets: a NUL or an over-long
text in a submission waits in the inbox (never a 500 that loses the delivery, never stored in
an event), and one in a mapping is refused when the mapping is saved."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.expectations import all_pages, assert_problem

TOKEN = "t" * 24
SPEC: dict[str, Any] = {
    "tool": "json",
    "customer": {"by": "external_ref", "answer": "c"},
    "occurred_at": "received",
    "note": {"answer": "n"},
    "actor": {"answer": "a"},
    "events": [{"type": "order_placed", "attributes": {"amount": {"answer": "amt"}, "order_ref": {"answer": "o"}}}],
}
FORM = {"form_id": "hk", "name": "hk", "auth_scheme": "url_token", "secret": TOKEN, "spec": SPEC}
ANSWERS = {"id": "d5", "c": "C-1", "n": "客户要求下周送样", "a": "S-0217", "amt": 1200, "o": "PO-77"}


def set_up(api) -> None:  # noqa: ANN001
    api.create_customer("上海建工安装有限公司", "installer", external_ref="C-1")
    r = api.post("/v1/forms", json=FORM)
    assert r.status_code == 201, r.text


def submit(api, **changes: Any):  # noqa: ANN001, ANN201
    body = json.dumps({**ANSWERS, **changes}).encode()  # ASCII: a NUL travels as \u0000
    return api.post("/v1/hooks/forms/hk", content=body, headers={"Content-Type": "application/json"}, params={"token": TOKEN})


def counts(api) -> tuple[int, int]:  # noqa: ANN001
    """(events, submissions of any status)."""
    submissions = sum(len(all_pages(api, "/v1/inbox", status=s)) for s in ("inbox", "processed", "dismissed"))
    return len(all_pages(api, "/v1/events")), submissions


def test_the_mapping_records_a_clean_submission(api) -> None:  # noqa: ANN001
    set_up(api)
    r = submit(api)
    assert r.status_code == 201, r.text
    [event] = all_pages(api, "/v1/events")
    assert (event["note"], event["actor"], event["external_id"]) == ("客户要求下周送样", "S-0217", "d5#0")


@pytest.mark.parametrize("charset", ["GBK", "gb18030", "utf-16"])
def test_a_submission_in_the_charset_it_declares_is_recorded_and_shown_as_sent(api, charset: str) -> None:  # noqa: ANN001
    set_up(api)
    text = json.dumps(ANSWERS, ensure_ascii=False)
    r = api.post("/v1/hooks/forms/hk", content=text.encode(charset), headers={"Content-Type": f"application/json; charset={charset}"}, params={"token": TOKEN})
    assert r.status_code == 201, r.text
    [event] = all_pages(api, "/v1/events")
    assert event["note"] == "客户要求下周送样"
    kept = api.get(f"/v1/inbox/{r.json()['submission']['id']}").json()
    assert kept["body"] == text


def test_a_submission_in_a_charset_rapport_does_not_read_waits_in_the_inbox_saying_so(api) -> None:  # noqa: ANN001
    set_up(api)
    r = api.post("/v1/hooks/forms/hk", content=json.dumps(ANSWERS).encode(), headers={"Content-Type": "application/json; charset=ebcdic"}, params={"token": TOKEN})
    assert r.status_code == 202, r.text
    assert r.json()["submission"]["problems"] == [{"field": "body", "reason": "the body is in charset 'ebcdic', which Rapport does not read (it reads UTF-8, UTF-16, and GB18030 with GBK and GB2312)"}]
    assert counts(api) == (0, 1)


# --- a NUL in a submission --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n": "x\x00y"}, "n"),
        ({"a": "rep\x00"}, "a"),
        ({"o": "\x00"}, "o"),
        ({"c": "C-1\x00"}, "c"),
        ({"id": "d5\x00"}, "body"),
    ],
    ids=["note", "actor", "attribute", "customer-ref", "delivery-id"],
)
def test_a_nul_in_a_submission_waits_in_the_inbox_naming_where_it_is(api, changes: dict[str, Any], field: str) -> None:  # noqa: ANN001
    set_up(api)

    r = submit(api, **changes)

    assert r.status_code == 202, r.text
    [problem] = r.json()["submission"]["problems"]
    assert problem["field"] == field and "NUL character" in problem["reason"], problem
    assert counts(api) == (0, 1)
    assert submit(api, **changes).status_code == 200  # a redelivery finds it kept


def test_replaying_a_submission_kept_for_a_nul_names_it_again_and_it_can_be_dismissed(api) -> None:  # noqa: ANN001
    set_up(api)
    waiting = submit(api, n="x\x00y").json()["submission"]

    r = api.post(f"/v1/inbox/{waiting['id']}/replay")

    assert r.json()["outcome"] == "inbox"  # the body is kept as received: still the NUL
    assert r.json()["submission"]["problems"][0]["field"] == "n"
    assert api.post(f"/v1/inbox/{waiting['id']}/dismiss", json={"reason": "重新提交"}).status_code == 200


# --- over-long texts in a submission ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "limit"),
    [
        ({"n": "🙂" * 2001}, "n", "2000 characters"),
        ({"n": "x" * 500_000}, "n", "2000 characters"),
        ({"a": "S" * 101}, "a", "100 characters"),
        ({"o": "P" * 501}, "o", "500 characters"),
        ({"c": "C" * 101}, "c", "100 characters"),
    ],
    ids=["note-emoji", "note-huge", "actor", "attribute", "customer-ref"],
)
def test_a_text_over_the_events_limit_waits_in_the_inbox(api, changes: dict[str, Any], field: str, limit: str) -> None:  # noqa: ANN001
    set_up(api)

    r = submit(api, **changes)

    assert r.status_code == 202, r.text
    [problem] = r.json()["submission"]["problems"]
    assert problem["field"] == field and limit in problem["reason"], problem
    assert len(problem["reason"]) < 300  # the reason quotes the start, not the whole text
    assert counts(api) == (0, 1)


def test_texts_at_the_limits_are_recorded_whole(api) -> None:  # noqa: ANN001
    set_up(api)

    r = submit(api, n="🙂" * 2000, a="S" * 100, o="P" * 500, id="d" * 190)

    assert r.status_code == 201, r.text
    [event] = all_pages(api, "/v1/events")
    assert (event["note"], event["actor"], event["attributes"]["order_ref"]) == ("🙂" * 2000, "S" * 100, "P" * 500)
    assert event["external_id"] == "d" * 190 + "#0"


# --- a NUL or an over-long text in a mapping -----------------------------------------------------


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(SPEC))
    *parents, last = path.split(".")
    here: Any = spec
    for part in parents:
        here = here[int(part)] if isinstance(here, list) else here[part]
    here[last] = value
    return spec


BAD_SPECS = [
    (_with("events.0.attributes.order_ref", {"answer": "o", "map": {"\x00": "x"}}), "spec.events[0].attributes.order_ref.map", "NUL character"),
    (_with("events.0.attributes.order_ref", {"answer": "o", "map": {"x": "y\x00"}}), "spec.events[0].attributes.order_ref.map.x", "NUL character"),
    (_with("note", {"value": "n\x00"}), "spec.note.value", "NUL character"),
    (_with("actor", {"value": "\x00"}), "spec.actor.value", "NUL character"),
    (_with("customer", {"by": "external_ref", "answer": "c\x00"}), "spec.customer.answer", "NUL character"),
    (_with("events.0.when", {"answer": "o", "in": ["\x00"]}), "spec.events[0].when.in[0]", "NUL character"),
    (_with("note", {"value": "n" * 2001}), "spec.note.value", "2000 characters"),
    (_with("actor", {"value": "S" * 101}), "spec.actor.value", "100 characters"),
]
BAD_SPEC_IDS = ["map-key", "map-value", "note-value", "actor-value", "customer-answer", "when-in", "long-note", "long-actor"]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD_SPECS, ids=BAD_SPEC_IDS)
def test_a_mapping_with_a_nul_or_an_over_long_text_is_refused_naming_its_place(api, spec: dict[str, Any], field: str, reason: str) -> None:  # noqa: ANN001
    body = assert_problem(api.post("/v1/forms", json={**FORM, "spec": spec}), 422, field)
    assert any(e["field"] == field and reason in e["reason"] for e in body["errors"]), body["errors"]
    assert all_pages(api, "/v1/forms") == []


@pytest.mark.parametrize(("spec", "field", "reason"), BAD_SPECS, ids=BAD_SPEC_IDS)
def test_a_patch_with_a_nul_or_an_over_long_text_in_the_mapping_is_refused(api, spec: dict[str, Any], field: str, reason: str) -> None:  # noqa: ANN001
    set_up(api)
    before = api.get("/v1/forms/hk")

    assert_problem(api.patch("/v1/forms/hk", json={"spec": spec}), 422, field)

    after = api.get("/v1/forms/hk")
    assert (after.headers["etag"], after.json()) == (before.headers["etag"], before.json())


@pytest.mark.parametrize("field", ["name", "description"])
def test_a_nul_in_a_forms_name_or_description_is_refused(api, field: str) -> None:  # noqa: ANN001
    assert_problem(api.post("/v1/forms", json={**FORM, field: "现场\x00拜访"}), 422, field)
    set_up(api)
    assert_problem(api.patch("/v1/forms/hk", json={field: "现场\x00拜访"}), 422, field)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**SPEC, "note": {"value": "x\ud800"}}, "spec.note.value"),
        ({**SPEC, "\ud800": 1}, "spec"),
        (_with("events.0.attributes.order_ref", {"answer": "o", "map": {"\udc00": "x"}}), "spec.events[0].attributes.order_ref.map"),
    ],
    ids=["value", "top-level-key", "map-key"],
)
def test_a_mapping_with_half_an_emoji_is_refused_naming_its_place(api, spec: dict[str, Any], field: str) -> None:  # noqa: ANN001
    body = json.dumps({**FORM, "spec": spec}).encode()  # ASCII: the lone surrogate travels as \ud800
    r = api.post("/v1/forms", content=body, headers={"Content-Type": "application/json"})
    assert [e["field"] for e in assert_problem(r, 422, field)["errors"]] == [field]
    assert all_pages(api, "/v1/forms") == []
