"""Every refused event is an RFC 9457 problem that names the offending field, and stores
nothing: no event, no grade change, no history row."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.api.expectations import assert_problem, row_counts, stored_state
from tests.api.scenarios import at, owner_level_one_events


@dataclass(frozen=True)
class World:
    owner: int
    installer: int
    project: int


@pytest.fixture
def world(api) -> World:  # noqa: ANN001
    """An owner at level I, an installer bidding on the owner's project: any wrongly
    accepted event would show in the log, a grade or a history."""
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"])
    installer = api.create_customer("上海建工安装有限公司", "installer")
    project = api.create_project(owner["id"])
    api.event("bid_joined", customer_id=installer["id"], project_id=project["id"], at=at(12), attributes={"with_our_product": True})
    return World(owner["id"], installer["id"], project["id"])


def unchanged(api, world: World):  # noqa: ANN001, ANN201
    return stored_state(api, customers=(world.owner, world.installer), projects=(world.project,))


Body = Callable[[World], dict[str, Any]]


def visit(w: World, **attributes: Any) -> dict[str, Any]:
    return {"type": "visit", "customer_id": w.owner, "occurred_at": at(15), "attributes": attributes}


REFUSED: list[Any] = [
    pytest.param(lambda w: {"type": "coffee_break", "customer_id": w.owner, "occurred_at": at(15)}, "type", id="unknown-event-type"),
    pytest.param(
        lambda w: {"type": "bid_joined", "customer_id": w.owner, "project_id": w.project, "occurred_at": at(15), "attributes": {"with_our_product": True}},
        "customer_id",
        id="owner-bidding",
    ),
    pytest.param(lambda w: {"type": "bid_won", "customer_id": w.installer, "occurred_at": at(15)}, "project_id", id="bid-without-project"),
    pytest.param(lambda w: {"type": "stage_changed", "occurred_at": at(15), "attributes": {"stage": "bidding"}}, "project_id", id="project-event-without-project"),
    pytest.param(
        lambda w: {"type": "stage_changed", "customer_id": w.owner, "project_id": w.project, "occurred_at": at(15), "attributes": {"stage": "bidding"}},
        "customer_id",
        id="project-event-with-customer",
    ),
    pytest.param(lambda w: {"type": "company_introduced", "project_id": w.project, "occurred_at": at(15)}, "customer_id", id="customer-event-without-customer"),
    pytest.param(lambda w: visit(w, reception="neutral", with_manager="yes"), "attributes.with_manager", id="attribute-of-wrong-type"),
    pytest.param(lambda w: visit(w, reception="happy"), "attributes.reception", id="attribute-of-wrong-value"),
    pytest.param(lambda w: visit(w, reception="neutral", mood="good"), "attributes.mood", id="unknown-attribute"),
    pytest.param(lambda w: visit(w), "attributes.reception", id="missing-required-attribute"),
    pytest.param(
        lambda w: {"type": "materials_sent", "customer_id": w.owner, "occurred_at": at(15), "attributes": {"items": ["gifts"]}},
        "attributes.items",
        id="list-attribute-with-unknown-item",
    ),
    pytest.param(
        lambda w: {"type": "order_placed", "customer_id": w.installer, "occurred_at": at(15), "attributes": {"amount": -5}},
        "attributes.amount",
        id="negative-amount",
    ),
    pytest.param(
        lambda w: {"type": "order_placed", "customer_id": w.installer, "occurred_at": at(15), "attributes": {"amount": "5000"}},
        "attributes.amount",
        id="amount-as-text",
    ),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "2026-11-19T10:00:00"}, "occurred_at", id="naive-timestamp"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "yesterday afternoon"}, "occurred_at", id="unparsable-timestamp"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "2026-02-30T10:00:00+08:00"}, "occurred_at", id="impossible-date"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "2027-01-15T10:00:00+08:00"}, "occurred_at", id="far-in-the-future"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "1969-12-31T10:00:00+00:00"}, "occurred_at", id="before-1970"),
    pytest.param(lambda w: {"type": "visit", "customer_id": w.owner, "attributes": {"reception": "neutral"}}, "occurred_at", id="missing-timestamp"),
    pytest.param(lambda w: {"customer_id": w.owner, "occurred_at": at(15)}, "type", id="missing-type"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "customer_id": 999999}, "customer_id", id="unknown-customer"),
    pytest.param(
        lambda w: {"type": "tender_brand", "project_id": 999999, "occurred_at": at(15), "attributes": {"status": "sole"}},
        "project_id",
        id="unknown-project",
    ),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "customer_id": "仁济"}, "customer_id", id="customer-id-not-a-number"),
    # pydantic reads true as 1, and a number (or a string of digits) as Unix time.
    pytest.param(lambda w: {**visit(w, reception="neutral"), "customer_id": True}, "customer_id", id="customer-id-true"),
    pytest.param(lambda w: {"type": "spec_agreed", "project_id": True, "occurred_at": at(15)}, "project_id", id="project-id-true"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": 1763700000}, "occurred_at", id="timestamp-as-unix-time"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "occurred_at": "1763700000"}, "occurred_at", id="timestamp-as-unix-time-text"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "customer_id": 2**63}, "customer_id", id="customer-id-beyond-64-bits"),
    pytest.param(
        lambda w: {"type": "spec_agreed", "project_id": 2**64, "occurred_at": at(15)},
        "project_id",
        id="project-id-beyond-64-bits",
    ),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "recorded_at": at(1)}, "recorded_at", id="mass-assignment-recorded-at"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "id": 1}, "id", id="mass-assignment-id"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "actor": "boss"}, "actor", id="mass-assignment-actor"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "source": "ERP system!"}, "source", id="malformed-source"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "attributes": ["reception", "neutral"]}, "attributes", id="attributes-not-an-object"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "note": "a\x00b"}, "note", id="nul-in-note"),
    pytest.param(lambda w: {**visit(w, reception="neutral"), "source": "erp", "external_id": "V\x00"}, "external_id", id="nul-in-external-id"),
    pytest.param(
        lambda w: {"type": "attended_promotion", "customer_id": w.installer, "occurred_at": at(15), "attributes": {"event_name": "春季\x00推广会"}},
        "attributes.event_name",
        id="nul-in-text-attribute",
    ),
]


@pytest.mark.parametrize(("body", "field"), REFUSED)
def test_refused_event_names_the_field_and_stores_nothing(api, world: World, body: Body, field: str) -> None:
    before = unchanged(api, world)

    r = api.post("/v1/events", json=body(world))

    assert_problem(r, 422, field)
    assert unchanged(api, world) == before


@pytest.mark.parametrize(
    "body",
    [
        lambda w: {"type": "order_placed", "customer_id": w.installer, "occurred_at": at(15), "attributes": {"amount": 5, "order_ref": "SO-\ud800"}},
        lambda w: {**visit(w, reception="neutral"), "attributes": {"reception": "neutral", "\ud800": 1}},
        lambda w: {"type": "materials_sent", "customer_id": w.owner, "occurred_at": at(15), "attributes": {"items": ["samples", "\udc00"]}},
    ],
    ids=["in-a-text", "in-a-name", "in-a-list"],
)
def test_a_lone_surrogate_in_the_attributes_is_422_not_a_500(api, world: World, body: Body) -> None:
    # Half an emoji: JSON reads the escape \ud800 into a string no column can hold.
    before = unchanged(api, world)

    r = api.post("/v1/events", content=json.dumps(body(world)).encode(), headers={"Content-Type": "application/json"})

    assert_problem(r, 422, "attributes")
    assert unchanged(api, world) == before


def test_all_problems_of_one_event_are_reported_together(api, world: World) -> None:
    body = {"type": "visit", "customer_id": 999999, "occurred_at": "2030-01-01T00:00:00Z", "attributes": {"reception": "happy", "mood": "good"}}

    r = api.post("/v1/events", json=body)

    assert_problem(r, 422, "customer_id", "occurred_at", "attributes.reception", "attributes.mood")


def test_malformed_json_is_a_422_problem_naming_the_body(api, world: World) -> None:
    before = unchanged(api, world)

    r = api.post("/v1/events", content=b'{"type": "visit", "customer_id": ', headers={"Content-Type": "application/json"})

    body = assert_problem(r, 422, "body")
    assert "JSON" in body["errors"][0]["reason"]
    assert unchanged(api, world) == before


@pytest.mark.parametrize("path", ["/v1/events", "/v1/customers", "/v1/webhooks/subscriptions/1/rotate-secret"])
def test_a_body_that_is_not_utf8_is_a_422_problem_naming_the_body(api, world: World, path: str) -> None:
    before = unchanged(api, world)

    r = api.post(path, content=b'{"name": "\xc3("}', headers={"Content-Type": "application/json"})

    body = assert_problem(r, 422, "body")
    assert body["errors"][0]["reason"].startswith("malformed JSON: not UTF-8")
    assert unchanged(api, world) == before


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
@pytest.mark.parametrize(("path", "content_type", "text"), [
    ("/v1/customers", "application/json", '{"name": "上海建工安装有限公司", "kind": "installer"}'),
    ("/v1/events/batch", "application/json", '[{"type": "visit", "customer_id": 1, "occurred_at": "2026-11-20T14:30:00+08:00", "attributes": {"reception": "welcoming"}, "source": "erp", "external_id": "v-1"}]'),
    ("/v1/events/batch", "application/x-ndjson", '{"type": "visit", "customer_id": 1, "occurred_at": "2026-11-20T14:30:00+08:00", "attributes": {"reception": "welcoming"}, "source": "erp", "external_id": "v-2"}\n'),
])
def test_a_body_in_utf16_or_utf32_is_a_422_naming_the_body_not_read(api, world: World, path: str, content_type: str, text: str, encoding: str) -> None:
    """openapi.md: bodies are UTF-8. Python's json guessed UTF-16 and UTF-32 from the first
    bytes and stored them; NDJSON in UTF-16 answered one rejected item per line fragment."""
    before = unchanged(api, world)

    r = api.post(path, content=text.encode(encoding), headers={"Content-Type": content_type})

    body = assert_problem(r, 422, "body")
    assert body["errors"][0]["reason"].startswith("malformed JSON: a NUL byte at byte ") and body["errors"][0]["reason"].endswith("send UTF-8)")
    assert unchanged(api, world) == before


@pytest.mark.parametrize("path", ["/v1/events", "/v1/customers", "/v1/projects"])
def test_a_body_nested_deeper_than_json_can_read_is_a_422_problem_naming_the_body(api, world: World, path: str) -> None:
    # It was a 400 "bad-request" with no `errors`, a type the error table does not name.
    before = unchanged(api, world)

    r = api.post(path, content=b'{"name": "x", "tags": ' + b"[" * 5000 + b"]" * 5000 + b"}", headers={"Content-Type": "application/json"})

    body = assert_problem(r, 422, "body")
    assert body["errors"][0]["reason"] == "malformed JSON: nested too deeply"
    assert unchanged(api, world) == before


def test_a_json_array_instead_of_an_object_is_422(api, world: World) -> None:
    assert_problem(api.post("/v1/events", json=[{"type": "visit"}]), 422)


def test_a_bad_cursor_is_422_naming_the_cursor_on_every_list(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    lists = ["/v1/events", "/v1/customers", "/v1/projects", f"/v1/customers/{owner['id']}/history", f"/v1/projects/{project['id']}/history"]

    for path in lists:
        assert_problem(api.get(path, params={"cursor": "bm90IGEgY3Vyc29y"}), 422, "cursor")


def test_a_cursor_of_one_list_is_422_on_another(api) -> None:
    """A customers cursor was read as a position among events (on PostgreSQL it showed again
    the event whose id it carried), an events cursor among customers (a hunt's find)."""
    owner = api.create_customer("仁济医院基建处", "owner")
    api.create_customer("华东设计院", "owner")
    for _ in range(2):
        api.event("company_introduced", customer_id=owner["id"])
    cursors = {path: api.get(path, params={"limit": 1}).json()["next_cursor"] for path in ("/v1/customers", "/v1/events")}

    assert_problem(api.get("/v1/events", params={"cursor": cursors["/v1/customers"]}), 422, "cursor")
    assert_problem(api.get("/v1/customers", params={"cursor": cursors["/v1/events"]}), 422, "cursor")
    assert api.get("/v1/customers", params={"cursor": cursors["/v1/customers"]}).status_code == 200
    # A cursor issued before cursors named their list still pages on.
    legacy = base64.urlsafe_b64encode(json.dumps({"after": owner["id"], "desc": False}).encode()).decode().rstrip("=")
    assert [c["name"] for c in api.get("/v1/customers", params={"cursor": legacy}).json()["items"]] == ["华东设计院"]


@pytest.mark.parametrize("after", [2**63, 2**70, -(2**70)])
@pytest.mark.parametrize("path", ["/v1/events", "/v1/customers", "/v1/projects", "/v1/forms", "/v1/webhooks/subscriptions"])
def test_a_forged_cursor_past_any_id_is_422_not_a_500(api, path: str, after: int) -> None:
    forged = base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")
    assert_problem(api.get(path, params={"cursor": forged}), 422, "cursor")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/customers/{big}"),
        ("PATCH", "/v1/customers/{big}"),
        ("GET", "/v1/customers/{big}/history"),
        ("GET", "/v1/projects/{big}"),
        ("GET", "/v1/projects/{big}/history"),
        ("GET", "/v1/events/{big}"),
        ("POST", "/v1/events/{big}/retract"),
        ("GET", "/v1/events?customer_id={big}"),
        ("GET", "/v1/events?project_id={big}"),
        ("GET", "/v1/projects?owner_id={big}"),
    ],
)
def test_an_id_no_database_can_hold_is_refused_not_a_server_error(api, method: str, path: str) -> None:
    body = {"rep": "王芳"} if method == "PATCH" else {"reason": "x"} if method == "POST" else None

    r = api.request(method, path.format(big=2**63), json=body)

    assert 400 <= r.status_code < 500
    assert_problem(r, r.status_code)


