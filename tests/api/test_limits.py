"""Hostile and malformed input: every limit answers a problem+json that names it, the key
is checked before the body is read, one key cannot exhaust the service, and a refused
request stores nothing."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from anyio.from_thread import BlockingPortal

from app.api.limits import RateLimiter
from app.services import forms as forms_service
from app.errors import MAX_LISTED, TooManyRequests
from app.main import create_app
from app.settings import Settings
from app.startup import initialize
from tests.api.conftest import ADMIN, Client
from tests.api.expectations import assert_problem, row_counts
from tests.api.scenarios import at, issue_key
from tests.api.test_forms import example, signed
from tests.conftest import Clock, empty_tables

MiB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def app_with(migrated: str, settings: Settings, clock: Clock, portal: BlockingPortal) -> Iterator[Callable[..., tuple[Any, Client]]]:
    """An app built with other settings (e.g. a tiny rate limit), and an admin client of it."""
    made: list[tuple[Any, Client]] = []

    def make(**changes: Any) -> tuple[Any, Client]:
        application = create_app(settings.model_copy(update=changes), clock=clock)
        ctx = application.state.context
        empty_tables(ctx.db.engine)
        initialize(ctx.db, ctx.settings, ctx.rulebook, now=clock())
        made.append((application, Client(portal, application, {"Authorization": f"Bearer {ADMIN}"})))
        return made[-1]

    yield make
    for application, client in made:
        client.close()
        application.state.context.db.dispose()


def padded_customer(size: int) -> bytes:
    """A valid customer body of `size` bytes (white space is allowed between JSON tokens)."""
    body = json.dumps({"name": "华东安装", "kind": "installer"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


# --- body size ------------------------------------------------------------------------------


def test_a_body_over_one_mib_is_413_naming_the_limit_and_stores_nothing(api, app) -> None:
    before = row_counts(app)

    body = assert_problem(api.post("/v1/customers", content=padded_customer(MiB + 1), headers=JSON), 413)

    assert "1048576 bytes" in body["detail"]
    assert row_counts(app) == before


def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit(api, app) -> None:
    before = row_counts(app)

    r = api.post("/v1/customers", content=chunks(padded_customer(2 * MiB)), headers=JSON)

    assert "1048576 bytes" in assert_problem(r, 413)["detail"]
    assert row_counts(app) == before


def test_a_body_just_under_the_limit_is_accepted(api) -> None:
    r = api.post("/v1/customers", content=chunks(padded_customer(MiB)), headers=JSON)

    assert r.status_code == 201, r.text


def test_the_batch_has_its_own_larger_limit(app_with) -> None:  # noqa: ANN001
    _, client = app_with(max_batch_bytes=2 * MiB)
    customer = client.post("/v1/customers", json={"name": "华东安装", "kind": "installer"}).json()
    item = event({"owner": customer["id"]}, external_id="e-1")

    def batch(size: int) -> bytes:
        return b"[" + json.dumps(item).encode() + b" " * size + b"]"

    accepted = client.post("/v1/events/batch", content=batch(3 * MiB // 2), headers=JSON)
    refused = client.post("/v1/events/batch", content=chunks(batch(5 * MiB // 2)), headers=JSON)

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["created"] == 1
    assert "2097152 bytes" in assert_problem(refused, 413)["detail"]


def test_a_form_hook_delivery_over_its_limit_is_413(api, app) -> None:
    before = row_counts(app)

    r = api.post("/v1/hooks/forms/visit-report", content=b"{" + b" " * MiB + b"}", headers=JSON)

    assert "1048576 bytes" in assert_problem(r, 413)["detail"]
    assert row_counts(app) == before


def test_json_nested_deeper_than_the_parser_goes_is_refused_not_a_crash(api, app) -> None:
    before = row_counts(app)

    assert "nested too deeply" in assert_problem(api.post("/v1/events/batch", content=b"[" * 100_000, headers=JSON), 422, "body")["errors"][0]["reason"]
    # The same 422 as the batch's, not FastAPI's bare 400 (the API contract hunt).
    assert "nested too deeply" in assert_problem(api.post("/v1/events", content=b"[" * 100_000, headers=JSON), 422, "body")["errors"][0]["reason"]
    assert row_counts(app) == before


@pytest.mark.parametrize("depth", [33, 300, 900])
@pytest.mark.parametrize("keyed", [False, True])
def test_an_attribute_nested_deep_is_a_422_naming_the_attributes_with_a_key_or_without(api, app, depth: int, keyed: bool) -> None:  # noqa: ANN001
    """A hunt's find: with an Idempotency-Key, a value 255 or more deep broke pydantic's
    serializer while the request was fingerprinted, and answered 500."""
    customer = api.create_customer("上海建工安装有限公司", "installer")
    before = row_counts(app)
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    body = {"type": "visit", "customer_id": customer["id"], "occurred_at": at(1), "attributes": {"reception": value}}
    headers = {"Idempotency-Key": f"deep-{depth}"} if keyed else {}

    problem = assert_problem(api.post("/v1/events", json=body, headers=headers), 422, "attributes")

    assert problem["errors"][0]["reason"].endswith("attribute values nest at most 32 deep (no attribute type nests at all)")
    assert row_counts(app) == before


# --- authentication before the body ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/customers", "/v1/events", "/v1/events/batch", "/v1/forms"])
def test_garbage_without_a_key_is_401_not_422(anonymous, client_for, app, path: str) -> None:
    before = row_counts(app)

    assert_problem(anonymous.post(path, content=b"{not json", headers=JSON), 401)
    assert_problem(client_for("rk_guessed").post(path, content=b"{not json", headers=JSON), 401)
    assert_problem(anonymous.post(path, content=chunks(b"[" * (2 * MiB)), headers=JSON), 401)
    assert row_counts(app) == before


def test_garbage_with_a_valid_key_is_422_naming_the_body(api) -> None:
    assert_problem(api.post("/v1/customers", content=b"{not json", headers=JSON), 422, "body")


def test_a_key_without_the_scope_is_still_403(client_for, app) -> None:
    reader = client_for(issue_key(app, "dashboard", ["read"]))

    assert_problem(reader.post("/v1/customers", content=b"{not json", headers=JSON), 403)


# --- unknown fields -------------------------------------------------------------------------

@pytest.fixture
def records(api) -> dict[str, Any]:  # noqa: ANN001
    """One of each thing a request can change, so that a wrongly accepted body would show."""
    owner = api.create_customer("仁济医院基建处", "owner", external_ref="C-1")
    project = api.create_project(owner["id"], external_ref="P-1")
    event = api.event("company_introduced", customer_id=owner["id"])
    sub = api.post("/v1/webhooks/subscriptions", json={"url": "http://receiver.test/hook", "event_types": ["event.created"]})
    assert sub.status_code == 201, sub.text
    return {"owner": owner["id"], "project": project["id"], "event": event["id"], "subscription": sub.json()["id"]}


def event(r: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A valid event body about the records' owner, with these fields changed or added."""
    return {"type": "company_introduced", "customer_id": r["owner"], "occurred_at": at(2), **fields}


