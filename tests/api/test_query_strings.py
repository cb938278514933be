"""What a query string may carry: the parameters the operation takes, as UTF-8 text.
A misspelt filter, or one an operation does not have, answered every row as if it had
filtered them; a filter in GBK bytes searched for U+FFFD."""

from __future__ import annotations

import pytest

from tests.api.expectations import assert_problem, row_counts


@pytest.mark.parametrize(
    ("path", "unknown"),
    [
        ("/v1/projects?region=East", "region"),  # a customer's filter, not a project's
        ("/v1/customers?levle=3", "levle"),
        ("/v1/events?customer=1&type=visit", "customer"),
        ("/v1/customers/1?expand=history", "expand"),
        ("/v1/rulebook?version=2", "version"),
    ],
)
def test_a_query_parameter_the_operation_does_not_take_is_a_422_naming_it(api, path: str, unknown: str) -> None:
    api.create_customer("仁济医院基建处", "owner")

    body = assert_problem(api.get(path), 422, unknown)

    error = next(e for e in body["errors"] if e["field"] == unknown)
    assert error["in"] == "query"
    assert "takes no query parameter" in error["reason"]
    assert [e["field"] for e in body["errors"]] == [unknown]  # the known ones are not named


def test_the_refusal_lists_what_the_operation_takes(api) -> None:
    reason = api.get("/v1/projects?region=East").json()["errors"][0]["reason"]

    for name in ("rep", "stage", "q", "limit", "cursor"):
        assert name in reason


def test_a_write_with_an_unknown_query_parameter_stores_nothing(api, app) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    before = row_counts(app)

    r = api.post("/v1/events?dry_run=true", json={"type": "visit", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00"})

    assert_problem(r, 422, "dry_run")
    assert row_counts(app) == before



@pytest.mark.parametrize("query", ["limit=500&limit=2", "limit=2&limit=500", "kind=owner&kind=installer"])
def test_a_parameter_given_twice_is_a_422_not_its_last_value(api, query: str) -> None:
    # `?limit=500&limit=2` passed the limit's check as 2 (a hunt's find).
    api.create_customer("仁济医院基建处", "owner")
    name = query.split("=")[0]

    body = assert_problem(api.get(f"/v1/customers?{query}"), 422, name)

    assert body["errors"] == [{"field": name, "in": "query", "reason": "given 2 times: send it once"}]


def test_a_batch_told_atomic_and_not_stores_nothing(api, app) -> None:
    # `?atomic=true&atomic=false` ran non-atomic and stored the batch's valid item.
    owner = api.create_customer("仁济医院基建处", "owner")
    good = {"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "external_id": "q5-ok"}
    before = row_counts(app)

    r = api.post("/v1/events/batch?atomic=true&atomic=false", json=[good, {**good, "customer_id": 999, "external_id": "q5-bad"}])

    assert_problem(r, 422, "atomic")
    assert row_counts(app) == before


def test_the_key_is_checked_before_the_query(anonymous) -> None:
    assert_problem(anonymous.get("/v1/customers?levle=3"), 401)


def test_the_parameters_an_operation_takes_still_filter(api) -> None:
    api.create_customer("仁济医院基建处", "owner")
    installer = api.create_customer("上海建工安装有限公司", "installer")

    r = api.get("/v1/customers", params={"kind": "installer", "limit": 10})

    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()["items"]] == [installer["id"]]


@pytest.mark.parametrize("filter_", ["rep", "region", "q"])
def test_a_filter_value_is_trimmed_as_stored_values_are(api, filter_: str) -> None:
    # A stored rep, region or name is trimmed: a filter with the spaces a pasted value
    # carries found nothing.
    api.create_customer("仁济医院基建处", "owner")
    wanted = api.create_customer("上海建工安装有限公司", "installer", rep="S-0217", region="华东")
    value = {"rep": "S-0217", "region": "华东", "q": "建工"}[filter_]

    r = api.get("/v1/customers", params={filter_: f"  {value}\t"})

    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()["items"]] == [wanted["id"]]


def test_a_filter_of_spaces_only_filters_nothing_as_an_empty_one(api) -> None:
    api.create_customer("仁济医院基建处", "owner")

    assert len(api.get("/v1/customers", params={"q": "   "}).json()["items"]) == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("q=%D6%D0", "q"),  # GBK's 中
        ("rep=S-%B9%FA&kind=owner", "rep"),  # GBK's 国
        ("q=%E4%B8", "q"),  # UTF-8 cut short
    ],
)
def test_a_query_value_that_is_not_utf8_is_a_422_naming_it(api, query: str, field: str) -> None:
    body = assert_problem(api.get(f"/v1/customers?{query}"), 422, field)

    assert body["errors"][0]["in"] == "query"
    assert "not UTF-8" in body["errors"][0]["reason"]


def test_a_query_in_utf8_is_read_as_such(api) -> None:
    wanted = api.create_customer("中建三局安装工程有限公司", "installer")

    r = api.get("/v1/customers?q=%E4%B8%AD%E5%BB%BA")  # 中建

    assert [c["id"] for c in r.json()["items"]] == [wanted["id"]]


def test_an_actor_that_is_not_utf8_is_refused_and_stores_nothing(api, app) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    before = row_counts(app)

    r = api.post(
        "/v1/events",
        json={"type": "visit", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00"},
        headers={"X-Actor": "王芳".encode("gbk")},  # a client on a Chinese Windows
    )

    body = assert_problem(r, 422, "x-actor")
    assert "not UTF-8" in body["errors"][0]["reason"]
    assert row_counts(app) == before


@pytest.mark.parametrize("path", ["/v1/customers", "/v1/projects", "/v1/events", "/v1/inbox", "/v1/webhooks/subscriptions"])
@pytest.mark.parametrize("limit", ["01", "+5", "1_0", " 5", "5.0"])
def test_a_page_limit_is_its_digits_only_as_an_id_is(api, path: str, limit: str) -> None:
    """openapi.md: an id written `01` is a 422; a limit written so was read as 1."""
    r = api.get(path, params={"limit": limit})

    problem = assert_problem(r, 422, "limit")
    assert "written in digits only" in problem["errors"][0]["reason"]
    assert api.get(path, params={"limit": "5"}).status_code == 200


@pytest.mark.parametrize(("path", "name"), [("/v1/customers", "level"), ("/v1/projects", "heat")])
@pytest.mark.parametrize("written", ["0_0", "+0", " 0", "0.0", "00", "-0", "01"])
def test_a_level_or_heat_filter_is_its_digits_only(api, path: str, name: str, written: str) -> None:
    """A hunt's find: heat=3_0 was read as 30, level=+0 as 0."""
    problem = assert_problem(api.get(path, params={name: written}), 422, name)

    assert "whole number written in digits only" in problem["errors"][0]["reason"]
    assert api.get(path, params={name: "0"}).status_code == 200
