"""Edge cases of partial updates and of who acted."""

from __future__ import annotations

import pytest

from tests.api.expectations import assert_problem


def test_patching_a_name_to_null_is_refused_and_changes_nothing(api) -> None:
    customer = api.create_customer("上海建工安装有限公司", "installer")
    r = api.patch(f"/v1/customers/{customer['id']}", json={"name": None})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "name"
    assert api.get(f"/v1/customers/{customer['id']}").json()["name"] == "上海建工安装有限公司"

    owner = api.create_customer("绿城置业", "owner")
    project = api.create_project(owner["id"])
    r = api.patch(f"/v1/projects/{project['id']}", json={"name": None, "rep": None})
    assert r.status_code == 422


def test_patching_contact_to_null_clears_it(api) -> None:
    customer = api.create_customer("绿城置业", "owner", contact={"person": "张主任"})
    r = api.patch(f"/v1/customers/{customer['id']}", json={"contact": None})
    assert r.status_code == 200 and r.json()["contact"] == {}


def test_a_chinese_actor_name_is_kept_as_sent(api) -> None:
    owner = api.create_customer("绿城置业", "owner")
    r = api.post(
        "/v1/events",
        json={"type": "visit", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"reception": "neutral"}},
        headers={"X-Actor": "王芳".encode("utf-8")},  # raw UTF-8 bytes, as a phone app sends them
    )
    assert r.status_code == 201 and r.json()["actor"] == "王芳"


@pytest.mark.parametrize(("length", "status"), [(100, 201), (101, 422)])
def test_an_actor_name_is_measured_in_characters_not_in_the_headers_bytes(api, length: int, status: int) -> None:
    owner = api.create_customer("绿城置业", "owner")
    r = api.post(
        "/v1/events",
        json={"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00"},
        headers={"X-Actor": ("王" * length).encode("utf-8")},  # 3 bytes each
    )
    assert r.status_code == status, r.text
    if status == 201:
        assert r.json()["actor"] == "王" * length
    else:
        assert_problem(r, 422, "x-actor")


@pytest.mark.parametrize("actor", ["system", "System", "key:bootstrap", "KEY:reporting", "form:visit-report", " key:x"])
def test_an_actor_rapport_records_itself_cannot_be_sent(api, actor: str) -> None:
    # `system`, `key:<name>` and `form:<id>` are written by Rapport alone: a write key that
    # sent them passed its events off as the service's or another key's (a hunt's find).
    owner = api.create_customer("绿城置业", "owner")
    before = len(api.get("/v1/events").json()["items"])
    r = api.post(
        "/v1/events",
        json={"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00"},
        headers={"X-Actor": actor},
    )
    assert "Rapport records itself" in assert_problem(r, 422, "x-actor")["errors"][0]["reason"]
    assert len(api.get("/v1/events").json()["items"]) == before


@pytest.mark.parametrize("actor", ["systems", "key-account.li", "王芳"])
def test_an_actor_that_only_looks_like_one_rapport_records_is_kept(api, actor: str) -> None:
    owner = api.create_customer("绿城置业", "owner")
    r = api.post(
        "/v1/events",
        json={"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00"},
        headers={"X-Actor": actor.encode("utf-8")},
    )
    assert r.status_code == 201 and r.json()["actor"] == actor


def test_a_form_source_is_the_forms_own_and_an_api_write_cannot_take_it(api) -> None:
    # A write key that posted source form:<id> with the form's next delivery id (金数据's
    # count up) made the real delivery find "its" event stored and drop its answers.
    owner = api.create_customer("绿城置业", "owner")
    event = {"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "source": "form:visit-report", "external_id": "Vk3Pq8:129#0"}

    single = api.post("/v1/events", json=event)
    batch = api.post("/v1/events/batch", json=[event, {**event, "source": "jinshuju-relay"}])

    assert "form's own deliveries" in assert_problem(single, 422, "source")["errors"][0]["reason"]
    assert batch.status_code == 200, batch.text
    assert [item["status"] for item in batch.json()["results"]] == ["rejected", "created"]
    assert [e["source"] for e in api.get("/v1/events").json()["items"]] == ["jinshuju-relay"]