def form_body(**changes: Any) -> dict[str, Any]:
    return {**example("typeform-visit-report"), **changes}


UNKNOWN_FIELD: list[Any] = [
    pytest.param("POST", "/v1/customers", lambda r: {"name": "新客户", "kind": "owner", "level": 4}, "level", id="customer-create"),
    pytest.param("POST", "/v1/customers", lambda r: {"name": "新客户", "kind": "owner", "contact": {"wechat": "x"}}, "contact.wechat", id="customer-contact"),
    pytest.param("PATCH", "/v1/customers/{owner}", lambda r: {"rep": "王芳", "version": 9}, "version", id="customer-patch"),
    pytest.param("PUT", "/v1/customers/by-ref/C-1", lambda r: {"name": "仁济", "kind": "owner", "id": 7}, "id", id="customer-put"),
    pytest.param("POST", "/v1/projects", lambda r: {"name": "新楼", "owner_id": r["owner"], "heat": 90}, "heat", id="project-create"),
    pytest.param("PATCH", "/v1/projects/{project}", lambda r: {"owner_id": r["owner"]}, "owner_id", id="project-patch"),
    pytest.param("PUT", "/v1/projects/by-ref/P-1", lambda r: {"name": "新楼", "owner_id": r["owner"], "winner_id": 1}, "winner_id", id="project-put"),
    pytest.param("POST", "/v1/events", lambda r: event(r, recorded_at=at(1)), "recorded_at", id="event"),
    pytest.param("POST", "/v1/events/{event}/retract", lambda r: {"reason": "错录", "actor": "boss"}, "actor", id="retract"),
    pytest.param("POST", "/v1/forms", lambda r: form_body(tool="typeform"), "tool", id="form-create"),
    pytest.param("POST", "/v1/inbox/1/dismiss", lambda r: {"reason": "测试", "status": "processed"}, "status", id="inbox-dismiss"),
    pytest.param(
        "POST",
        "/v1/webhooks/subscriptions",
        lambda r: {"url": "http://receiver.test/x", "event_types": ["event.created"], "secret": "whsec_x"},
        "secret",
        id="subscription-create",
    ),
    pytest.param("PATCH", "/v1/webhooks/subscriptions/{subscription}", lambda r: {"secret": "whsec_x"}, "secret", id="subscription-patch"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), UNKNOWN_FIELD)