def test_a_project_whose_owner_id_no_database_can_hold_is_422(api) -> None:
    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": 2**63}), 422, "owner_id")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"owner_id": True}, "owner_id"),
        ({"amount": True}, "amount"),
        ({"expected_close": "2026-11-21T00:00:00Z"}, "expected_close"),
        ({"expected_close": 1763700000}, "expected_close"),
    ],
    ids=["owner-id-true", "amount-true", "date-as-a-date-time", "date-as-unix-time"],
)
def test_a_project_value_of_another_type_is_refused_not_converted(api, world: World, values: dict, field: str) -> None:
    before = unchanged(api, world), api.get("/v1/projects").json()["items"]

    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": world.owner, **values}), 422, field)

    assert (unchanged(api, world), api.get("/v1/projects").json()["items"]) == before


def test_a_time_range_bound_given_as_unix_time_is_422(api) -> None:
    assert_problem(api.get("/v1/events", params={"from": "1763700000"}), 422, "from")


def test_a_time_range_bound_that_cannot_be_expressed_in_utc_is_422(api) -> None:
    assert_problem(api.get("/v1/events", params={"from": "0001-01-01T00:00:00+14:00"}), 422, "from")
    assert_problem(api.get("/v1/events", params={"to": "9999-12-31T23:59:59-14:00"}), 422, "to")


