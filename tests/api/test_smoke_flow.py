"""The main path a rep's app relies on: log events, read the grade and why."""

from __future__ import annotations


def test_owner_reaches_level_one_and_retraction_drops_it_with_history(api) -> None:
    owner = api.create_customer("上海市第六人民医院基建处", "owner")
    cid = owner["id"]
    assert owner["relationship"]["level"] == 0
    for t, attrs in [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("contact_obtained", {}), ("impression_confirmed", {})]:
        api.event(t, customer_id=cid, attributes=attrs)
    api.event("visit", customer_id=cid, attributes={"reception": "welcoming"})
    api.event("visit", customer_id=cid, attributes={"reception": "welcoming"})
    third = api.event("visit", customer_id=cid, attributes={"reception": "neutral"})
    assert third["effects"] == [{"subject": "customer", "id": cid, "metric": "relationship_level", "old": 0, "new": 1}]

    got = api.get(f"/v1/customers/{cid}").json()["relationship"]
    assert got["level"] == 1 and got["label"] == {"zh": "一级", "en": "Level I"}
    assert got["next"] == {"level": 2, "missing": ["O2.1", "O2.2", "O2.3", "O2.4"], "need": 4}
    o14 = next(c for c in got["criteria"] if c["id"] == "O1.4")
    assert o14["met"] and third["id"] in o14["evidence"]

    r = api.post(f"/v1/events/{third['id']}/retract", json={"reason": "logged twice"})
    assert r.status_code == 200, r.text
    assert r.json()["effects"] == [{"subject": "customer", "id": cid, "metric": "relationship_level", "old": 1, "new": 0}]
    history = api.get(f"/v1/customers/{cid}/history").json()["items"]
    assert [(h["old"], h["new"], h["trigger"]["kind"]) for h in history] == [(0, 1, "event"), (1, 0, "retraction")]