def test_an_unknown_field_is_refused_never_bound(api, app, records, method: str, path: str, body: Callable[[dict[str, Any]], dict[str, Any]], field: str) -> None:
    before = row_counts(app)
    versions = (api.get(f"/v1/customers/{records['owner']}").json()["version"], api.get(f"/v1/projects/{records['project']}").json()["version"])

    r = api.request(method, path.format(**records), json=body(records))

    assert "Extra inputs are not permitted" in {e["reason"] for e in assert_problem(r, 422, field)["errors"]}
    assert row_counts(app) == before
    assert versions == (api.get(f"/v1/customers/{records['owner']}").json()["version"], api.get(f"/v1/projects/{records['project']}").json()["version"])


@pytest.mark.parametrize(("method", "path", "body", "field"), UNKNOWN_FIELD)
def test_a_body_of_many_unknown_fields_is_one_error_not_one_each(api, app, records, method: str, path: str, body: Callable[[dict[str, Any]], dict[str, Any]], field: str) -> None:
    """pydantic made one error per unknown field on the event loop: 100,000 of them held the
    process for 2 s and came back as a 7 MB answer (a hunt's find)."""
    before = row_counts(app)
    many = {**body(records), **{f"k{i}": 0 for i in range(30_000)}}

    r = api.request(method, path.format(**records), json=many)

    errors = assert_problem(r, 422)["errors"]
    assert len(r.content) < 4096, len(r.content)
    assert any(e["reason"].startswith(("30000 fields", "30001 fields")) and "this does not take (the first: " in e["reason"] for e in errors), errors
    assert row_counts(app) == before


def test_a_problem_lists_the_first_errors_and_counts_them_all(api, app, records) -> None:
    before = row_counts(app)
    query = "&".join(f"x{i}=1" for i in range(30))

    body = assert_problem(api.get(f"/v1/customers?{query}"), 422)
    assert body["detail"] == f"30 field(s) failed validation (the first {MAX_LISTED} are listed); nothing was stored"
    assert [e["field"] for e in body["errors"]] == [f"x{i}" for i in range(MAX_LISTED)]

    listed = {**event(records), "external_id": "l", **{f"k{i}": 0 for i in range(MAX_LISTED)}}  # one error each, all listed
    counted = {**event(records), "external_id": "c", **{f"k{i}": 0 for i in range(MAX_LISTED + 1)}}  # one error that counts them
    answer = api.post("/v1/events/batch", json=[listed, counted])
    assert answer.status_code == 200, answer.text
    first, second = (r["problem"]["errors"] for r in answer.json()["results"])
    assert len(first) == MAX_LISTED and {e["reason"] for e in first} == {"Extra inputs are not permitted"}
    assert [e["reason"].split(" (")[0] for e in second] == [f"{MAX_LISTED + 1} fields this does not take"]
    assert row_counts(app) == before