def test_text_with_a_nul_character_is_422_for_customers_and_list_filters(api, world: World) -> None:
    before = unchanged(api, world)

    assert_problem(api.post("/v1/customers", json={"name": "万科\x00", "kind": "owner"}), 422, "name")
    assert_problem(api.post("/v1/customers", json={"name": "万科", "kind": "owner", "contact": {"person": "张\x00"}}), 422, "contact.person")
    assert_problem(api.patch(f"/v1/customers/{world.owner}", json={"tags": ["重点\x00"]}), 422, "tags.0")
    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": world.owner, "rep": "\x00"}), 422, "rep")
    # The inbox's form_id was a 500 on PostgreSQL, which cannot hold a NUL in text (a hunt found it).
    for path, param in (("/v1/customers", "q"), ("/v1/customers", "rep"), ("/v1/projects", "q"), ("/v1/projects", "stage"), ("/v1/events", "type"), ("/v1/inbox", "form_id")):
        assert_problem(api.get(path, params={param: "a\x00"}), 422, param)
    event_id = before.events[0]["id"]
    assert_problem(api.post(f"/v1/events/{event_id}/retract", json={"reason": "\x00"}), 422, "reason")

    assert unchanged(api, world) == before
    assert len(api.get("/v1/customers").json()["items"]) == 2


