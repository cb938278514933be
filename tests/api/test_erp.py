"""The ERP's paths: upsert customers and projects by the ERP's code, name subjects by code
in events, and bulk events through /v1/events/batch (JSON array or NDJSON)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.expectations import all_pages, assert_problem, stored_state
from tests.api.scenarios import at, level

# --- upsert by external_ref ----------------------------------------------------------------


def test_put_customer_by_ref_creates_then_updates_and_a_rerun_changes_nothing(api) -> None:
    body = {"name": "仁济医院基建处", "kind": "owner", "region": "上海", "contact": {"person": "王伟", "phone": "13912345678"}, "tags": ["医院"]}

    created = api.put("/v1/customers/by-ref/C-0001", json=body)
    assert created.status_code == 201, created.text
    c = created.json()
    assert (c["external_ref"], c["name"], c["region"], c["version"]) == ("C-0001", "仁济医院基建处", "上海", 1)
    assert created.headers["location"] == f"/v1/customers/{c['id']}"
    assert created.headers["etag"] == f'"customer-{c["id"]}-v1"'

    again = api.put("/v1/customers/by-ref/C-0001", json=body)
    assert again.status_code == 200
    assert again.json() == c  # the nightly sync re-run: same version, same record

    changed = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院(东院)基建处", "kind": "owner"})
    assert changed.status_code == 200
    d = changed.json()
    assert (d["id"], d["name"], d["version"]) == (c["id"], "仁济医院(东院)基建处", 2)
    # PUT is the whole record: what the body leaves out is cleared.
    assert (d["region"], d["contact"], d["tags"]) == (None, {}, [])
    assert [x["external_ref"] for x in all_pages(api, "/v1/customers")] == ["C-0001"]


def test_a_ref_with_surrounding_spaces_is_refused_in_the_path(api) -> None:
    assert_problem(api.put("/v1/customers/by-ref/%20C-1%20", json={"name": "x", "kind": "owner"}), 422, "external_ref")
    assert api.get("/v1/customers").json()["items"] == []


@pytest.mark.parametrize(
    "ref",
    [
        "C-1\nC-2", "C\t1", "C\x7f1",
        # The C1 block (U+0085 is a line break to Python), and the line and paragraph
        # separators: stored before (a hunt's find).
        "C1\x85X", "C1\x9bX", "C\u20281",
        # Invisible: "\u200bC-1" looked like "C-1" and was another customer.
        "\u200bC-1", "C-\u200d1", "\ufeffC-1", "C-1\u202e",
    ],
)
def test_a_ref_with_a_control_character_is_refused_and_nothing_is_stored(api, ref: str) -> None:
    # No /by-ref/{external_ref} path could ever find such a customer again.
    assert_problem(api.post("/v1/customers", json={"name": "x", "kind": "owner", "external_ref": ref}), 422, "external_ref")
    assert api.get("/v1/customers").json()["items"] == []


@pytest.mark.parametrize("path", ["/v1/customers/by-ref/CTL%01X", "/v1/customers/by-ref/a%09b", "/v1/customers/by-ref/C%7F1", "/v1/customers/by-ref/C1%C2%85X", "/v1/customers/by-ref/%E2%80%8BC-1"])
def test_a_ref_with_a_control_character_is_refused_in_the_path_too(api, path: str) -> None:
    # Stored, it could never be named by an event's customer_ref, which refuses it.
    assert_problem(api.put(path, json={"name": "x", "kind": "owner"}), 422, "external_ref")
    assert api.get("/v1/customers").json()["items"] == []


@pytest.mark.parametrize("name", ["\u200b", "\ufeff", " \u200b\u3000", "\u2028"])
def test_a_name_with_nothing_visible_is_refused_as_one_of_spaces_is(api, name: str) -> None:
    assert_problem(api.post("/v1/customers", json={"name": name, "kind": "owner"}), 422, "name")
    customer = api.create_customer("上海建工安装有限公司", "installer")
    assert_problem(api.patch(f"/v1/customers/{customer['id']}", json={"name": name}), 422, "name")
    assert [c["name"] for c in api.get("/v1/customers").json()["items"]] == ["上海建工安装有限公司"]


@pytest.mark.parametrize("name", ["👨\u200d👩\u200d👧 家装", "A\u200bB"])
def test_a_name_with_an_invisible_character_among_visible_ones_is_kept(api, name: str) -> None:
    # An emoji family is joined by zero-width joiners: a name is free text, unlike a code.
    assert api.post("/v1/customers", json={"name": name, "kind": "owner"}).json()["name"] == name


@pytest.mark.parametrize("resource", ["customers", "projects"])
def test_a_ref_in_another_encoding_than_utf8_is_refused_and_names_no_record(api, resource: str) -> None:
    """GBK's 中 (%D6%D0) and 国 (%B9%FA) are not UTF-8: the server would read each as
    U+FFFD U+FFFD, and the two codes would name one record. Each is refused, stores nothing
    and finds nothing, while the same characters in UTF-8, and a code that really holds
    U+FFFD, are codes of their own."""
    owner = api.create_customer("仁济医院基建处", "owner")["id"]
    body = {"name": "x", "kind": "owner"} if resource == "customers" else {"name": "x", "owner_id": owner}
    listed_before = api.get(f"/v1/{resource}").json()["items"]

    for gbk in ("GBK-%D6%D0", "GBK-%B9%FA"):
        assert_problem(api.put(f"/v1/{resource}/by-ref/{gbk}", json=body), 422, "path")
        assert_problem(api.get(f"/v1/{resource}/by-ref/{gbk}"), 422, "path")
    assert api.get(f"/v1/{resource}").json()["items"] == listed_before

    zhong = api.put(f"/v1/{resource}/by-ref/UTF-%E4%B8%AD", json=body)
    replacement = api.put(f"/v1/{resource}/by-ref/UTF-%EF%BF%BD", json=body)
    assert zhong.status_code == replacement.status_code == 201, (zhong.text, replacement.text)
    assert zhong.json()["external_ref"] == "UTF-中" and replacement.json()["external_ref"] == "UTF-\ufffd"
    assert zhong.json()["id"] != replacement.json()["id"]


def test_get_customer_by_ref_and_refs_with_a_slash(api) -> None:
    r = api.put("/v1/customers/by-ref/SH%2F2026%2F17", json={"name": "上海建工安装有限公司", "kind": "installer"})
    assert r.status_code == 201, r.text
    assert r.json()["external_ref"] == "SH/2026/17"
    got = api.get("/v1/customers/by-ref/SH%2F2026%2F17")
    assert got.status_code == 200 and got.json()["id"] == r.json()["id"]
    assert got.headers["etag"] == r.headers["etag"]
    assert_problem(api.get("/v1/customers/by-ref/NOPE"), 404)


def test_put_customer_cannot_change_its_kind(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    r = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "installer"})
    assert_problem(r, 422, "kind")
    assert api.get("/v1/customers/by-ref/C-0001").json()["kind"] == "owner"


def test_put_customer_checks_if_match(api) -> None:
    first = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    api.put("/v1/customers/by-ref/C-0001", json={"name": "renamed", "kind": "owner"})
    stale = api.put("/v1/customers/by-ref/C-0001", json={"name": "again", "kind": "owner"}, headers={"If-Match": first.headers["etag"]})
    assert_problem(stale, 412)
    assert_problem(api.put("/v1/customers/by-ref/C-0002", json={"name": "x", "kind": "owner"}, headers={"If-Match": first.headers["etag"]}), 412)
    assert api.get("/v1/customers/by-ref/C-0001").json()["name"] == "renamed"
    fresh = api.get("/v1/customers/by-ref/C-0001").headers["etag"]
    assert api.put("/v1/customers/by-ref/C-0001", json={"name": "again", "kind": "owner"}, headers={"If-Match": fresh}).status_code == 200


def test_put_with_if_none_match_star_creates_but_never_replaces(api) -> None:
    """`If-None-Match: *` is the standard "create unless it exists" (RFC 9110 §13.1.2); it
    was ignored, and such a PUT replaced the stored customer, clearing what it left out."""
    created = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner", "region": "上海"}, headers={"If-None-Match": "*"})
    assert created.status_code == 201
    again = api.put("/v1/customers/by-ref/C-0001", json={"name": "OVERWRITTEN", "kind": "owner"}, headers={"If-None-Match": "*"})
    assert_problem(again, 412)
    assert "exists" in again.json()["detail"]
    stored = api.get("/v1/customers/by-ref/C-0001")
    assert (stored.json()["name"], stored.json()["region"], stored.headers["etag"]) == ("仁济医院基建处", "上海", created.headers["etag"])
    project = api.put("/v1/projects/by-ref/P-1", json={"name": "新门诊楼", "owner_ref": "C-0001"}, headers={"If-None-Match": "*"})
    assert project.status_code == 201, project.text
    assert_problem(api.put("/v1/projects/by-ref/P-1", json={"name": "x", "owner_ref": "C-0001"}, headers={"If-None-Match": "*"}), 412)
    assert api.get("/v1/projects/by-ref/P-1").json()["name"] == "新门诊楼"


def test_put_with_if_none_match_tags_replaces_unless_the_record_is_still_at_one(api) -> None:
    first = api.put("/v1/customers/by-ref/C-0001", json={"name": "v1", "kind": "owner"}).headers["etag"]
    # The stored record is at one of the listed tags (weak or strong): 412, nothing changed.
    for header in (first, f"W/{first}", f'"customer-999-v1", {first}'):
        assert_problem(api.put("/v1/customers/by-ref/C-0001", json={"name": "v2", "kind": "owner"}, headers={"If-None-Match": header}), 412)
    assert api.get("/v1/customers/by-ref/C-0001").json()["name"] == "v1"
    # At none of them (another record's, another kind's, an older version): the write goes ahead.
    other = '"customer-999-v1", "project-1-v1"'
    assert api.put("/v1/customers/by-ref/C-0001", json={"name": "v2", "kind": "owner"}, headers={"If-None-Match": other}).status_code == 200
    assert api.put("/v1/customers/by-ref/C-0001", json={"name": "v3", "kind": "owner"}, headers={"If-None-Match": first}).status_code == 200
    assert api.get("/v1/customers/by-ref/C-0001").json()["name"] == "v3"
    # Several lines are one list (RFC 9110 §5.3): only the first was read, and the PUT went ahead.
    now = api.get("/v1/customers/by-ref/C-0001").headers["etag"]
    for second in (now, "*"):
        lines = [("If-None-Match", '"customer-999-v1"'), ("If-None-Match", second)]
        r = api.put("/v1/customers/by-ref/C-0001", json={"name": "v4", "kind": "owner"}, headers=lines)
        assert r.status_code == (412 if second == now else 422), r.text  # `*` inside a list is no list of ETags
    assert api.get("/v1/customers/by-ref/C-0001").json()["name"] == "v3"


@pytest.mark.parametrize("header", ["customer-1-v1", '"customer-1-v1" "x"', "", '*, "customer-1-v1"'])
def test_put_refuses_an_if_none_match_that_is_neither_star_nor_etags(api, header: str) -> None:
    assert_problem(api.put("/v1/customers/by-ref/C-0001", json={"name": "x", "kind": "owner"}, headers={"If-None-Match": header}), 422, "If-None-Match")
    assert_problem(api.get("/v1/customers/by-ref/C-0001"), 404)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "owner"}, "name"),
        ({"name": "x", "kind": "supplier"}, "kind"),
        ({"name": "x", "kind": "owner", "external_ref": "C-9"}, "external_ref"),  # the path names it
        ({"name": "x", "kind": "owner", "level": 4}, "level"),  # no mass assignment
    ],
)
def test_put_customer_refuses_bad_bodies_and_stores_nothing(api, body: dict[str, Any], field: str) -> None:
    assert_problem(api.put("/v1/customers/by-ref/C-0001", json=body), 422, field)
    assert_problem(api.get("/v1/customers/by-ref/C-0001"), 404)


def test_put_project_by_ref_names_its_owner_by_ref_and_the_owner_cannot_change(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    other = api.put("/v1/customers/by-ref/C-0002", json={"name": "第六人民医院基建处", "kind": "owner"}).json()
    body = {"name": "新门诊楼暖通工程", "owner_ref": "C-0001", "amount": 3_800_000, "expected_close": "2027-03-31"}

    created = api.put("/v1/projects/by-ref/P-2026-001", json=body)
    assert created.status_code == 201, created.text
    p = created.json()
    assert (p["external_ref"], p["amount"], p["expected_close"], p["heat"]["percent"]) == ("P-2026-001", 3_800_000, "2027-03-31", 0)
    assert api.put("/v1/projects/by-ref/P-2026-001", json=body).json() == p
    assert api.put("/v1/projects/by-ref/P-2026-001", json={**body, "owner_ref": None, "owner_id": p["owner_id"]}).json()["version"] == 1

    moved = api.put("/v1/projects/by-ref/P-2026-001", json={**body, "owner_ref": "C-0002"})
    assert_problem(moved, 422, "owner_ref")
    assert_problem(api.put("/v1/projects/by-ref/P-2026-001", json={**body, "owner_ref": None, "owner_id": other["id"]}), 422, "owner_id")
    assert api.get("/v1/projects/by-ref/P-2026-001").json()["owner_id"] == p["owner_id"] != other["id"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x"}, "body"),  # no owner at all
        ({"name": "x", "owner_id": 1, "owner_ref": "C-0001"}, "body"),
        ({"name": "x", "owner_ref": "C-404"}, "owner_ref"),
    ],
)
def test_put_project_needs_exactly_one_known_owner(api, body: dict[str, Any], field: str) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    assert_problem(api.put("/v1/projects/by-ref/P-1", json=body), 422, field)
    assert_problem(api.get("/v1/projects/by-ref/P-1"), 404)


# --- events naming subjects by reference -------------------------------------------------------


def test_events_may_name_customer_and_project_by_ref(api) -> None:
    owner = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"}).json()
    project = api.put("/v1/projects/by-ref/P-1", json={"name": "新门诊楼", "owner_ref": "C-0001"}).json()
    e = api.event("visit", customer_ref="C-0001", project_ref="P-1", attributes={"reception": "welcoming"})
    assert (e["customer_id"], e["project_id"]) == (owner["id"], project["id"])


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"customer_ref": "C-404"}, "customer_ref"),
        ({"customer_ref": "C-0001", "customer_id": 1}, "customer_ref"),
        ({"customer_ref": "C-0001", "project_ref": "P-404"}, "project_ref"),
    ],
)
def test_events_with_unknown_or_doubled_refs_are_refused(api, fields: dict[str, Any], field: str) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    r = api.post("/v1/events", json={"type": "visit", "occurred_at": at(5), "attributes": {"reception": "neutral"}, **fields})
    assert_problem(r, 422, field)
    assert api.get("/v1/events").json()["items"] == []


@pytest.mark.parametrize(
    ("type_", "attributes", "field", "reason"),
    [
        ("tender_brand", {"status": "listed"}, "customer_ref", "is about a project only; remove customer_ref"),
        ("bid_joined", {}, "customer_ref", "needs an installer, and this customer is an owner"),
        ("company_introduced", {}, "project_ref", "is about a customer only; remove project_ref"),
    ],
)
def test_an_event_by_ref_is_refused_naming_the_ref_it_sent(api, type_: str, attributes: dict[str, Any], field: str, reason: str) -> None:
    # A hunt's phone form highlighted nothing: the problems named customer_id / project_id,
    # fields the request never had.
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    api.put("/v1/projects/by-ref/P-1", json={"name": "新门诊楼", "owner_ref": "C-0001"})
    body = {"type": type_, "customer_ref": "C-0001", "project_ref": "P-1", "occurred_at": at(5), "attributes": attributes}
    problem = assert_problem(api.post("/v1/events", json=body), 422, field)
    assert [e["reason"] for e in problem["errors"] if e["field"] == field] == [f"a {type_} event {reason}"]
    assert api.get("/v1/events").json()["items"] == []


# --- batches -----------------------------------------------------------------------------------


def _owner_level_one_batch(ref: str = "C-0001") -> list[dict[str, Any]]:
    """The rulebook's example 1 (O1.1–O1.5, three visits) as ERP items."""
    items = [
        ("materials_sent", 1, {"items": ["samples", "credentials"]}),
        ("company_introduced", 2, {}),
        ("contact_obtained", 3, {}),
        ("impression_confirmed", 4, {}),
        ("visit", 5, {"reception": "welcoming"}),
        ("visit", 6, {"reception": "neutral"}),
        ("visit", 7, {"reception": "neutral"}),
    ]
    return [
        {"type": t, "customer_ref": ref, "occurred_at": at(day), "attributes": attrs, "source": "erp", "external_id": f"{ref}-E{day}"}
        for t, day, attrs in items
    ]