@pytest.mark.parametrize("path", ["/v1/customers", "/v1/events", "/v1/events/batch"])
def test_a_number_of_more_digits_than_python_reads_is_malformed_json(api, app, path: str) -> None:
    """One wording on every route: a batch said Python's own ("Exceeds the limit (4300
    digits) … use sys.set_int_max_str_digits()"), a single body was a bare 400."""
    before = row_counts(app)
    body = b'{"name": "x", "kind": "owner", "customer_id": ' + b"9" * 5000 + b"}"
    body = b"[" + body + b"]" if path.endswith("/batch") else body

    errors = assert_problem(api.post(path, content=body, headers=JSON), 422, "body")["errors"]

    assert errors[0]["reason"] == "malformed JSON: a number of more than 4,300 digits"
    assert row_counts(app) == before


@pytest.mark.parametrize("coding", ["gzip", "br", "GZIP, identity", ["identity", "gzip"]])
def test_a_compressed_body_is_415_and_stores_nothing(api, app, records, coding: str | list[str]) -> None:
    """A plain body labelled compressed was stored as if it were not (RFC 9110 §8.4: 415)."""
    before = row_counts(app)

    headers = [("Content-Encoding", c) for c in ([coding] if isinstance(coding, str) else coding)]
    r = api.post("/v1/events", json=event(records), headers=headers)

    assert "Content-Encoding" in assert_problem(r, 415)["detail"]
    assert row_counts(app) == before
    assert api.post("/v1/events", json=event(records), headers={"Content-Encoding": "identity, identity"}).status_code == 201
    # A request without a body has nothing to decode.
    assert api.get(f"/v1/customers/{records['owner']}", headers={"Content-Encoding": "gzip"}).status_code == 200


def test_a_client_that_hangs_up_mid_body_is_no_error_of_the_service(app, portal, caplog) -> None:  # noqa: ANN001
    """A form hook needs no key: each aborted body logged an ERROR with its traceback."""
    messages = iter([{"type": "http.request", "body": b"[{", "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {ADMIN}".encode()), (b"content-type", b"application/json")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/v1/events/batch",
             "raw_path": b"/v1/events/batch", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80), "root_path": ""}
    with caplog.at_level("INFO", logger="rapport"):
        portal.call(app, scope, receive, send)

    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    assert "client disconnected" in caplog.text


def test_unknown_fields_of_a_form_mapping_are_refused(api, app) -> None:
    form = api.post("/v1/forms", json=form_body())
    assert form.status_code == 201, form.text
    before = row_counts(app)
    path = f"/v1/forms/{form.json()['form_id']}"

    assert_problem(api.patch(path, json={"enabled": False, "secret": "x" * 20}), 422, "secret")
    assert_problem(api.post(f"{path}/rotate-secret", json={"grace_hours": 1, "previous_secret_until": at(1)}), 422, "previous_secret_until")
    assert row_counts(app) == before
    assert api.get(path).json()["enabled"] is True


def test_an_unknown_field_of_a_batch_item_rejects_that_item(api, app, records) -> None:
    before = row_counts(app)
    item = event(records, external_id="b-1", recorded_at=at(1))

    r = api.post("/v1/events/batch", json=[item])

    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["status"] == "rejected"
    assert {e["field"] for e in r.json()["results"][0]["problem"]["errors"]} == {"recorded_at"}
    assert row_counts(app) == before


# --- string lengths, attributes, page size, instants ----------------------------------------