def test_an_unknown_path_is_a_404_problem(api) -> None:
    assert_problem(api.get("/v1/widgets"), 404)


@pytest.mark.parametrize(("method", "path", "bare"), [("GET", "/v1/customers/", "/v1/customers"), ("POST", "/v1/events/", "/v1/events"), ("GET", "/healthz/", "/healthz")])
def test_a_path_with_a_trailing_slash_is_a_404_that_names_the_path_served_not_a_redirect(app, api, method: str, path: str, bare: str) -> None:
    # A 307 to the path without the slash named an http:// URL behind a proxy that ends TLS,
    # and a client following it would send the POST's body again.
    before = row_counts(app)
    body = {"type": "visit", "customer_id": 1, "occurred_at": "2026-11-20T09:00:00+08:00", "attributes": {"reception": "neutral"}}

    r = api.request(method, path, json=body if method == "POST" else None)

    assert_problem(r, 404)
    assert "location" not in r.headers
    assert r.json()["detail"] == f"no such path: {path} (paths end without a slash: {bare})"
    assert row_counts(app) == before


@pytest.mark.parametrize("kind", ["customers", "projects"])
def test_a_code_path_with_a_trailing_slash_is_a_404_not_another_code(app, api, kind: str) -> None:
    """A code takes the rest of the path: `PUT …/by-ref/C-1/` created a second record, `C-1/`,
    beside C-1. A code that ends in `/` is still served, sent as `%2F`."""
    api.put("/v1/customers/by-ref/C-1", json={"name": "仁济医院基建处", "kind": "owner"})
    body = {"name": "x", "kind": "owner"} if kind == "customers" else {"name": "x", "owner_ref": "C-1"}
    before = row_counts(app)
    for method in ("PUT", "GET"):
        r = api.request(method, f"/v1/{kind}/by-ref/C-2/", json=body if method == "PUT" else None)
        assert_problem(r, 404)
        assert r.json()["detail"] == f"no such path: /v1/{kind}/by-ref/C-2/ (paths end without a slash: /v1/{kind}/by-ref/C-2; a code that ends in / is sent with it as %2F)"
    # Only slashes after by-ref/: the code `/` (or `//`) was created.
    for path in (f"/v1/{kind}/by-ref//", f"/v1/{kind}/by-ref///"):
        assert_problem(api.put(path, json=body), 404)
    assert row_counts(app) == before
    assert api.put(f"/v1/{kind}/by-ref/C-2%2F", json=body).status_code == 201
    assert api.get(f"/v1/{kind}/by-ref/C-2%2F").json()["external_ref"] == "C-2/"
    assert_problem(api.get(f"/v1/{kind}/by-ref/C-2"), 404)


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/events", "GET, HEAD, POST"),
        ("/v1/customers", "GET, HEAD, POST"),
        ("/v1/customers/{owner}", "GET, HEAD, PATCH"),
        ("/v1/customers/by-ref/C-1", "GET, HEAD, PUT"),
        ("/v1/events/{event}", "GET, HEAD"),
        ("/v1/events/{event}/retract", "POST"),
    ],
)
def test_a_wrong_method_is_a_405_problem_whose_allow_names_every_method_served_there(api, world: World, path: str, allowed: str) -> None:
    # RFC 9110 §15.5.6: Allow lists the resource's methods, not those of one of its routes.
    r = api.delete(path.format(owner=world.owner, event=api.get("/v1/events").json()["items"][0]["id"]))

    assert_problem(r, 405)
    assert r.headers["allow"] == allowed


