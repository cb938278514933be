"""/v1/projects: a project's deal heat, its bidders and winner, lists and updates."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import event

from app.db.engine import _CursorStatement
from app.services.events import NewEvent, record_event

from tests.api.expectations import all_pages, assert_problem
from tests.api.scenarios import at, heat, installer_at_level_one


def test_created_project_has_an_id_a_location_an_etag_and_starts_cold(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")

    r = api.post(
        "/v1/projects",
        json={"name": "新门诊楼暖通工程", "owner_id": owner["id"], "amount": 1250000, "expected_close": "2027-03-31", "rep": "王芳", "external_ref": "ERP-P-9"},
    )

    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/projects/{body['id']}"
    assert r.headers["etag"]
    assert (body["owner_id"], body["amount"], body["expected_close"], body["rep"]) == (owner["id"], 1250000, "2027-03-31", "王芳")
    assert body["heat"]["percent"] == 0 and body["heat"]["tier"] == "cold"
    assert body["heat"]["label"] == {"zh": "冷(0%)", "en": "Cold (0 %)"}
    assert body["heat"]["closed"] is False and body["heat"]["stage"] is None
    assert body["heat"]["next"] == {"percent": 30, "missing": ["H30.1", "H30.2", "H30.3", "H30.4"], "need": 4}
    assert body["bidders"] == [] and body["winner"] is None


def test_project_owner_must_be_an_owner(api) -> None:
    installer = api.create_customer("上海建工安装", "installer")

    r = api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": installer["id"]})

    body = assert_problem(r, 422, "owner_id")
    assert "installer" in body["errors"][0]["reason"]
    assert api.get("/v1/projects").json()["items"] == []


def test_project_owner_must_exist(api) -> None:
    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": 999999}), 422, "owner_id")
    assert api.get("/v1/projects").json()["items"] == []


def test_project_refuses_unknown_fields_and_negative_amounts(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")

    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": owner["id"], "heat": 90}), 422, "heat")
    assert_problem(api.post("/v1/projects", json={"name": "新门诊楼", "owner_id": owner["id"], "amount": -1}), 422, "amount")
    assert api.get("/v1/projects").json()["items"] == []


def test_heat_explains_criteria_with_evidence(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    spec = api.event("spec_agreed", project_id=project["id"], at=at(3))
    stage = api.event("stage_changed", project_id=project["id"], at=at(4), attributes={"stage": "tender_drafting"})

    h = heat(api, project["id"])

    by_id = {c["id"]: c for c in h["criteria"]}
    assert by_id["H30.3"]["met"] and by_id["H30.3"]["evidence"] == [spec["id"]]
    assert by_id["H30.1"]["met"] and by_id["H30.1"]["evidence"] == [stage["id"]]
    assert by_id["H30.3"]["label"]["zh"] == "(甲方)同意将我司产品写入标书"
    assert h["stage"] == "tender_drafting"
    assert h["next"]["percent"] == 30 and h["next"]["missing"] == ["H30.2", "H30.4"]


def test_bidders_and_winner_come_from_bid_events(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    graded, _ = installer_at_level_one(api, "上海建工安装")
    other = api.create_customer("华东机电安装", "installer")
    api.event("bid_joined", customer_id=graded["id"], project_id=project["id"], at=at(12), attributes={"with_our_product": True})
    api.event("bid_joined", customer_id=other["id"], project_id=project["id"], at=at(13), attributes={"with_our_product": False})
    won = api.event("bid_won", customer_id=other["id"], project_id=project["id"], at=at(14))

    got = api.get(f"/v1/projects/{project['id']}").json()

    assert got["bidders"] == [
        {"id": graded["id"], "name": "上海建工安装", "level": 1, "with_our_product": True},
        {"id": other["id"], "name": "华东机电安装", "level": 0, "with_our_product": False},
    ]
    assert got["winner"] == {"id": other["id"], "name": "华东机电安装", "level": 0, "with_our_product": None}

    api.post(f"/v1/events/{won['id']}/retract", json={"reason": "award was announced for another lot"})
    assert api.get(f"/v1/projects/{project['id']}").json()["winner"] is None


def test_a_renamed_bidder_shows_at_once_and_leaves_the_project_version(api) -> None:
    # Bidder names are read live (openapi.md, "ETag and If-Match"): no write to the project.
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    bidder = api.create_customer("上海建工安装", "installer")
    api.event("bid_won", customer_id=bidder["id"], project_id=project["id"], at=at(14))
    before = api.get(f"/v1/projects/{project['id']}")

    assert api.patch(f"/v1/customers/{bidder['id']}", json={"name": "上海建工集团安装"}).status_code == 200

    after = api.get(f"/v1/projects/{project['id']}")
    assert [b["name"] for b in after.json()["bidders"]] == ["上海建工集团安装"]
    assert after.json()["winner"]["name"] == "上海建工集团安装"
    assert after.headers["etag"] == before.headers["etag"]
    assert (after.json()["version"], after.json()["updated_at"]) == (before.json()["version"], before.json()["updated_at"])


def test_put_naming_another_owner_by_ref_is_refused_on_owner_ref(api) -> None:
    # openapi.md's example: the error names the field the caller sent.
    stored = api.create_customer("浦东新区教育局后勤中心", "owner", external_ref="ERP-C-1003")
    api.create_customer("上海市第六人民医院基建处", "owner", external_ref="ERP-C-1001")
    body = {"name": "浦东新区第二实验小学空调改造", "owner_ref": "ERP-C-1003"}
    assert api.put("/v1/projects/by-ref/SH%2F2026%2F118", json=body).status_code == 201

    by_ref = api.put("/v1/projects/by-ref/SH%2F2026%2F118", json={**body, "owner_ref": "ERP-C-1001"})
    by_id = api.put("/v1/projects/by-ref/SH%2F2026%2F118", json={"name": body["name"], "owner_id": stored["id"] + 1})

    assert assert_problem(by_ref, 422)["errors"] == [{"field": "owner_ref", "in": "body", "reason": f"owner_id is {stored['id']} on the stored record and cannot change"}]
    assert assert_problem(by_id, 422)["errors"] == [{"field": "owner_id", "in": "body", "reason": f"is {stored['id']} on the stored record and cannot change"}]


def test_the_winner_of_two_awards_at_the_same_instant_does_not_depend_on_arrival(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    a = api.create_customer("上海建工安装", "installer")
    b = api.create_customer("华东机电安装", "installer")
    winners = []
    for first, second in ((a, b), (b, a)):
        project = api.create_project(owner["id"])
        for customer in (first, second):
            api.event("bid_won", customer_id=customer["id"], project_id=project["id"], at=at(14))
        winners.append(api.get(f"/v1/projects/{project['id']}").json()["winner"]["id"])
    assert winners[0] == winners[1]


def test_stage_won_closes_the_project_at_100(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    api.event("stage_changed", project_id=project["id"], at=at(10), attributes={"stage": "won"})

    h = heat(api, project["id"])

    assert (h["percent"], h["tier"], h["closed"], h["stage"]) == (100, "won", True, "won")
    assert h["label"] == {"zh": "已成交", "en": "Won"}


def test_stage_lost_closes_the_project_at_0(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    api.event("tender_brand", project_id=project["id"], at=at(9), attributes={"status": "sole"})
    api.event("stage_changed", project_id=project["id"], at=at(10), attributes={"stage": "lost"})

    h = heat(api, project["id"])

    assert (h["percent"], h["tier"], h["closed"]) == (0, "lost", True)


def test_unknown_project_is_404(api) -> None:
    assert_problem(api.get("/v1/projects/999999"), 404)
    assert_problem(api.get("/v1/projects/999999/history"), 404)
    assert_problem(api.patch("/v1/projects/999999", json={"rep": "王芳"}), 404)


# --- list ----------------------------------------------------------------------------------


def test_list_filters_by_owner_heat_stage_rep_and_text(api) -> None:
    hospital = api.create_customer("仁济医院基建处", "owner")
    developer = api.create_customer("万科华东区域", "owner")
    clinic = api.create_project(hospital["id"], "新门诊楼暖通工程", rep="王芳")
    tower = api.create_project(developer["id"], "滨江写字楼空调", rep="李强")
    api.event("stage_changed", project_id=tower["id"], at=at(10), attributes={"stage": "won"})

    def names(**params: object) -> list[str]:
        r = api.get("/v1/projects", params=params)
        assert r.status_code == 200, r.text
        return [p["name"] for p in r.json()["items"]]

    assert names(owner_id=hospital["id"]) == [clinic["name"]]
    assert names(heat=100) == [tower["name"]]
    assert names(heat=0) == [clinic["name"]]
    assert names(stage="won") == [tower["name"]]
    assert names(rep="王芳") == [clinic["name"]]
    assert names(q="写字楼") == [tower["name"]]
    assert names() == [clinic["name"], tower["name"]]


def test_list_pages_through_every_project_once_in_order(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    created = [api.create_project(owner["id"], f"项目{i}")["id"] for i in range(7)]

    assert [p["id"] for p in all_pages(api, "/v1/projects", limit=3)] == created


def test_a_listed_project_shows_the_bidders_and_winner_its_own_read_shows(api, app) -> None:
    """A page of projects reads the bids of all of them at once: as many statements for 6
    projects as for 2 (it was one more read per project), each project with its own."""
    owner = api.create_customer("仁济医院基建处", "owner")
    installers = [api.create_customer(f"安装公司{i}", "installer") for i in range(3)]
    projects = [api.create_project(owner["id"], f"项目{i}") for i in range(6)]
    for i, project in enumerate(projects):
        for j, installer in enumerate(installers[: i % 4]):
            api.event("bid_joined", customer_id=installer["id"], project_id=project["id"], at=at(10 + j), attributes={"with_our_product": j == i % 2})
        if i % 3 == 2:
            api.event("bid_won", customer_id=installers[i % 2]["id"], project_id=project["id"], at=at(15))

    statements: list[str] = []
    engine = app.state.context.db.engine

    def capture(_conn, _cursor, statement, _parameters, _context, _many) -> None:  # noqa: ANN001
        statements.append(statement)

    def page(limit: int) -> list[dict]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            r = api.get("/v1/projects", params={"owner_id": owner["id"], "limit": limit})
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert r.status_code == 200, r.text
        return r.json()["items"]

    assert len(page(2)) == 2
    two = len(statements)
    listed = page(6)
    assert len(statements) == two
    assert [p["id"] for p in listed] == [p["id"] for p in projects]
    assert [(p["bidders"], p["winner"]) for p in listed] == [(r["bidders"], r["winner"]) for r in (api.get(f"/v1/projects/{p['id']}").json() for p in projects)]
    # A bid_won makes a bidder too: the 6th project's winner never joined its bidding.
    assert [len(p["bidders"]) for p in listed] == [0, 1, 2, 3, 0, 2]
    assert [p["winner"] and p["winner"]["id"] for p in listed] == [None, None, installers[0]["id"], None, None, installers[1]["id"]]


def test_a_project_read_shows_its_bidders_and_its_heat_as_of_one_instant(api, app, monkeypatch) -> None:
    """A bid committed while a project is read shows with its consequence (here H30.4, a
    bidder at level I) or not at all. Read as two statements, the project's row then its
    bids, PostgreSQL (whose reads run each statement on its own) showed the new bidder
    beside the heat and version from before the bid."""
    owner = api.create_customer("仁济医院基建处", "owner")
    installer, _ = installer_at_level_one(api)
    project = api.create_project(owner["id"])
    before = api.get(f"/v1/projects/{project['id']}").json()
    ctx = app.state.context
    bid = NewEvent(type="bid_joined", customer_id=installer["id"], project_id=project["id"], occurred_at=datetime(2026, 11, 19, tzinfo=timezone.utc))
    started: list[bool] = []
    committed: list[int] = []
    converted = _CursorStatement.converted  # the rows the driver fetched, on either path

    def bid_meanwhile(statement: _CursorStatement, *args: Any, **kwargs: Any) -> Any:
        found = converted(statement, *args, **kwargs)
        if not started and statement.sql.startswith("SELECT projects.id"):  # the project's row has been read
            started.append(True)  # once: the write's own statements come here too
            committed.append(ctx.db.transaction(lambda s: record_event(s, ctx.rulebook, bid, actor="t", now=ctx.clock())).event.id)
        return found

    monkeypatch.setattr(_CursorStatement, "converted", bid_meanwhile)
    read = api.get(f"/v1/projects/{project['id']}").json()
    monkeypatch.undo()
    after = api.get(f"/v1/projects/{project['id']}").json()
    assert committed
    assert [b["id"] for b in after["bidders"]] == [installer["id"]] and after["version"] > before["version"]
    assert read in (before, after)


def test_list_refuses_a_bad_cursor(api) -> None:
    assert_problem(api.get("/v1/projects", params={"cursor": "eyJub3BlIjogMX0"}), 422, "cursor")


# --- update --------------------------------------------------------------------------------


def test_patch_changes_descriptive_fields(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    project = api.create_project(owner["id"], amount=100000)
    etag = api.get(f"/v1/projects/{project['id']}").headers["etag"]

    r = api.patch(f"/v1/projects/{project['id']}", json={"amount": 2500000.5, "expected_close": "2027-06-30", "rep": "李强"}, headers={"If-Match": etag})

    assert r.status_code == 200, r.text
    assert r.headers["etag"] != etag
    got = api.get(f"/v1/projects/{project['id']}").json()
    assert (got["amount"], got["expected_close"], got["rep"], got["owner_id"]) == (2500000.5, "2027-06-30", "李强", owner["id"])


def test_patch_refuses_to_change_the_owner(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    other = api.create_customer("仁济医院", "owner")
    project = api.create_project(owner["id"])

    assert_problem(api.patch(f"/v1/projects/{project['id']}", json={"owner_id": other["id"]}), 422, "owner_id")
    assert api.get(f"/v1/projects/{project['id']}").json()["owner_id"] == owner["id"]


def test_patch_with_a_stale_etag_is_412(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    project = api.create_project(owner["id"], rep="王芳")
    stale = api.get(f"/v1/projects/{project['id']}").headers["etag"]
    api.event("spec_agreed", project_id=project["id"], at=at(3))

    assert_problem(api.patch(f"/v1/projects/{project['id']}", json={"rep": "李强"}, headers={"If-Match": stale}), 412)
    assert api.get(f"/v1/projects/{project['id']}").json()["rep"] == "王芳"


def test_etag_of_a_customer_does_not_match_a_project(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    project = api.create_project(owner["id"])
    customer_etag = api.get(f"/v1/customers/{owner['id']}").headers["etag"]

    assert_problem(api.patch(f"/v1/projects/{project['id']}", json={"rep": "李强"}, headers={"If-Match": customer_etag}), 412)


def test_duplicate_project_external_ref_is_409(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    api.create_project(owner["id"], "一期", external_ref="ERP-P-1")

    assert_problem(api.post("/v1/projects", json={"name": "二期", "owner_id": owner["id"], "external_ref": "ERP-P-1"}), 409, "external_ref")
    assert len(api.get("/v1/projects").json()["items"]) == 1


@pytest.mark.parametrize(("sent", "stored"), [(1.005, 1.01), (0.015, 0.02), (0.005, 0.01), (2.675, 2.68), (1.004, 1.0), (12.3, 12.3)])
def test_an_amount_is_rounded_to_cents_half_up_as_written(api, sent: float, stored: float) -> None:  # noqa: ANN001
    # round() of the float took 1.005 to 1.0 and 0.015 to 0.01 (binary fractions; a hunt found it).
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"], amount=sent)

    assert project["amount"] == stored
    assert api.get(f"/v1/projects/{project['id']}").json()["amount"] == stored