LONG: list[Any] = [
    pytest.param("POST", "/v1/customers", lambda r, s: {"name": s, "kind": "owner"}, "name", 200, id="customer-name"),
    pytest.param("POST", "/v1/customers", lambda r, s: {"name": "x", "kind": "owner", "external_ref": s}, "external_ref", 100, id="external-ref"),
    pytest.param("POST", "/v1/customers", lambda r, s: {"name": "x", "kind": "owner", "region": s}, "region", 100, id="region"),
    pytest.param("POST", "/v1/customers", lambda r, s: {"name": "x", "kind": "owner", "tags": [s]}, "tags.0", 50, id="tag"),
    pytest.param("POST", "/v1/customers", lambda r, s: {"name": "x", "kind": "owner", "contact": {"phone": s}}, "contact.phone", 200, id="contact"),
    pytest.param("PATCH", "/v1/projects/{project}", lambda r, s: {"rep": s}, "rep", 100, id="project-rep"),
    pytest.param("POST", "/v1/events", lambda r, s: event(r, type=s), "type", 64, id="event-type"),
    pytest.param("POST", "/v1/events", lambda r, s: event(r, note=s), "note", 2000, id="event-note"),
    pytest.param("POST", "/v1/events", lambda r, s: event(r, external_id=s), "external_id", 200, id="event-external-id"),
    pytest.param(
        "POST",
        "/v1/events",
        lambda r, s: event(r, type="order_placed", attributes={"amount": 1, "order_ref": s}),
        "attributes.order_ref",
        500,
        id="string-attribute",
    ),
    pytest.param("POST", "/v1/events/{event}/retract", lambda r, s: {"reason": s}, "reason", 1000, id="retract-reason"),
    pytest.param("POST", "/v1/forms", lambda r, s: form_body(description=s), "description", 2000, id="form-description"),
    pytest.param("POST", "/v1/forms", lambda r, s: form_body(secret=s), "secret", 200, id="form-secret"),
    pytest.param(
        "POST",
        "/v1/webhooks/subscriptions",
        lambda r, s: {"url": "http://receiver.test/" + s, "event_types": ["event.created"]},
        "url",
        2000,
        id="webhook-url",
    ),
    pytest.param("PATCH", "/v1/webhooks/subscriptions/{subscription}", lambda r, s: {"description": s}, "description", 200, id="webhook-description"),
]


@pytest.mark.parametrize(("method", "path", "body", "field", "most"), LONG)
def test_a_string_over_its_limit_is_422_naming_the_limit(api, app, records, method: str, path: str, body: Callable[..., Any], field: str, most: int) -> None:
    before = row_counts(app)

    r = api.request(method, path.format(**records), json=body(records, "x" * (most + 1)))

    reasons = [e["reason"] for e in assert_problem(r, 422, field)["errors"] if e["field"] == field]
    assert any(f"at most {most} characters" in reason for reason in reasons), reasons
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("params", "header", "most"),
    [({"q": "x" * 101}, None, 100), ({"cursor": "x" * 201}, None, 200), ({}, "x" * 101, 100)],
    ids=["query-text", "cursor", "x-actor"],
)
def test_query_and_header_text_over_its_limit_is_422(api, params: dict[str, str], header: str | None, most: int) -> None:
    r = api.get("/v1/customers", params=params, headers={"X-Actor": header} if header else {})

    assert f"at most {most} characters" in assert_problem(r, 422)["errors"][0]["reason"]


def test_an_event_with_too_many_or_too_long_attribute_names_is_422(api, app, records) -> None:
    before = row_counts(app)
    many = assert_problem(api.post("/v1/events", json=event(records, type="visit", attributes={f"a{i}": 1 for i in range(21)})), 422, "attributes")
    long = assert_problem(api.post("/v1/events", json=event(records, type="visit", attributes={"a" * 65: 1})), 422, "attributes")

    assert "at most 20 items" in many["errors"][0]["reason"]
    assert "at most 64 characters" in long["errors"][0]["reason"]
    assert "a" * 65 not in json.dumps(long)
    assert row_counts(app) == before


LISTS = [
    "/v1/customers",
    "/v1/projects",
    "/v1/events",
    "/v1/customers/{owner}/history",
    "/v1/projects/{project}/history",
    "/v1/forms",
    "/v1/inbox",
    "/v1/webhooks/subscriptions",
    "/v1/webhooks/subscriptions/{subscription}/deliveries",
]


@pytest.mark.parametrize("path", LISTS)
def test_a_page_size_over_the_maximum_is_422_naming_the_maximum(api, records, path: str) -> None:
    url = path.format(**records)

    r = api.get(url, params={"limit": 201})

    assert "200" in assert_problem(r, 422, "limit")["errors"][0]["reason"]
    assert api.get(url, params={"limit": 200}).status_code == 200


