"""A process whose rulebook is no longer the database's active one (the operator switched it
with `rapport migrate`, or another process started with another file) grades nothing under
it: its writes that grade are a 503 that stores nothing, and /readyz says it is not ready,
until it is restarted with the active rulebook (a hunt found such a process grading on)."""

from __future__ import annotations

import json

from app.domain.rulebook import load_rulebook, parse_rulebook
from app.services.state import sync_rulebook
from tests.api.expectations import assert_problem, row_counts

SWITCHED = "switched-1"


def switch(app, clock, rulebook) -> None:  # noqa: ANN001
    """What `rapport migrate` with another rulebook does to the database, from outside the app."""
    with app.state.context.db.session(write=True) as session:
        sync_rulebook(session, rulebook, now=clock())


def visit(customer_id: int, **fields: object) -> dict[str, object]:
    return {"type": "visit", "customer_id": customer_id, "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"reception": "welcoming"}, **fields}


def test_writes_that_grade_are_refused_after_the_rulebook_was_switched_and_served_again_after_the_switch_back(app, api, anonymous, clock) -> None:  # noqa: ANN001
    owner = api.create_customer("苏州工业园区管委会", kind="owner")
    project = api.create_project(owner["id"])
    assert api.post("/v1/events", json=visit(owner["id"])).status_code == 201
    other = parse_rulebook({**json.loads(json.dumps(load_rulebook().source)), "version": SWITCHED})
    switch(app, clock, other)
    before = row_counts(app)

    refused = [
        api.post("/v1/events", json=visit(owner["id"])),
        api.post("/v1/events", json={"type": "stage_changed", "project_id": project["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"stage": "bidding"}}),
        api.post("/v1/customers", json={"name": "新客户", "kind": "installer"}),
        api.post("/v1/projects", json={"name": "新项目", "owner_id": owner["id"]}),
        api.post("/v1/events/batch", json=[visit(owner["id"], source="erp", external_id="b-1")]),
    ]
    ready = anonymous.get("/readyz")

    for response in refused:
        problem = assert_problem(response, 503)
        assert problem["type"] == "urn:rapport:problem:rulebook-changed" and SWITCHED in problem["detail"]
    assert row_counts(app) == before
    assert assert_problem(ready, 503)["type"] == "urn:rapport:problem:rulebook-changed"
    assert api.get(f"/v1/customers/{owner['id']}").status_code == 200  # reads go on

    switch(app, clock, load_rulebook())
    assert api.post("/v1/events", json=visit(owner["id"])).status_code == 201
    assert anonymous.get("/readyz").status_code == 200


def test_reads_go_on_when_the_switched_rulebook_gave_a_level_this_process_has_no_label_for(app, api, clock) -> None:  # noqa: ANN001
    """A rulebook with a fifth installer level, switched to while this process runs the
    default: a customer at level 5 was a 500 (KeyError on the level's label), its list too."""
    installer = api.create_customer("上海建工安装有限公司", kind="installer")
    data = json.loads(json.dumps(load_rulebook().source))
    data["version"] = SWITCHED
    fifth = {"id": "I5.1", "label": {"zh": "第五级", "en": "Fifth"}, "when": {"event": "exclusive"}}
    data["levels"]["installer"].append({"level": 5, "label": {"zh": "五级", "en": "Level V"}, "criteria": [fifth]})
    data["level_labels"]["5"] = {"zh": "V级", "en": "Level V"}
    for step in data["levels"]["installer"][:4]:
        step["at_least"] = 1
        step["criteria"][0]["when"] = {"event": "exclusive"}
    switched = parse_rulebook(data)
    assert api.post("/v1/events", json={"type": "exclusive", "customer_id": installer["id"], "occurred_at": "2026-11-19T10:00:00+08:00"}).status_code == 201
    switch(app, clock, switched)  # re-grades everything under the new rulebook: level 5

    one = api.get(f"/v1/customers/{installer['id']}")
    listed = api.get("/v1/customers")

    assert one.status_code == 200, one.text
    assert one.json()["relationship"]["level"] == 5
    assert one.json()["relationship"]["label"] == {"zh": "?", "en": "?"}
    assert listed.status_code == 200 and listed.json()["items"][0]["relationship"]["level"] == 5


def test_a_release_that_grades_differently_re_grades_everything_at_its_first_start(app, api, settings, clock) -> None:  # noqa: ANN001
    """Found by a review: a release that changed how a log grades (here: stage changes at
    one instant) left the grades stored by the one before; `rapport verify` failed and the
    stage filter missed the project until someone ran `rapport regrade`. The first start of
    a release whose grading differs from the one recorded re-grades everything."""
    from sqlalchemy import text

    from app.services.state import GRADING, GRADING_RELEASE
    from app.services.verify import disagreements
    from app.startup import initialize

    owner = api.create_customer("苏州工业园区管委会", kind="owner")
    project = api.create_project(owner["id"])
    for stage in ("bidding", "awarded"):  # logged to the day, as an ERP does
        api.post("/v1/events", json={"type": "stage_changed", "project_id": project["id"], "occurred_at": "2026-11-19T00:00:00+08:00", "attributes": {"stage": stage}})
    db = app.state.context.db
    with db.session(write=True) as s:  # what the release before stored: the other tie-break
        s.execute(text("UPDATE projects SET stage = 'bidding', grade_hash = 0 WHERE id = :id"), {"id": project["id"]})
        s.execute(text("UPDATE service_state SET value = 'before' WHERE key = :key"), {"key": GRADING_RELEASE})
    with db.session(write=False) as s:
        assert [d for d in disagreements(s, app.state.context.rulebook, as_of=clock())]

    initialize(db, settings, app.state.context.rulebook, now=clock())  # `rapport serve` / `migrate`

    assert api.get(f"/v1/projects/{project['id']}").json()["heat"]["stage"] == "awarded"
    with db.session(write=False) as s:
        assert [d for d in disagreements(s, app.state.context.rulebook, as_of=clock())] == []
        assert s.execute(text("SELECT value FROM service_state WHERE key = :key"), {"key": GRADING_RELEASE}).scalar() == GRADING
    assert [p["id"] for p in api.get("/v1/projects", params={"stage": "awarded"}).json()["items"]] == [project["id"]]


def test_a_process_of_an_older_release_grades_nothing_once_a_newer_one_has_migrated(app, api, anonymous) -> None:  # noqa: ANN001
    """Found by two hunts: after `rapport migrate` of a release that grades differently, a
    server of the release before kept writing its own grades (its stage ties), `verify`
    failed and nothing repaired them. The database now records what grades (rulebook and
    release together), and a process of another release is not in force, as after a
    rulebook switch."""
    from sqlalchemy import text

    from app.grading import ACTIVE_DIGEST, _graded_by
    from app.services.state import GRADING_RELEASE

    owner = api.create_customer("苏州工业园区管委会", kind="owner")
    rulebook = app.state.context.rulebook
    with app.state.context.db.session(write=True) as s:  # what a newer release's migrate records
        s.execute(text("UPDATE service_state SET value = :v WHERE key = :k"), {"k": ACTIVE_DIGEST, "v": _graded_by(rulebook.digest, "2099-01-01")})
        s.execute(text("UPDATE service_state SET value = '2099-01-01' WHERE key = :k"), {"k": GRADING_RELEASE})
    before = row_counts(app)

    refused = api.post("/v1/events", json=visit(owner["id"]))

    problem = assert_problem(refused, 503)
    assert problem["type"] == "urn:rapport:problem:rulebook-changed" and "another release of Rapport" in problem["detail"]
    assert row_counts(app) == before
    assert assert_problem(anonymous.get("/readyz"), 503)["type"] == "urn:rapport:problem:rulebook-changed"
    assert api.get(f"/v1/customers/{owner['id']}").status_code == 200  # reads go on
