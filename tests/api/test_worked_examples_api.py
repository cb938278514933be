"""The five worked examples of docs/rulebook.md ("these must hold"), end to end through the API:
events logged over HTTP, grades and history read back over HTTP."""

from __future__ import annotations

from tests.api.scenarios import at, heat, installer_at_level_one, level, owner_at_level_two, owner_level_one_events, owner_level_two_events


def criteria(api, customer_id: int) -> dict[str, dict]:  # noqa: ANN001
    rel = api.get(f"/v1/customers/{customer_id}").json()["relationship"]
    return {c["id"]: c for c in rel["criteria"]}


# --- Example 1 -----------------------------------------------------------------------------


def test_example_1_owner_with_the_level_one_facts_is_at_level_one_and_a_retracted_visit_drops_it(api) -> None:
    owner = api.create_customer("上海市第六人民医院基建处", "owner")
    events = owner_level_one_events(api, owner["id"])

    rel = api.get(f"/v1/customers/{owner['id']}").json()["relationship"]
    assert rel["level"] == 1
    assert rel["next"]["level"] == 2 and rel["next"]["missing"] == ["O2.1", "O2.2", "O2.3", "O2.4"]

    first_visit = events[4]
    r = api.post(f"/v1/events/{first_visit['id']}/retract", json={"reason": "that visit was to another hospital"})
    assert r.json()["effects"] == [{"subject": "customer", "id": owner["id"], "metric": "relationship_level", "old": 1, "new": 0}]
    assert level(api, owner["id"]) == 0
    history = api.get(f"/v1/customers/{owner['id']}/history").json()["items"]
    assert [(h["old"], h["new"], h["trigger"]["kind"], h["trigger"]["event_id"]) for h in history] == [
        (0, 1, "event", events[-1]["id"]),
        (1, 0, "retraction", first_visit["id"]),
    ]


# --- Example 2 -----------------------------------------------------------------------------


def test_example_2_a_rejecting_last_visit_keeps_the_owner_ungraded_even_with_level_two_met(api) -> None:
    owner = api.create_customer("上海市第六人民医院基建处", "owner")
    owner_level_one_events(api, owner["id"], last_reception="rejecting")
    owner_level_two_events(api, owner["id"])

    rel = api.get(f"/v1/customers/{owner['id']}").json()["relationship"]
    assert rel["level"] == 0
    met = {c["id"]: c["met"] for c in rel["criteria"]}
    assert met["O1.4"] is False
    assert all(met[c] for c in ("O1.1", "O1.2", "O1.3", "O1.5", "O2.1", "O2.2", "O2.3", "O2.4"))
    assert rel["next"]["level"] == 1 and rel["next"]["missing"] == ["O1.4"]
    assert api.get(f"/v1/customers/{owner['id']}/history").json()["items"] == []


# --- Example 3 -----------------------------------------------------------------------------


def test_example_3_project_at_30_falls_to_0_when_its_bidder_loses_level_one_and_history_says_why(api) -> None:
    owner = owner_at_level_two(api)
    assert level(api, owner["id"]) == 2
    project = api.create_project(owner["id"])
    bidder, bidder_events = installer_at_level_one(api)
    api.event("stage_changed", project_id=project["id"], at=at(12), attributes={"stage": "tender_drafting"})
    api.event("spec_agreed", project_id=project["id"], at=at(13))
    bid = api.event("bid_joined", customer_id=bidder["id"], project_id=project["id"], at=at(14), attributes={"with_our_product": False})

    assert bid["effects"] == [{"subject": "project", "id": project["id"], "metric": "deal_heat", "old": 0, "new": 30}]
    assert heat(api, project["id"])["percent"] == 30
    assert api.get(f"/v1/projects/{project['id']}").json()["bidders"][0]["level"] == 1

    visit = bidder_events[-1]
    r = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "visit was logged for the wrong company"})

    level_change = {"subject": "customer", "id": bidder["id"], "metric": "relationship_level", "old": 1, "new": 0}
    assert r.json()["effects"] == [level_change, {"subject": "project", "id": project["id"], "metric": "deal_heat", "old": 30, "new": 0}]
    h = heat(api, project["id"])
    assert (h["percent"], h["tier"]) == (0, "cold")
    h304 = next(c for c in h["criteria"] if c["id"] == "H30.4")
    assert h304["met"] is False and h304["related"] == [{"subject": "customer", "id": bidder["id"], "level": 0}]
    history = api.get(f"/v1/projects/{project['id']}/history").json()["items"]
    assert [(x["old"], x["new"]) for x in history] == [(0, 30), (30, 0)]
    trigger = history[-1]["trigger"]
    assert trigger["kind"] == "retraction"
    assert trigger["event_id"] == visit["id"]
    assert trigger["via"] == [level_change]


# --- Example 4 -----------------------------------------------------------------------------


def project_with_sole_brand_and_contract(api, *, contract_with_winner: bool) -> int:  # noqa: ANN001
    owner = api.create_customer("万科华东区域", "owner")
    project = api.create_project(owner["id"], "滨江写字楼空调")
    winner = api.create_customer("上海建工安装", "installer")
    loser = api.create_customer("华东机电安装", "installer")
    for installer in (winner, loser):
        api.event("bid_joined", customer_id=installer["id"], project_id=project["id"], at=at(10))
    api.event("bid_won", customer_id=winner["id"], project_id=project["id"], at=at(12))
    api.event("tender_brand", project_id=project["id"], at=at(13), attributes={"status": "sole"})
    signer = winner if contract_with_winner else loser
    api.event("contract_signed", customer_id=signer["id"], project_id=project["id"], at=at(15), attributes={"amount": 1800000})
    return project["id"]


def test_example_4_sole_brand_and_contract_with_the_winner_is_90(api) -> None:
    project = project_with_sole_brand_and_contract(api, contract_with_winner=True)

    h = heat(api, project)
    assert (h["percent"], h["tier"]) == (90, "90")
    assert h["label"] == {"zh": "90%成交热度", "en": "90 % deal heat"}
    assert h["next"] is None


def test_example_4_the_same_contract_with_an_installer_that_did_not_win_is_not_90(api) -> None:
    project = project_with_sole_brand_and_contract(api, contract_with_winner=False)

    h = heat(api, project)
    assert h["percent"] != 90
    met = {c["id"]: c["met"] for c in h["criteria"]}
    assert met["H90.1"] is True and met["H90.2"] is False


# --- Example 5 -----------------------------------------------------------------------------


def test_example_5_a_won_project_is_100_whatever_else_is_logged(api) -> None:
    owner = api.create_customer("万科华东区域", "owner")
    project = api.create_project(owner["id"])
    api.event("owner_stance", project_id=project["id"], at=at(5), attributes={"stance": "refuses"})
    api.event("stage_changed", project_id=project["id"], at=at(10), attributes={"stage": "won"})
    api.event("tender_brand", project_id=project["id"], at=at(11), attributes={"status": "absent"})
    api.event("stage_changed", project_id=project["id"], at=at(9), attributes={"stage": "bidding"})

    h = heat(api, project["id"])
    assert (h["percent"], h["tier"], h["closed"]) == (100, "won", True)
    assert [(x["old"], x["new"]) for x in api.get(f"/v1/projects/{project['id']}/history").json()["items"]] == [(0, 100)]
