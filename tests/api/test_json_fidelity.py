"""What an event's attributes held comes back exactly as sent, whatever decodes the JSON
columns: an integer beyond 64 bits stays an integer, digit for digit."""

from __future__ import annotations

import pytest

AT = "2026-11-19T10:00:00+08:00"


@pytest.mark.parametrize("amount", [10**30, 2**64 + 1, 18446744073709551615, 1234.5, 0])
def test_an_order_amount_comes_back_from_the_database_exactly(api, amount: int | float) -> None:  # noqa: ANN001
    customer = api.create_customer("上海建工安装有限公司", "installer")
    r = api.post("/v1/events", json={"type": "order_placed", "customer_id": customer["id"], "occurred_at": AT, "attributes": {"amount": amount, "order_ref": "PO-1"}})
    assert r.status_code == 201, r.text

    stored = api.get(f"/v1/events/{r.json()['id']}").json()["attributes"]["amount"]
    assert (type(stored), stored) == (type(amount), amount)