def test_batch_stores_each_item_and_regrades_each_subject_once(api) -> None:
    owner = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"}).json()
    r = api.post("/v1/events/batch", json=_owner_level_one_batch())
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["created"], out["duplicate"], out["rejected"]) == (7, 0, 0)
    assert [x["index"] for x in out["results"]] == list(range(7))
    assert {x["status"] for x in out["results"]} == {"created"}
    assert out["effects"] == [{"subject": "customer", "id": owner["id"], "metric": "relationship_level", "old": 0, "new": 1}]

    history = all_pages(api, f"/v1/customers/{owner['id']}/history")
    assert len(history) == 1  # one re-grade for the whole batch, not seven
    assert history[0]["trigger"] == {"kind": "batch", "event_ids": [x["id"] for x in out["results"]]}
    events = all_pages(api, "/v1/events")
    assert [(e["source"], e["external_id"], e["customer_id"]) for e in events] == [("erp", f"C-0001-E{d}", owner["id"]) for d in range(1, 8)]


def test_a_batch_gives_the_grades_its_events_give_one_by_one(api) -> None:
    one = api.put("/v1/customers/by-ref/ONE", json={"name": "逐条", "kind": "owner"}).json()
    many = api.put("/v1/customers/by-ref/MANY", json={"name": "批量", "kind": "owner"}).json()
    for item in _owner_level_one_batch("ONE"):
        assert api.post("/v1/events", json=item).status_code == 201
    api.post("/v1/events/batch", json=_owner_level_one_batch("MANY"))
    a, b = api.get(f"/v1/customers/{one['id']}").json(), api.get(f"/v1/customers/{many['id']}").json()
    assert a["relationship"]["level"] == b["relationship"]["level"] == 1
    assert [(c["id"], c["met"], len(c["evidence"])) for c in a["relationship"]["criteria"]] == [
        (c["id"], c["met"], len(c["evidence"])) for c in b["relationship"]["criteria"]
    ]