@pytest.mark.parametrize("path", ["/v1/customers/{owner}", "/v1/customers/{owner}/history", "/v1/customers", "/v1/events/{event}", "/healthz"])
def test_head_answers_as_get_does_without_the_body(api, world: World, path: str) -> None:
    # RFC 9110 §9.1: a general-purpose server supports HEAD wherever it serves GET.
    path = path.format(owner=world.owner, event=api.get("/v1/events").json()["items"][0]["id"])
    got = api.get(path)

    head = api.request("HEAD", path)

    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-type", "content-length", "etag"):
        assert head.headers.get(name) == got.headers.get(name), name


def test_head_is_refused_as_get_would_be(app, api, world: World) -> None:
    without_key = api.request("HEAD", f"/v1/customers/{world.owner}", headers={"Authorization": ""})
    missing = api.request("HEAD", "/v1/customers/999999")
    post_only = api.request("HEAD", f"/v1/events/{api.get('/v1/events').json()['items'][0]['id']}/retract")

    assert [(r.status_code, r.content) for r in (without_key, missing, post_only)] == [(401, b""), (404, b""), (405, b"")]
    assert post_only.headers["allow"] == "POST"


def test_events_cannot_be_deleted_or_edited(api, world: World) -> None:
    event_id = api.get("/v1/events").json()["items"][0]["id"]

    assert_problem(api.delete(f"/v1/events/{event_id}"), 405)
    assert_problem(api.patch(f"/v1/events/{event_id}", json={"note": "x"}), 405)


