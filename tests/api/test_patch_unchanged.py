"""PATCH of a customer or project that changes nothing keeps its version, ETag and
updated_at, as PUT by-ref does: other clients' If-Match stays valid. And what PATCH may
clear: an external_ref, as a record created without one has none."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.expectations import assert_problem


def read(api: Any, path: str) -> tuple[str, dict[str, Any]]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.headers["etag"], r.json()


def test_patching_a_customer_to_what_it_holds_keeps_its_version(api, clock) -> None:
    customer = api.create_customer("万科华东区域", "owner", rep="张三", region="上海", external_ref="ERP-C-001", tags=["重点"], contact={"person": "刘工"})
    path = f"/v1/customers/{customer['id']}"
    etag, before = read(api, path)
    clock.advance(minutes=5)

    for body in ({"rep": "张三"}, {"name": "万科华东区域", "region": "上海", "tags": ["重点"]}, {"external_ref": "ERP-C-001"}, {"contact": {"person": "刘工"}}, {}):
        r = api.patch(path, json=body, headers={"If-Match": etag})
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == etag, body
        assert r.json() == before, body

    # Another client's If-Match, read before, still holds.
    assert api.patch(path, json={"rep": "李强"}, headers={"If-Match": etag}).status_code == 200


def test_a_contact_member_sent_as_null_is_no_member(api) -> None:
    customer = api.create_customer("万科华东区域", "owner", contact={"person": "刘工"})
    path = f"/v1/customers/{customer['id']}"
    etag, before = read(api, path)

    r = api.patch(path, json={"contact": {"person": "刘工", "phone": None}})

    assert r.status_code == 200, r.text
    assert r.headers["etag"] == etag
    assert r.json()["contact"] == {"person": "刘工"}


def test_a_patch_changing_one_field_among_unchanged_ones_moves_the_version_once(api, clock) -> None:
    customer = api.create_customer("万科华东区域", "owner", rep="张三")
    path = f"/v1/customers/{customer['id']}"
    clock.advance(minutes=5)

    r = api.patch(path, json={"rep": "张三", "region": "浙江"})

    assert r.status_code == 200, r.text
    assert r.json()["version"] == customer["version"] + 1
    assert r.json()["updated_at"] != customer["updated_at"]


def test_patching_a_project_to_what_it_holds_keeps_its_version(api, clock) -> None:
    owner = api.create_customer("业主", "owner")
    project = api.create_project(owner["id"], external_ref="SH/2026/118", amount=2150000.5, expected_close="2027-06-30", rep="王芳", tags=["学校"])
    path = f"/v1/projects/{project['id']}"
    etag, before = read(api, path)
    clock.advance(minutes=5)

    for body in ({"rep": "王芳"}, {"amount": 2150000.5, "expected_close": "2027-06-30"}, {"name": project["name"], "external_ref": "SH/2026/118", "tags": ["学校"]}, {"region": None}):
        r = api.patch(path, json=body, headers={"If-Match": etag})
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == etag, body
        assert r.json() == before, body

    changed = api.patch(path, json={"rep": "李强"}, headers={"If-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_an_external_ref_can_be_cleared_and_set_again(api) -> None:
    customer = api.create_customer("万科华东区域", "owner", external_ref="ERP-C-001")
    path = f"/v1/customers/{customer['id']}"

    cleared = api.patch(path, json={"external_ref": None})

    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["external_ref"] is None
    assert_problem(api.get("/v1/customers/by-ref/ERP-C-001"), 404)
    again = api.patch(path, json={"external_ref": "ERP-C-001"})
    assert again.status_code == 200 and again.json()["external_ref"] == "ERP-C-001"


def test_a_project_external_ref_can_be_cleared(api) -> None:
    owner = api.create_customer("业主", "owner")
    project = api.create_project(owner["id"], external_ref="SH/2026/118")

    cleared = api.patch(f"/v1/projects/{project['id']}", json={"external_ref": None})

    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["external_ref"] is None
    assert_problem(api.get("/v1/projects/by-ref/SH%2F2026%2F118"), 404)


def test_tags_cannot_be_null_but_can_be_emptied(api) -> None:
    customer = api.create_customer("万科华东区域", "owner", tags=["重点"])
    path = f"/v1/customers/{customer['id']}"

    assert_problem(api.patch(path, json={"tags": None}), 422, "tags")
    emptied = api.patch(path, json={"tags": []})
    assert emptied.status_code == 200 and emptied.json()["tags"] == []


@pytest.mark.parametrize("resource", ["customers", "projects"])
def test_a_tag_given_twice_is_kept_once_and_changes_nothing(api, resource: str) -> None:
    owner = api.create_customer("万科华东区域", "owner")["id"]
    body = {"name": "x", "kind": "owner"} if resource == "customers" else {"name": "x", "owner_id": owner}
    created = api.put(f"/v1/{resource}/by-ref/T-1", json={**body, "tags": ["b", "a", " a", "a"]})
    assert created.status_code == 201 and created.json()["tags"] == ["b", "a"], created.text

    again = api.put(f"/v1/{resource}/by-ref/T-1", json={**body, "tags": ["b", "a"]})
    assert again.status_code == 200 and again.json()["version"] == created.json()["version"]
    patched = api.patch(f"/v1/{resource}/{created.json()['id']}", json={"tags": ["b", "b", "a"]})
    assert patched.json()["version"] == created.json()["version"] and patched.json()["tags"] == ["b", "a"]


@pytest.mark.parametrize("resource", ["customers", "projects"])
def test_the_same_tags_in_another_order_change_nothing(api, resource: str) -> None:
    """A hunt's find: an ERP that exports tags in no fixed order moved the version (and made
    every other caller's If-Match stale) on each sync."""
    owner = api.create_customer("万科华东区域", "owner")["id"]
    body = {"name": "x", "kind": "owner"} if resource == "customers" else {"name": "x", "owner_id": owner}
    created = api.put(f"/v1/{resource}/by-ref/T-2", json={**body, "tags": ["无锡", "a"]})
    assert created.status_code == 201, created.text

    again = api.put(f"/v1/{resource}/by-ref/T-2", json={**body, "tags": ["a", "无锡"]})
    patched = api.patch(f"/v1/{resource}/{created.json()['id']}", json={"tags": ["a", "无锡"]})
    changed = api.patch(f"/v1/{resource}/{created.json()['id']}", json={"tags": ["a"]})

    assert (again.json()["version"], again.json()["tags"]) == (created.json()["version"], ["无锡", "a"])
    assert again.headers["etag"] == created.headers["etag"] and patched.json()["version"] == created.json()["version"]
    assert (changed.json()["version"], changed.json()["tags"]) == (created.json()["version"] + 1, ["a"])


@pytest.mark.parametrize("field", ["rep", "region", "tags"])
@pytest.mark.parametrize("text", ["\u200b", "\ufeff\u200b", "\u3000\u200b"])
def test_a_rep_region_or_tag_with_nothing_visible_is_refused(api, field: str, text: str) -> None:
    """A hunt's find: a lone zero-width space was stored, looked empty, and was a rep of its
    own to the list's exact filter. A name was refused so already."""
    value: Any = [text] if field == "tags" else text

    r = api.post("/v1/customers", json={"name": "上海建工安装有限公司", "kind": "installer", field: value})

    problem = assert_problem(r, 422, f"{field}.0" if field == "tags" else field)
    assert problem["errors"][0]["reason"].endswith("must hold a visible character")
