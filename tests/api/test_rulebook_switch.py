"""A process whose rulebook is no longer the database's active one (the operator switched it
with `rapport migrate`, or another process started with another file) grades nothing under
it: its writes that grade are a 503 that stores nothing, and /readyz says it is not ready,
until it is restarted with the active rulebook (a hunt found such a process grading on)."""

from __future__ import annotations

import json

from app.domain.rulebook import load_rulebook, parse_rulebook
from app.services.state import sync_rulebook

SWITCHED = "switched-1"


def switch(app, clock, rulebook) -> None:  # noqa: ANN001
    """What `rapport migrate` with another rulebook does to the database, from outside the app."""
    with app.state.context.db.session(write=True) as session:
        sync_rulebook(session, rulebook, now=clock())


def counts(app) -> tuple[int, int, int]:  # noqa: ANN001
    from sqlalchemy import text

    with app.state.context.db.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in ("events", "customers", "grade_history"))  # type: ignore[return-value]


def visit(customer_id: int, **fields: object) -> dict[str, object]:
    return {"type": "visit", "customer_id": customer_id, "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"reception": "welcoming"}, **fields}


def test_writes_that_grade_are_refused_after_the_rulebook_was_switched_and_served_again_after_the_switch_back(app, api, anonymous, clock) -> None:  # noqa: ANN001
    owner = api.create_customer("苏州工业园区管委会", kind="owner")
    project = api.create_project(owner["id"])
    assert api.post("/v1/events", json=visit(owner["id"])).status_code == 201
    other = parse_rulebook({**json.loads(json.dumps(load_rulebook().source)), "version": SWITCHED})
    switch(app, clock, other)
    before = counts(app)

    refused = [
        api.post("/v1/events", json=visit(owner["id"])),
        api.post("/v1/events", json={"type": "stage_changed", "project_id": project["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"stage": "bidding"}}),
        api.post("/v1/customers", json={"name": "新客户", "kind": "installer"}),
        api.post("/v1/projects", json={"name": "新项目", "owner_id": owner["id"]}),
        api.post("/v1/events/batch", json=[visit(owner["id"], source="erp", external_id="b-1")]),
    ]
    ready = anonymous.get("/readyz")

    for response in refused:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "urn:rapport:problem:rulebook-changed"
        assert SWITCHED in response.json()["detail"]
    assert counts(app) == before
    assert ready.status_code == 503 and ready.json()["type"] == "urn:rapport:problem:rulebook-changed"
    assert api.get(f"/v1/customers/{owner['id']}").status_code == 200  # reads go on

    switch(app, clock, load_rulebook())
    assert api.post("/v1/events", json=visit(owner["id"])).status_code == 201
    assert anonymous.get("/readyz").status_code == 200