@pytest.mark.parametrize("instant", ["1969-12-31T23:59:59Z", "2200-01-01T00:00:00+08:00"])
def test_an_instant_before_1970_or_far_ahead_is_refused_everywhere(api, app, records, instant: str) -> None:
    before = row_counts(app)
    body = event(records, occurred_at=instant, external_id="t-1")

    single = assert_problem(api.post("/v1/events", json=body), 422, "occurred_at")
    batch = api.post("/v1/events/batch", json=[body]).json()["results"][0]
    bounds = [assert_problem(api.get("/v1/events", params={bound: instant}), 422, bound) for bound in ("from", "to")]

    reason = single["errors"][0]["reason"]
    assert "1970-01-01" in reason or "2100-01-01" in reason
    assert batch["status"] == "rejected" and batch["problem"]["errors"] == [{"field": "occurred_at", "reason": reason}]
    assert all(b["errors"][0]["reason"] == reason for b in bounds)
    assert row_counts(app) == before


# --- rate limit -----------------------------------------------------------------------------


def test_a_key_past_its_burst_gets_429_with_retry_after_and_other_keys_do_not(app_with, portal) -> None:  # noqa: ANN001
    app, admin = app_with(rate_limit_per_second=0.01, rate_limit_burst=3)
    other = Client(portal, app, {"Authorization": f"Bearer {issue_key(app, 'erp', ['read'])}"})

    answers = [admin.get("/v1/customers") for _ in range(4)]

    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    body = assert_problem(answers[3], 429)
    assert answers[3].headers["retry-after"] == "100"
    assert "3 requests" in body["detail"]
    assert other.get("/v1/customers").status_code == 200
    other.close()


def test_bad_keys_get_no_bucket_and_hooks_are_limited_per_form(app_with, portal) -> None:  # noqa: ANN001
    app, _ = app_with(rate_limit_per_second=0.01, rate_limit_burst=2)
    limiter = app.state.context.limiter
    stranger = Client(portal, app, {})

    for i in range(20):
        assert_problem(stranger.get("/v1/customers", headers={"Authorization": f"Bearer rk_guess-{i}"}), 401)
    hook = [stranger.post("/v1/hooks/forms/visit-report", json={}) for _ in range(3)]

    assert len(limiter) == 1  # refused deliveries' one bucket: a guessed key costs no memory
    assert [r.status_code for r in hook] == [401, 401, 429]
    # Another made-up form id gets no fresh burst: refused deliveries share one bucket.
    assert_problem(stranger.post("/v1/hooks/forms/signup", json={}), 429)
    for i in range(50):
        stranger.post(f"/v1/hooks/forms/made-up-{i}", json={})
    assert len(limiter) == 1
    stranger.close()


def test_forgeries_use_up_their_own_bucket_not_the_authentic_deliveries_of_the_form(app_with, portal, clock) -> None:  # noqa: ANN001
    app, admin = app_with(rate_limit_per_second=0.01, rate_limit_burst=2)
    form = admin.post("/v1/forms", json=form_body()).json()
    stranger = Client(portal, app, {})
    forged = signed(form, b"{}", "application/json", now=clock.now, secret="not-the-secret-but-long-enough")

    flood = [stranger.post(form["hook_path"], content=b"{}", headers=forged["headers"]) for _ in range(3)]
    body = b'{"not": "a typeform delivery"}'
    genuine = [stranger.post(form["hook_path"], content=body, headers=signed(form, body, "application/json", now=clock.now)["headers"]) for _ in range(3)]

    assert [r.status_code for r in flood] == [401, 401, 429]
    assert [r.status_code for r in genuine] == [202, 200, 429]  # its own burst of 2, then its own limit
    stranger.close()