def test_a_batch_sent_twice_changes_nothing_the_second_time(api) -> None:
    owner = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"}).json()
    first = api.post("/v1/events/batch", json=_owner_level_one_batch()).json()
    before = stored_state(api, customers=(owner["id"],))

    second = api.post("/v1/events/batch", json=_owner_level_one_batch())
    assert second.status_code == 200
    out = second.json()
    assert (out["created"], out["duplicate"], out["rejected"], out["effects"]) == (0, 7, 0, [])
    assert [x["id"] for x in out["results"]] == [x["id"] for x in first["results"]]
    assert stored_state(api, customers=(owner["id"],)) == before


def test_bad_items_in_the_middle_are_rejected_and_the_rest_stored(api) -> None:
    owner = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"}).json()
    items = _owner_level_one_batch()
    items.insert(2, {**items[2], "external_id": "BAD-1", "type": "teleport"})
    items.insert(4, {**items[4], "external_id": "BAD-2", "customer_ref": "C-404"})
    items.insert(5, "not an object")
    items.insert(6, {**items[6], "external_id": None})
    items.insert(7, {**items[7], "external_id": "BAD-3", "attributes": {"reception": "ecstatic"}})
    items.insert(8, {**items[8], "external_id": "BAD-4", "colour": "red"})

    r = api.post("/v1/events/batch", json=items)
    assert r.status_code == 200, r.text
    out = r.json()
    statuses = [x["status"] for x in out["results"]]
    assert statuses == ["created", "created", "rejected", "created", "rejected", "rejected", "rejected", "rejected", "rejected"] + ["created"] * 4
    fields = {x["index"]: {e["field"] for e in x["problem"]["errors"]} for x in out["results"] if x["status"] == "rejected"}
    assert fields == {2: {"type"}, 4: {"customer_ref"}, 5: {""}, 6: {"external_id"}, 7: {"attributes.reception"}, 8: {"colour"}}
    assert all(x["problem"]["status"] == 422 for x in out["results"] if x["status"] == "rejected")
    assert (out["created"], out["rejected"]) == (7, 6)
    assert level(api, owner["id"]) == 1
    assert len(all_pages(api, "/v1/events")) == 7


