"""What an event's attributes held comes back exactly as sent, whatever decodes the JSON
columns: an integer beyond 64 bits stays an integer, digit for digit."""

from __future__ import annotations

import json

import pytest

AT = "2026-11-19T10:00:00+08:00"


# 10**400: past a float's range, where the number check raised (a 500, a hunt found).
@pytest.mark.parametrize("amount", [10**30, 2**64 + 1, 18446744073709551615, 10**400, 1234.5, 0])
def test_an_order_amount_comes_back_from_the_database_exactly(api, amount: int | float) -> None:  # noqa: ANN001
    customer = api.create_customer("上海建工安装有限公司", "installer")
    r = api.post("/v1/events", json={"type": "order_placed", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"amount": amount, "order_ref": "PO-1"}})
    assert r.status_code == 201, r.text

    stored = api.get(f"/v1/events/{r.json()['id']}").json()["attributes"]["amount"]
    assert (type(stored), stored) == (type(amount), amount)


@pytest.mark.parametrize("ndjson", [False, True], ids=["array", "ndjson"])
def test_a_batch_item_s_amount_comes_back_exactly(api, ndjson: bool) -> None:  # noqa: ANN001
    # A batch's body is read by the service itself (app/api/bodies.py), not by FastAPI.
    customer = api.create_customer("上海建工安装有限公司", "installer")
    amounts = [10**30, 2**64 + 1, 18446744073709551615, 10**400, 1234.5, 0]
    items = [
        {"type": "order_placed", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"amount": amount, "order_ref": f"PO-{i}"}, "source": "erp", "external_id": f"PO-{i}"}
        for i, amount in enumerate(amounts)
    ]
    if ndjson:
        r = api.post("/v1/events/batch", content="\n".join(json.dumps(i) for i in items).encode(), headers={"Content-Type": "application/x-ndjson"})
    else:
        r = api.post("/v1/events/batch", json=items)
    assert r.status_code == 200, r.text
    ids = [x["id"] for x in r.json()["results"]]
    stored = [api.get(f"/v1/events/{i}").json()["attributes"]["amount"] for i in ids]
    assert [(type(a), a) for a in stored] == [(type(a), a) for a in amounts]