INSTANT = "must be an ISO 8601 date and time with an offset, such as 2026-11-20T14:30:00+08:00"


@pytest.mark.parametrize("occurred_at", ["2026-11-19T10:00:00+08", "2026-11-19T24:00:00Z", "2026-11-19T10:00:60Z", "2026-11-19T10:00:00+24:00", "下周二上午", "2026-11-19"])
def test_an_unreadable_instant_is_refused_in_the_services_words_in_a_body_and_a_batch(api, occurred_at: str) -> None:
    # A mobile hunt got pydantic's "a valid datetime or date, unexpected extra characters at
    # the end of the input" for the first four: "or date" is wrong, and 24:00 has no extra
    # characters. A batch item is told the same as a single POST.
    customer = api.create_customer("仁济医院基建处", "owner")["id"]
    body = {"type": "visit", "customer_id": customer, "occurred_at": occurred_at, "attributes": {"reception": "neutral"}}

    single = assert_problem(api.post("/v1/events", json=body), 422, "occurred_at")
    (item,) = api.post("/v1/events/batch", json=[{**body, "external_id": "visit-1"}]).json()["results"]

    assert single["errors"] == [{"field": "occurred_at", "in": "body", "reason": INSTANT}]
    assert item["status"] == "rejected" and item["problem"]["errors"] == [{"field": "occurred_at", "reason": INSTANT}]


def test_an_offset_whose_plus_a_query_string_read_as_a_space_is_told_so(api) -> None:
    # The commonest mistake of a hand-built URL: from=2026-12-01T00:00:00+08:00 unescaped.
    problem = assert_problem(api.get("/v1/events?from=2026-12-01T00:00:00+08:00"), 422, "from")
    assert problem["errors"][0]["reason"] == INSTANT + " (in a query string, write the offset's + as %2B: a bare + reads as a space)"
    assert api.get("/v1/events?from=2026-12-01T00:00:00%2B08:00").status_code == 200


def test_a_limit_of_the_service_is_said_without_pydantics_prefix(api) -> None:
    customer = api.create_customer("仁济医院基建处", "owner")["id"]
    body = {"type": "visit", "customer_id": customer, "occurred_at": "1969-12-31T23:59:59Z", "attributes": {"reception": "neutral"}}
    problem = assert_problem(api.post("/v1/events", json=body), 422, "occurred_at")
    assert problem["errors"][0]["reason"] == "must not be before 1970-01-01T00:00:00Z"


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
def test_a_json_body_sent_without_its_media_type_is_told_to_say_application_json(api, headers: dict[str, str]) -> None:
    # A mobile hunt's: "Input should be a valid dictionary or object to extract fields from".
    customer = api.create_customer("仁济医院基建处", "owner")["id"]
    body = json.dumps({"type": "company_introduced", "customer_id": customer, "occurred_at": at(5)}).encode()
    problem = assert_problem(api.post("/v1/events", content=body, headers=headers), 422, "body")
    assert "Content-Type: application/json" in problem["errors"][0]["reason"]
    assert api.get("/v1/events").json()["items"] == []


@pytest.mark.parametrize("said", ["database or disk is full", "attempt to write a readonly database", "terminating connection due to administrator command"])
def test_a_database_failure_is_logged_with_what_the_driver_said(api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, said: str) -> None:
    """Every failure was logged as "database unavailable: OperationalError": a full disk, a
    read-only file and a killed backend could not be told apart (a soak hunt's find). The
    statement and its parameters (a rep's note) stay out of the log."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from app.services import events as svc

    owner = api.create_customer("仁济医院基建处", "owner")["id"]

    def failing(*_: Any, **__: Any) -> Any:
        raise OperationalError("INSERT INTO events (note) VALUES (?)", ("客户说下周再谈",), sqlite3.OperationalError(f"{said}\nDETAIL: more"))

    monkeypatch.setattr(svc, "record_event", failing)
    with caplog.at_level("WARNING", logger="rapport"):
        r = api.post("/v1/events", json={"type": "company_introduced", "customer_id": owner, "occurred_at": at(1)})

    assert_problem(r, 503)
    assert f"database unavailable: OperationalError: {said}" in caplog.text
    assert "客户说下周再谈" not in caplog.text and "INSERT" not in caplog.text and "DETAIL" not in caplog.text