def test_an_atomic_batch_with_a_bad_item_stores_nothing(api) -> None:
    owner = api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"}).json()
    items = _owner_level_one_batch()
    items[3] = {**items[3], "occurred_at": "2031-01-01T00:00:00+08:00"}
    before = stored_state(api, customers=(owner["id"],))

    r = api.post("/v1/events/batch", params={"atomic": "true"}, json=items)
    assert_problem(r, 422, "[3].occurred_at")
    assert stored_state(api, customers=(owner["id"],)) == before

    good = api.post("/v1/events/batch", params={"atomic": "true"}, json=_owner_level_one_batch())
    assert good.status_code == 200 and good.json()["created"] == 7



def test_an_atomic_batch_says_how_many_problems_it_has_when_it_lists_twenty(api) -> None:
    # Ten items of three problems each: the 422 listed twenty and said nothing of the
    # other ten (a hunt's find).
    bad = [{"type": "visit", "customer_id": 999, "occurred_at": "2099-12-01T10:00:00+08:00", "attributes": {"reception": "x"}, "external_id": f"cnt{i}"} for i in range(10)]

    body = assert_problem(api.post("/v1/events/batch", params={"atomic": "true"}, json=bad), 422)

    assert body["detail"] == "10 of 10 items are not valid (30 problems, the first 20 listed); in an atomic batch nothing was stored"
    assert len(body["errors"]) == 20