def test_a_delivery_whose_check_fails_otherwise_is_charged_to_the_refused_bucket(app_with, portal, clock, monkeypatch) -> None:  # noqa: ANN001
    # Only a delivery that proved itself spends its form's bucket. A check that failed with
    # anything but "not authentic" (a 5,000-digit timestamp was a ValueError, a 500) spent
    # it, and let a stranger who knew only the form id lock the tool out (a hunt's find).
    app, admin = app_with(rate_limit_per_second=0.01, rate_limit_burst=2)
    form = admin.post("/v1/forms", json=form_body()).json()
    body = b'{"not": "a typeform delivery"}'
    headers = signed(form, body, "application/json", now=clock.now)["headers"]
    raw = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://rapport.test")

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the check broke")

    with monkeypatch.context() as patch:
        patch.setattr(forms_service, "verify", broken)
        failed = [portal.call(lambda: raw.post(form["hook_path"], content=body, headers=headers)) for _ in range(2)]
    genuine = portal.call(lambda: raw.post(form["hook_path"], content=body, headers=headers))
    portal.call(raw.aclose)

    assert [r.status_code for r in failed] == [500, 500]
    assert genuine.status_code == 202  # the form's own burst is untouched


def test_a_refused_delivery_says_the_same_whatever_failed(api, clock) -> None:  # noqa: ANN001
    # A stranger learns neither that a form exists nor how it is signed.
    form = api.post("/v1/forms", json=form_body()).json()
    wrong = signed(form, b"{}", "application/json", now=clock.now, secret="not-the-secret-but-long-enough")
    answers = [
        api.post("/v1/hooks/forms/no-such-form", content=b"{}", headers={"Content-Type": "application/json"}),
        api.post(form["hook_path"], content=b"{}", headers={"Content-Type": "application/json"}),  # no signature header
        api.post(form["hook_path"], content=b"{}", headers=wrong["headers"]),
    ]

    problems = [assert_problem(r, 401) for r in answers]
    assert all(p == problems[0] for p in problems), problems


def test_a_rate_of_zero_switches_the_limit_off(app_with) -> None:  # noqa: ANN001
    _, admin = app_with(rate_limit_per_second=0, rate_limit_burst=1)

    assert all(admin.get("/v1/customers").status_code == 200 for _ in range(5))


def test_a_bucket_refills_at_the_rate_and_the_number_of_buckets_is_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 2, max_buckets=3, clock=lambda: now[0])

    limiter.take("a")
    limiter.take("a")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a")
    now[0] += 0.5
    limiter.take("a")  # one token back after half a second at 2/s
    for caller in range(10):
        limiter.take(caller)

    assert refused.value.headers == {"Retry-After": "1"}
    assert len(limiter) == 3


# --- ids written as text ---------------------------------------------------------------------


@pytest.mark.parametrize("written", ["1_0", "+{id}", " {id}", "0{id}", "{id}.0", "{id} "])
def test_an_id_written_other_than_in_digits_is_422_and_changes_nothing(api, app, records, written: str) -> None:
    """pydantic read `1_0` as 10 and `+1`, `001`, `1.0` as 1: `PATCH /v1/customers/1_0`
    changed customer 10 (a hunt's find). openapi.md: an id is a positive integer."""
    before = row_counts(app)
    owner, the_event = written.format(id=records["owner"]), written.format(id=records["event"])
    version = api.get(f"/v1/customers/{records['owner']}").json()["version"]

    assert_problem(api.patch(f"/v1/customers/{owner}", json={"region": "华东"}), 422, "customer_id")
    assert_problem(api.post(f"/v1/events/{the_event}/retract", json={"reason": "错录"}), 422, "event_id")
    assert_problem(api.get("/v1/events", params={"customer_id": owner}), 422, "customer_id")
    assert_problem(api.post("/v1/events", json=event(records, customer_id=owner)), 422, "customer_id")

    assert row_counts(app) == before
    assert api.get(f"/v1/customers/{records['owner']}").json()["version"] == version
    assert api.get(f"/v1/events/{records['event']}").json()["retraction"] is None


def test_an_id_in_digits_is_read_in_a_body_as_in_a_path(api, records) -> None:
    r = api.post("/v1/events", json=event(records, customer_id=str(records["owner"])))
    assert r.status_code == 201, r.text
    assert r.json()["customer_id"] == records["owner"]
