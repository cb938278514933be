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