def test_an_item_the_schema_refuses_is_told_of_its_missing_external_id_too(api) -> None:
    # Only the naive timestamp was said: fixed and re-sent, the item then lacked its
    # external_id (a hunt's find).
    owner = api.create_customer("仁济医院基建处", "owner")
    item = {"type": "contact_obtained", "customer_id": owner["id"], "occurred_at": "2026-12-01T10:00:00"}

    atomic = assert_problem(api.post("/v1/events/batch", params={"atomic": "true"}, json=[item]), 422)
    each = api.post("/v1/events/batch", json=[item]).json()["results"][0]

    assert [e["field"] for e in atomic["errors"]] == ["[0].occurred_at", "[0].external_id"]
    assert [e["field"] for e in each["problem"]["errors"]] == ["occurred_at", "external_id"]


def test_duplicates_inside_one_batch_count_once(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    items = _owner_level_one_batch()
    r = api.post("/v1/events/batch", json=items + [items[0], items[4]]).json()
    assert [x["status"] for x in r["results"]][-2:] == ["duplicate", "duplicate"]
    assert [x["id"] for x in r["results"]][-2:] == [r["results"][0]["id"], r["results"][4]["id"]]
    assert len(all_pages(api, "/v1/events")) == 7


@pytest.mark.parametrize("atomic", [False, True], ids=["non-atomic", "atomic"])
def test_a_repeated_pair_in_one_batch_is_a_duplicate_of_its_first_item_and_not_checked(api, atomic: bool) -> None:
    # The doc: a second item with the same source + external_id in the same batch is a
    # duplicate, not compared; so an atomic batch is not refused for what the repeat says.
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    first = {"type": "contact_obtained", "customer_ref": "C-0001", "occurred_at": at(1), "source": "erp", "external_id": "DUP-1"}
    repeat = {**first, "type": "visit", "attributes": {"reception": "no such reception"}}  # invalid on its own
    r = api.post("/v1/events/batch", params={"atomic": str(atomic).lower()}, json=[first, repeat])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created", "duplicate"]
    assert results[1]["id"] == results[0]["id"]
    assert [e["type"] for e in all_pages(api, "/v1/events")] == ["contact_obtained"]


def test_an_item_without_external_id_is_reported_with_its_other_problems(api) -> None:
    # openapi.md: an atomic batch's 422 lists every problem of every item, so the ERP fixes
    # them in one round.
    item = {"type": "visit", "customer_ref": "NOPE", "occurred_at": at(1), "attributes": {"reception": "bad"}, "source": "erp"}
    r = api.post("/v1/events/batch", params={"atomic": "true"}, json=[item])
    assert {e["field"] for e in assert_problem(r, 422)["errors"]} == {"[0].external_id", "[0].customer_ref", "[0].attributes.reception"}


def test_a_repeat_of_a_rejected_item_is_checked_on_its_own(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    bad = {"type": "visit", "customer_ref": "C-0001", "occurred_at": at(1), "attributes": {"reception": "no such reception"}, "source": "erp", "external_id": "DUP-2"}
    good = {**bad, "type": "contact_obtained", "attributes": {}}
    results = api.post("/v1/events/batch", json=[bad, good]).json()["results"]
    assert [x["status"] for x in results] == ["rejected", "created"]
    assert [e["type"] for e in all_pages(api, "/v1/events")] == ["contact_obtained"]


def test_ndjson_batches_report_a_malformed_line_in_its_place(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    lines = [json.dumps(i, ensure_ascii=False) for i in _owner_level_one_batch()]
    lines.insert(1, '{"type": "visit", ')
    body = ("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n").encode()
    r = api.post("/v1/events/batch", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["status"] for x in out["results"]] == ["created", "rejected"] + ["created"] * 6
    assert out["results"][1]["problem"]["errors"][0]["reason"].startswith("malformed JSON")


def test_erp_orders_are_order_placed_events_keyed_by_the_order_reference(api) -> None:
    installer = api.put("/v1/customers/by-ref/I-07", json={"name": "上海建工安装有限公司", "kind": "installer"}).json()
    order = {"type": "order_placed", "customer_ref": "I-07", "occurred_at": at(12), "attributes": {"amount": 268000, "order_ref": "SO-2026-1188"}, "source": "erp", "external_id": "SO-2026-1188"}
    first = api.post("/v1/events/batch", json=[order]).json()
    again = api.post("/v1/events/batch", json=[order]).json()
    assert [first["results"][0]["status"], again["results"][0]["status"]] == ["created", "duplicate"]
    events = all_pages(api, "/v1/events", customer_id=installer["id"], type="order_placed")
    assert [(e["attributes"]["amount"], e["external_id"]) for e in events] == [(268000, "SO-2026-1188")]


@pytest.mark.parametrize(
    "content, content_type, status, field",
    [
        (b"{}", "application/json", 422, "body"),
        (b"[]", "application/json", 422, "body"),
        (b"[{]", "application/json", 422, "body"),
        (b"type,occurred_at\nvisit,2026-11-19", "text/csv", 415, None),
        (json.dumps([{}] * 10_001).encode(), "application/json", 413, "body"),
        (b"{}\n" * 10_001, "application/x-ndjson", 413, "body"),
    ],
)
def test_batch_bodies_that_are_not_a_batch_are_refused(api, content: bytes, content_type: str, status: int, field: str | None) -> None:
    r = api.post("/v1/events/batch", content=content, headers={"Content-Type": content_type})
    assert_problem(r, status, *((field,) if field else ()))
    assert api.get("/v1/events").json()["items"] == []


def test_batch_body_size_is_limited_while_reading(app, api) -> None:
    app.state.context.settings.max_batch_bytes = 2048
    try:
        r = api.post("/v1/events/batch", json=_owner_level_one_batch() * 4)
        assert_problem(r, 413)
        assert "2048" in r.json()["detail"]
    finally:
        app.state.context.settings.max_batch_bytes = 16 * 1024 * 1024


def test_batch_with_idempotency_key_replays_the_first_answer(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    first = api.post("/v1/events/batch", json=_owner_level_one_batch(), headers={"Idempotency-Key": "sync-2026-11-20"})
    again = api.post("/v1/events/batch", json=_owner_level_one_batch(), headers={"Idempotency-Key": "sync-2026-11-20"})
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    other = api.post("/v1/events/batch", json=_owner_level_one_batch()[:2], headers={"Idempotency-Key": "sync-2026-11-20"})
    assert_problem(other, 422, "Idempotency-Key")


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (None, "text/csv", 415),  # the right items under a media type the batch does not take
        (b'[{"type": "visit"', "application/json", 422),  # malformed
        (b"", "application/json", 422),  # no items
    ],
    ids=["media-type", "malformed", "empty"],
)
def test_a_batch_body_the_server_cannot_read_leaves_its_idempotency_key_free(api, content: bytes | None, content_type: str, status: int) -> None:
    # As POST /v1/events, whose body fails validation before the key is taken: the ERP
    # corrects the request and retries under the same key (openapi.md).
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    good = json.dumps(_owner_level_one_batch()).encode()
    key = {"Idempotency-Key": "erp-orders-2026-11-21"}

    bad = api.post("/v1/events/batch", content=content if content is not None else good, headers={**key, "Content-Type": content_type})
    fixed = api.post("/v1/events/batch", content=good, headers={**key, "Content-Type": "application/json"})

    assert_problem(bad, status)
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["created"] == 7


def test_an_amount_with_more_decimals_than_cents_is_stored_rounded_and_a_resync_is_a_no_op(api) -> None:
    api.put("/v1/customers/by-ref/C-0001", json={"name": "仁济医院基建处", "kind": "owner"})
    body = {"name": "新门诊楼", "owner_ref": "C-0001", "amount": 1234.567}
    first = api.put("/v1/projects/by-ref/P-1", json=body).json()
    assert first["amount"] == 1234.57
    assert api.put("/v1/projects/by-ref/P-1", json=body).json()["version"] == first["version"]


@pytest.mark.parametrize(("amount", "reason"), [("1_000", "valid number"), (" 5 ", "valid number"), ("1e3", "valid number"), (float("nan"), "finite"), (float("inf"), "finite")])
def test_an_amount_is_a_finite_json_number(api, amount: object, reason: str) -> None:
    # A string was read as a number ("1_000" as 1000), and NaN was refused as "less than or
    # equal to 10000000000000". Python's JSON writes NaN and Infinity as such, as callers' may.
    owner = api.create_customer("仁济医院基建处", "owner")
    content = json.dumps({"name": "新门诊楼", "owner_id": owner["id"], "amount": amount})

    body = assert_problem(api.post("/v1/projects", content=content, headers={"Content-Type": "application/json"}), 422, "amount")

    assert reason in body["errors"][0]["reason"]
    assert api.get("/v1/projects").json()["items"] == []


def test_a_negative_zero_amount_is_answered_as_it_is_read_back(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")

    created = api.post("/v1/projects", content=b'{"name": "x", "owner_id": %d, "amount": -0.0}' % owner["id"], headers={"Content-Type": "application/json"})

    assert created.status_code == 201, created.text
    assert str(created.json()["amount"]) == str(api.get(f"/v1/projects/{created.json()['id']}").json()["amount"]) == "0.0"


def test_the_tag_limit_counts_the_tags_kept(api) -> None:
    # 25 times one tag is one tag: it was refused as "at most 20 items after validation".
    one = api.post("/v1/customers", json={"name": "仁济医院基建处", "kind": "owner", "tags": ["医院"] * 25})
    assert one.status_code == 201, one.text
    assert one.json()["tags"] == ["医院"]

    twenty = [f"t{i}" for i in range(20)]
    assert api.post("/v1/customers", json={"name": "x", "kind": "owner", "tags": [*twenty, "t0"]}).status_code == 201
    body = assert_problem(api.post("/v1/customers", json={"name": "y", "kind": "owner", "tags": [*twenty, "t20"]}), 422, "tags")
    assert body["errors"][0]["reason"] == "at most 20 distinct tags, not 21"


@pytest.mark.parametrize(("path", "status"), [("/v1/customers/by-ref/a%0Db", 422), ("/v1/customers/by-ref/a%0D", 422), ("/v1/customers/by-ref/a%0Ab", 404), ("/v1/customers/by-ref/a%0A", 404)])
def test_a_carriage_return_in_a_ref_is_refused_and_a_line_feed_reaches_no_route(api, path: str, status: int) -> None:
    assert_problem(api.put(path, json={"name": "x", "kind": "owner"}), status, *(("external_ref",) if status == 422 else ()))
    assert api.get("/v1/customers").json()["items"] == []


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_line_feed_at_the_end_of_a_path_names_nothing(api, method: str) -> None:
    # A route's pattern also matched before a last line feed: PUT …/by-ref/C-1%0A replaced
    # C-1, and GET /v1/customers/1%0A read customer 1 (the docs hunt's find).
    stored = api.put("/v1/customers/by-ref/C-1", json={"name": "仁济医院基建处", "kind": "owner", "region": "上海"}).json()

    for path in ("/v1/customers/by-ref/C-1%0A", f"/v1/customers/{stored['id']}%0A"):
        assert_problem(api.request(method, path, json={"name": "x", "kind": "owner"} if method == "PUT" else None), 404)

    assert api.get(f"/v1/customers/{stored['id']}").json()["region"] == "上海"
