"""On the migrated database the API works as before: a wrong event is retracted (the way
to correct the log), while deleting it or its retraction is refused by the database."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


@pytest.mark.parametrize(("table", "column"), [("events", "id"), ("event_retractions", "event_id")])
def test_a_wrong_event_is_retracted_and_neither_it_nor_its_retraction_can_be_deleted(app, api, table: str, column: str) -> None:  # noqa: ANN001
    owner = api.create_customer("华山医院", kind="owner")
    visit = api.event("visit", customer_id=owner["id"], attributes={"reception": "welcoming"})
    r = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "logged twice"})
    assert r.status_code == 200, r.text
    with app.state.context.db.engine.connect() as conn, pytest.raises(DBAPIError, match=f"{table} is append-only"):
        conn.execute(text(f"DELETE FROM {table} WHERE {column} = :id"), {"id": visit["id"]})
    assert api.get(f"/v1/events/{visit['id']}").json()["retraction"]["reason"] == "logged twice"
