"""What an event's attributes held comes back exactly as sent, whatever decodes the JSON
columns and on either database: a number attribute is at most 10¹³ in size, within which
PostgreSQL's jsonb and SQLite's JSON give back the same integer or float as was sent."""

from __future__ import annotations

import json
import math

import pytest

AT = "2026-11-19T10:00:00+08:00"
# Within the bound of a number attribute: its ends as an integer and as a float, the float
# nearest below it, and floats whose shortest text is written with an exponent.
KEPT = [10**13, 1e13, 9999999999999.998, 123456789012, 1234.5, 0.1, 1.5e-7, 5e-324, 0]
# Past it. 1e16 came back from PostgreSQL as 10000000000000000 and from SQLite as 1e+16;
# 10**400 was kept, digit for digit, where no other number field goes past 10¹³.
REFUSED = [10**13 + 1, 1e16, 1e300, 10**400]


def typed(value: int | float) -> tuple[type, int | float, float]:
    """A number with its type and sign, which == does not tell apart (1 == 1.0, 0.0 == -0.0)."""
    return type(value), value, math.copysign(1, value)


def order(api, amount: int | float):  # noqa: ANN001, ANN201
    customer = api.create_customer("上海建工安装有限公司", "installer")
    return api.post("/v1/events", json={"type": "order_placed", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"amount": amount, "order_ref": "PO-1"}})


@pytest.mark.parametrize("amount", KEPT)
def test_an_order_amount_comes_back_from_the_database_as_the_post_echoed_it(api, amount: int | float) -> None:  # noqa: ANN001
    r = order(api, amount)
    assert r.status_code == 201, r.text

    echoed = r.json()["attributes"]["amount"]
    stored = api.get(f"/v1/events/{r.json()['id']}").json()["attributes"]["amount"]
    assert typed(stored) == typed(echoed) == typed(amount)


def test_a_negative_zero_is_stored_and_echoed_as_zero(api) -> None:  # noqa: ANN001
    # jsonb has no -0: PostgreSQL gave back 0.0 where SQLite and the POST's echo said -0.0.
    r = order(api, -0.0)
    assert r.status_code == 201, r.text

    echoed = r.json()["attributes"]["amount"]
    stored = api.get(f"/v1/events/{r.json()['id']}").json()["attributes"]["amount"]
    assert typed(stored) == typed(echoed) == typed(0.0)


@pytest.mark.parametrize("amount", REFUSED, ids=["1e13+1", "1e16", "1e300", "1e400 as an integer"])
def test_an_order_amount_past_ten_to_the_thirteen_is_422_naming_the_bound(api, amount: int | float) -> None:  # noqa: ANN001
    r = order(api, amount)

    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "attributes.amount", "in": "body", "reason": "must be ≤ 10000000000000 (10¹³)"}]
    assert api.get("/v1/events").json()["items"] == []


@pytest.mark.parametrize("ndjson", [False, True], ids=["array", "ndjson"])
def test_a_batch_item_s_amount_comes_back_as_the_batch_stored_it(api, ndjson: bool) -> None:  # noqa: ANN001
    # A batch's body is read by the service itself (app/api/bodies.py), not by FastAPI.
    customer = api.create_customer("上海建工安装有限公司", "installer")
    amounts = [*KEPT, -0.0, *REFUSED]
    items = [
        {"type": "order_placed", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"amount": amount, "order_ref": f"PO-{i}"}, "source": "erp", "external_id": f"PO-{i}"}
        for i, amount in enumerate(amounts)
    ]
    if ndjson:
        r = api.post("/v1/events/batch", content="\n".join(json.dumps(i) for i in items).encode(), headers={"Content-Type": "application/x-ndjson"})
    else:
        r = api.post("/v1/events/batch", json=items)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created"] * (len(KEPT) + 1) + ["rejected"] * len(REFUSED)
    stored = [api.get(f"/v1/events/{x['id']}").json()["attributes"]["amount"] for x in results if x["status"] == "created"]
    assert [typed(a) for a in stored] == [typed(a) for a in [*KEPT, 0.0]]
