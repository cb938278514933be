"""Grade history: every change of a level or a heat, oldest first, as a chain, with the
rulebook version, the evidence, what triggered it and who."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.api.expectations import all_pages, assert_problem
from tests.api.scenarios import at, issue_key, owner_level_one_events

VERSION = "default-2026.11.1"


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def history(api, kind: str, id_: int) -> list[dict]:  # noqa: ANN001
    return all_pages(api, f"/v1/{kind}/{id_}/history", limit=200)


def assert_chain(items: list[dict], start: int = 0) -> None:
    previous = start
    for item in items:
        assert item["old"] == previous, items
        assert item["new"] != item["old"]
        previous = item["new"]


def test_new_customer_has_no_history(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")

    assert api.get(f"/v1/customers/{owner['id']}/history").json() == {"items": [], "next_cursor": None}


def test_a_level_change_is_recorded_with_version_evidence_trigger_actor_and_time(api, clock) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    events = owner_level_one_events(api, owner["id"])

    (row,) = history(api, "customers", owner["id"])

    assert (row["metric"], row["old"], row["new"]) == ("relationship_level", 0, 1)
    assert row["rulebook_version"] == VERSION == api.get("/v1/rulebook").json()["version"]
    assert row["trigger"]["kind"] == "event" and row["trigger"]["event_id"] == events[-1]["id"]
    assert row["actor"] == "key:bootstrap"
    assert parse(row["at"]) == clock.now
    o14 = next(c for c in row["evidence"]["criteria"] if c["id"] == "O1.4")
    assert o14["met"] and o14["evidence"] == [e["id"] for e in events[4:]]
    assert row["evidence"]["next"]["missing"] == ["O2.1", "O2.2", "O2.3", "O2.4"]


def test_history_names_the_user_from_x_actor(api, app, client_for) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"], visits=2)
    rep = client_for(issue_key(app, "mobile", ["read", "write"]), **{"X-Actor": "rep:wang.fang"})

    r = rep.post("/v1/events", json={"type": "visit", "customer_id": owner["id"], "occurred_at": at(7), "attributes": {"reception": "neutral"}})
    assert r.status_code == 201, r.text
    mobile = client_for(issue_key(app, "mobile-2", ["read", "write"]))
    mobile.post(f"/v1/events/{r.json()['id']}/retract", json={"reason": "wrong customer"})

    rows = history(api, "customers", owner["id"])
    assert [(h["actor"], h["trigger"]["kind"]) for h in rows] == [("rep:wang.fang", "event"), ("key:mobile-2", "retraction")]


def test_history_is_oldest_first_and_a_chain_and_rows_never_change(api, clock) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"], visits=2)
    visits = []
    for day in (7, 8, 9):
        clock.advance(hours=1)
        visits.append(api.event("visit", customer_id=owner["id"], at=at(day), attributes={"reception": "neutral"}))
        if day == 7:
            first = history(api, "customers", owner["id"])
        clock.advance(hours=1)
        api.post(f"/v1/events/{visits[-1]['id']}/retract", json={"reason": "test"})

    rows = history(api, "customers", owner["id"])

    assert [(h["old"], h["new"]) for h in rows] == [(0, 1), (1, 0)] * 3
    assert_chain(rows)
    assert [parse(h["at"]) for h in rows] == sorted(parse(h["at"]) for h in rows)
    assert [h["trigger"]["event_id"] for h in rows] == [v["id"] for v in visits for _ in (0, 1)]
    assert rows[0] == first[0]


def test_history_pages_with_a_cursor_without_gaps(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"], visits=2)
    for day in (7, 8, 9, 10):
        v = api.event("visit", customer_id=owner["id"], at=at(day), attributes={"reception": "neutral"})
        api.post(f"/v1/events/{v['id']}/retract", json={"reason": "test"})
    everything = api.get(f"/v1/customers/{owner['id']}/history").json()["items"]

    page = api.get(f"/v1/customers/{owner['id']}/history", params={"limit": 3}).json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    paged = all_pages(api, f"/v1/customers/{owner['id']}/history", limit=3)

    assert len(everything) == 8 and paged == everything
    assert_chain(paged)


def test_project_history_records_heat_changes_with_their_trigger(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    won = api.event("stage_changed", project_id=project["id"], at=at(10), attributes={"stage": "won"})
    api.post(f"/v1/events/{won['id']}/retract", json={"reason": "wrong project"})

    rows = history(api, "projects", project["id"])

    assert [(h["metric"], h["old"], h["new"]) for h in rows] == [("deal_heat", 0, 100), ("deal_heat", 100, 0)]
    assert [h["trigger"]["kind"] for h in rows] == ["event", "retraction"]
    assert [h["trigger"]["event_id"] for h in rows] == [won["id"], won["id"]]
    assert all(h["rulebook_version"] == VERSION for h in rows)
    assert "criteria" in rows[0]["evidence"]


def test_an_event_on_one_customer_writes_no_history_for_another(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    bystander = api.create_customer("万科华东区域", "owner")
    owner_level_one_events(api, owner["id"])

    assert history(api, "customers", bystander["id"]) == []


def test_history_of_an_unknown_subject_is_404(api) -> None:
    assert_problem(api.get("/v1/customers/999999/history"), 404)
    assert_problem(api.get("/v1/projects/999999/history"), 404)


def test_a_cold_project_closed_as_lost_and_reopened_is_on_record_though_it_stays_at_0(api, clock) -> None:  # noqa: ANN001
    # The grading hunt found both invisible: no history row, no effect, no webhook, and the
    # heat's `since` still the project's creation, because only the percent was compared.
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    sub = api.post("/v1/webhooks/subscriptions", json={"url": "https://erp.example.com/hook", "event_types": ["project.heat_changed"]})
    assert sub.status_code == 201, sub.text

    def stage(name: str, day: int) -> dict:
        r = api.post("/v1/events", json={"type": "stage_changed", "project_id": project["id"], "occurred_at": at(day), "attributes": {"stage": name}})
        assert r.status_code == 201, r.text
        return r.json()

    clock.now += timedelta(hours=1)
    lost = stage("lost", 18)
    closed = api.get(f"/v1/projects/{project['id']}").json()["heat"]
    reopened = stage("lead", 19)

    assert lost["effects"] == [{"subject": "project", "id": project["id"], "metric": "deal_heat", "old": 0, "new": 0}]
    assert reopened["effects"] == lost["effects"]
    assert (closed["tier"], closed["closed"]) == ("lost", True)
    assert parse(closed["since"]) > parse(project["heat"]["since"])
    items = history(api, "projects", project["id"])
    assert [(h["old"], h["new"], h["trigger"]["event_id"]) for h in items] == [(0, 0, lost["id"]), (0, 0, reopened["id"])]
    deliveries = api.get(f"/v1/webhooks/subscriptions/{sub.json()['id']}/deliveries").json()["items"]
    assert len(deliveries) == 2
