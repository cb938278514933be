"""/v1/customers: owners and installers, their relationship level, lists and updates."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.api.expectations import all_pages, assert_problem
from tests.api.scenarios import at, owner_level_one_events

OWNER_LEVEL_ONE = ["O1.1", "O1.2", "O1.3", "O1.4", "O1.5"]


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# --- create and read -----------------------------------------------------------------------


def test_created_customer_has_an_id_a_location_and_an_etag(api) -> None:
    r = api.post("/v1/customers", json={"name": "万科华东区域", "kind": "owner", "external_ref": "ERP-C-001", "region": "上海", "rep": "王芳"})

    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["id"], int)
    assert r.headers["location"] == f"/v1/customers/{body['id']}"
    assert r.headers["etag"]
    assert {k: body[k] for k in ("name", "kind", "external_ref", "region", "rep")} == {
        "name": "万科华东区域", "kind": "owner", "external_ref": "ERP-C-001", "region": "上海", "rep": "王芳",
    }  # fmt: skip


def test_new_owner_is_ungraded_and_told_what_level_one_needs(api, clock) -> None:
    owner = api.create_customer("万科华东区域", "owner")

    rel = api.get(f"/v1/customers/{owner['id']}").json()["relationship"]
    assert rel["level"] == 0
    assert rel["label"] == {"zh": "未定级", "en": "Ungraded"}
    assert rel["next"]["level"] == 1 and rel["next"]["missing"] == OWNER_LEVEL_ONE
    assert [c["id"] for c in rel["criteria"]][:5] == OWNER_LEVEL_ONE
    assert not any(c["met"] for c in rel["criteria"])
    assert parse(rel["since"]) == clock.now


def test_installer_is_graded_by_the_installer_criteria(api) -> None:
    installer = api.create_customer("上海建工安装", "installer")

    rel = api.get(f"/v1/customers/{installer['id']}").json()["relationship"]
    assert rel["next"]["missing"] == ["I1.1", "I1.2", "I1.3", "I1.4", "I1.5"]
    assert all(c["id"].startswith("I") for c in rel["criteria"])


def test_relationship_explains_each_criterion_with_its_evidence_and_the_gap(api, clock) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    events = owner_level_one_events(api, owner["id"])

    rel = api.get(f"/v1/customers/{owner['id']}").json()["relationship"]

    assert rel["level"] == 1 and rel["label"] == {"zh": "一级", "en": "Level I"}
    by_id = {c["id"]: c for c in rel["criteria"]}
    assert by_id["O1.1"] == {
        "id": "O1.1",
        "label": {"zh": "已经给客户送过公司的产品样本、公司资质等资料", "en": "Samples, credentials or other materials sent"},
        "step": 1,
        "met": True,
        "evidence": [events[0]["id"]],
        "related": [],
    }
    assert by_id["O1.4"]["evidence"] == [e["id"] for e in events[4:]]
    assert by_id["O2.1"]["met"] is False and by_id["O2.1"]["evidence"] == []
    assert rel["next"]["level"] == 2 and rel["next"]["missing"] == ["O2.1", "O2.2", "O2.3", "O2.4"]


def test_since_is_when_the_level_last_changed(api, clock) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    clock.advance(hours=1)
    owner_level_one_events(api, owner["id"])
    reached = clock.now
    clock.advance(hours=2)
    api.event("product_understood", customer_id=owner["id"], at=at(8))  # no level change

    assert parse(api.get(f"/v1/customers/{owner['id']}").json()["relationship"]["since"]) == reached


def test_unknown_customer_is_404(api) -> None:
    assert_problem(api.get("/v1/customers/999999"), 404)
    assert_problem(api.get("/v1/customers/999999/history"), 404)


def test_create_refuses_an_unknown_kind_and_a_missing_name(api) -> None:
    assert_problem(api.post("/v1/customers", json={"name": "某公司", "kind": "developer"}), 422, "kind")
    assert_problem(api.post("/v1/customers", json={"kind": "owner"}), 422, "name")
    assert_problem(api.post("/v1/customers", json={"name": "某公司", "kind": "owner", "level": 4}), 422, "level")
    assert api.get("/v1/customers").json()["items"] == []


def test_duplicate_external_ref_is_409_and_stores_nothing(api) -> None:
    api.create_customer("万科华东区域", "owner", external_ref="ERP-C-001")

    r = api.post("/v1/customers", json={"name": "另一家", "kind": "installer", "external_ref": "ERP-C-001"})

    assert_problem(r, 409, "external_ref")
    assert [c["name"] for c in api.get("/v1/customers").json()["items"]] == ["万科华东区域"]


# --- list ----------------------------------------------------------------------------------


def test_list_filters_by_kind_level_rep_region_and_text(api) -> None:
    graded = api.create_customer("万科华东区域", "owner", rep="王芳", region="上海", external_ref="ERP-C-001")
    owner_level_one_events(api, graded["id"])
    plain_owner = api.create_customer("仁济医院基建处", "owner", rep="李强", region="上海")
    installer = api.create_customer("上海建工安装", "installer", rep="王芳", region="江苏", external_ref="ERP-C-777")

    def names(**params: object) -> list[str]:
        r = api.get("/v1/customers", params=params)
        assert r.status_code == 200, r.text
        return [c["name"] for c in r.json()["items"]]

    assert names(kind="owner") == [graded["name"], plain_owner["name"]]
    assert names(kind="installer") == [installer["name"]]
    assert names(level=1) == [graded["name"]]
    assert names(level=0) == [plain_owner["name"], installer["name"]]
    assert names(rep="王芳") == [graded["name"], installer["name"]]
    assert names(region="江苏") == [installer["name"]]
    assert names(q="医院") == [plain_owner["name"]]
    assert names(q="erp-c-7") == [installer["name"]]  # external_ref, case-insensitive
    assert names(kind="owner", rep="王芳", level=1) == [graded["name"]]
    assert names(q="nobody") == []


def test_list_pages_through_every_customer_once_in_order(api) -> None:
    created = [api.create_customer(f"客户{i:02d}", "installer" if i % 2 else "owner")["id"] for i in range(11)]

    first = api.get("/v1/customers", params={"limit": 4}).json()
    assert len(first["items"]) == 4 and first["next_cursor"]
    seen = all_pages(api, "/v1/customers", limit=4)

    assert [c["id"] for c in seen] == created
    owners = all_pages(api, "/v1/customers", limit=2, kind="owner")
    assert [c["id"] for c in owners] == created[0::2]


def test_last_page_has_no_next_cursor(api) -> None:
    for i in range(3):
        api.create_customer(f"客户{i}", "owner")

    page = api.get("/v1/customers", params={"limit": 3}).json()

    assert len(page["items"]) == 3 and page["next_cursor"] is None


def test_list_refuses_a_bad_cursor_and_a_bad_limit(api) -> None:
    assert_problem(api.get("/v1/customers", params={"cursor": "not-a-cursor"}), 422, "cursor")
    assert_problem(api.get("/v1/customers", params={"limit": 0}), 422, "limit")
    assert_problem(api.get("/v1/customers", params={"kind": "developer"}), 422, "kind")


# --- update --------------------------------------------------------------------------------


def test_patch_changes_descriptive_fields_and_the_etag(api) -> None:
    customer = api.create_customer("万科华东区域", "owner", rep="王芳")
    etag = api.get(f"/v1/customers/{customer['id']}").headers["etag"]

    r = api.patch(
        f"/v1/customers/{customer['id']}",
        json={"rep": "李强", "region": "浙江", "tags": ["重点"], "contact": {"person": "张工", "phone": "13800000000"}},
        headers={"If-Match": etag},
    )

    assert r.status_code == 200, r.text
    assert r.headers["etag"] != etag
    got = api.get(f"/v1/customers/{customer['id']}").json()
    assert (got["name"], got["rep"], got["region"], got["tags"]) == ("万科华东区域", "李强", "浙江", ["重点"])
    assert got["contact"] == {"person": "张工", "phone": "13800000000"}
    assert got["kind"] == "owner" and got["version"] == customer["version"] + 1


def test_patch_without_if_match_applies(api) -> None:
    customer = api.create_customer("万科华东区域", "owner")

    r = api.patch(f"/v1/customers/{customer['id']}", json={"name": "万科华东"})

    assert r.status_code == 200 and r.json()["name"] == "万科华东"


def test_patch_refuses_to_change_kind(api) -> None:
    customer = api.create_customer("万科华东区域", "owner")

    assert_problem(api.patch(f"/v1/customers/{customer['id']}", json={"kind": "installer"}), 422, "kind")
    assert api.get(f"/v1/customers/{customer['id']}").json()["kind"] == "owner"


def test_patch_with_a_stale_etag_is_412_and_changes_nothing(api) -> None:
    customer = api.create_customer("万科华东区域", "owner", rep="王芳")
    stale = api.get(f"/v1/customers/{customer['id']}").headers["etag"]
    api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"}, headers={"If-Match": stale})

    r = api.patch(f"/v1/customers/{customer['id']}", json={"rep": "赵敏"}, headers={"If-Match": stale})

    assert_problem(r, 412)
    assert api.get(f"/v1/customers/{customer['id']}").json()["rep"] == "李强"


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
def test_an_etag_with_a_version_longer_than_any_is_a_422_not_a_500(api, header: str) -> None:
    """A hunt's find: a version of 4,301 digits was more than int() converts: 500."""
    customer = api.create_customer("万科华东区域", "owner", external_ref="ERP-9")
    tag = f'"customer-{customer["id"]}-v{"9" * 4301}"'

    by_ref = api.put("/v1/customers/by-ref/ERP-9", json={"name": "万科华东区域", "kind": "owner"}, headers={header: tag})
    new_code = api.put("/v1/customers/by-ref/ERP-10", json={"name": "万科", "kind": "owner"}, headers={header: tag})

    if header == "If-Match":  # no ETag of this service: 422; for a code not stored, 412 as documented
        assert_problem(by_ref, 422, header)
        assert_problem(new_code, 412)
        assert_problem(api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"}, headers={header: tag}), 422, header)
    else:  # a tag that is not this record's at its version matches nothing: the PUT goes on
        assert (by_ref.status_code, new_code.status_code) == (200, 201), (by_ref.text, new_code.text)
    assert api.get(f"/v1/customers/{customer['id']}").json()["version"] == customer["version"]


def test_an_event_changing_the_grade_makes_an_earlier_etag_stale(api) -> None:
    customer = api.create_customer("万科华东区域", "owner")
    etag = api.get(f"/v1/customers/{customer['id']}").headers["etag"]
    api.event("company_introduced", customer_id=customer["id"], at=at(1))

    assert_problem(api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"}, headers={"If-Match": etag}), 412)


def test_an_event_that_changes_no_grade_leaves_the_etag_valid(api) -> None:
    customer = api.create_customer("万科华东区域", "owner")
    api.event("company_introduced", customer_id=customer["id"], at=at(2))
    before = api.get(f"/v1/customers/{customer['id']}")
    # An owner's criteria read no orders: the customer is re-graded to the same grade.
    api.event("order_placed", customer_id=customer["id"], at=at(1), attributes={"amount": 1000})

    after = api.get(f"/v1/customers/{customer['id']}")
    assert after.headers["etag"] == before.headers["etag"] and after.json()["version"] == before.json()["version"]
    assert api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"}, headers={"If-Match": before.headers["etag"]}).status_code == 200


def test_patch_refuses_an_if_match_that_is_not_our_etag(api) -> None:
    customer = api.create_customer("万科华东区域", "owner")

    assert_problem(api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"}, headers={"If-Match": "garbage"}), 422, "If-Match")


@pytest.mark.parametrize(
    ("listed", "status"),
    [
        ('"customer-{id}-v1", "customer-{id}-v2"', 200),  # the current one among them
        ('"customer-999-v2", W/"customer-{id}-v2"', 200),  # another resource's tag beside it
        ('"customer-{id}-v1", "customer-{id}-v3"', 412),  # none is current
        ('"customer-999-v2", "project-{id}-v2"', 412),  # none names this customer
        ('"customer-{id}-v02"', 422),  # a version is no tag of ours written another way
        ('"customer-{id}-v2", "x"', 422),
        ('"customer-{id}-v2" "customer-{id}-v1"', 422),  # no comma between them
    ],
)
def test_patch_takes_an_if_match_that_lists_several_etags(api, listed: str, status: int) -> None:
    """RFC 9110 §13.1.1: If-Match is `*` or a list of ETags, and the write goes ahead if the
    record is at any of them (a proxy may merge two If-Match lines into one). A list was a 422."""
    customer = api.create_customer("万科华东区域", "owner")
    api.patch(f"/v1/customers/{customer['id']}", json={"rep": "李强"})  # now at version 2

    r = api.patch(f"/v1/customers/{customer['id']}", json={"rep": "赵敏"}, headers={"If-Match": listed.format(id=customer["id"])})

    assert r.status_code == status, r.text
    assert api.get(f"/v1/customers/{customer['id']}").json()["rep"] == ("赵敏" if status == 200 else "李强")


def test_if_match_sent_as_several_lines_is_one_list(api) -> None:
    """RFC 9110 §5.3: lines of a list header are one list. Only the first line was read, so a
    stale tag followed by the current one was a 412."""
    customer = api.create_customer("万科华东区域", "owner")
    current = api.get(f"/v1/customers/{customer['id']}").headers["etag"]
    lines = [("If-Match", f'"customer-{customer["id"]}-v9"'), ("If-Match", current)]

    assert api.patch(f"/v1/customers/{customer['id']}", json={"rep": "赵敏"}, headers=lines).status_code == 200


def test_patch_of_an_unknown_customer_is_404(api) -> None:
    assert_problem(api.patch("/v1/customers/999999", json={"rep": "李强"}), 404)
    # Whatever the If-Match: another customer's tag was a 412, as if customer 999999 existed.
    other = api.create_customer("万科华东区域", "owner")
    tag = api.get(f"/v1/customers/{other['id']}").headers["etag"]
    assert_problem(api.patch("/v1/customers/999999", json={"rep": "李强"}, headers={"If-Match": tag}), 404)


def test_patch_to_an_external_ref_in_use_is_409(api) -> None:
    api.create_customer("万科华东区域", "owner", external_ref="ERP-C-001")
    other = api.create_customer("仁济医院", "owner", external_ref="ERP-C-002")

    assert_problem(api.patch(f"/v1/customers/{other['id']}", json={"external_ref": "ERP-C-001"}), 409, "external_ref")
    assert api.get(f"/v1/customers/{other['id']}").json()["external_ref"] == "ERP-C-002"
