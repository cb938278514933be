"""/v1/events: logging a fact, de-duplication by source + external_id, reading the log,
and retraction."""

from __future__ import annotations

import base64
import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from app.services.events import NewEvent, record_event
from app.startup import initialize
from tests.api.expectations import all_pages, assert_problem, stored_state
from tests.api.scenarios import at, level, owner_level_one_events
from tests.conftest import is_postgres


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# --- recording -----------------------------------------------------------------------------


def test_recorded_event_comes_back_with_its_fields_at_the_top_level(api, clock) -> None:
    customer = api.create_customer("仁济医院基建处", "owner")

    r = api.post(
        "/v1/events",
        json={"type": "visit", "customer_id": customer["id"], "occurred_at": "2026-11-19T10:00:00+08:00", "attributes": {"reception": "welcoming"}, "note": "带了样本"},
    )

    assert r.status_code == 201, r.text
    e = r.json()
    assert r.headers["location"] == f"/v1/events/{e['id']}"
    assert e["type"] == "visit" and e["customer_id"] == customer["id"] and e["project_id"] is None
    assert parse(e["occurred_at"]) == datetime(2026, 11, 19, 2, 0, tzinfo=timezone.utc)
    assert parse(e["recorded_at"]) == clock.now
    assert e["attributes"] == {"reception": "welcoming", "with_manager": False}  # the default filled in
    assert (e["source"], e["external_id"], e["actor"], e["note"], e["retraction"]) == ("api", None, "key:bootstrap", "带了样本", None)
    assert e["effects"] == []
    assert api.get(f"/v1/events/{e['id']}").json() == {k: v for k, v in e.items() if k != "effects"}


def test_effects_list_every_grade_the_event_changed(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    project = api.create_project(owner["id"])
    events = owner_level_one_events(api, owner["id"])

    assert events[-1]["effects"] == [{"subject": "customer", "id": owner["id"], "metric": "relationship_level", "old": 0, "new": 1}]
    # The owner's level change does not move the project: H30 needs more than the owner.
    assert api.get(f"/v1/projects/{project['id']}").json()["heat"]["percent"] == 0


def test_unknown_event_is_404(api) -> None:
    assert_problem(api.get("/v1/events/999999"), 404)


def test_same_source_and_external_id_is_recorded_once(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    events = owner_level_one_events(api, owner["id"], visits=2)
    body = {"type": "visit", "customer_id": owner["id"], "occurred_at": at(7), "attributes": {"reception": "neutral"}, "source": "erp", "external_id": "VISIT-2026-0042"}
    first = api.post("/v1/events", json=body)
    assert first.status_code == 201 and first.json()["effects"][0]["new"] == 1
    before = stored_state(api, customers=(owner["id"],))

    again = api.post("/v1/events", json=body)

    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["effects"] == []
    assert stored_state(api, customers=(owner["id"],)) == before
    assert len(before.events) == len(events) + 1


def test_a_retried_delivery_with_a_changed_body_still_counts_once(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(2), "source": "jinshuju-relay", "external_id": "sub-981"}
    first = api.post("/v1/events", json=body).json()

    again = api.post("/v1/events", json={**body, "note": "resent by the form tool"})

    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.json()["note"] is None
    assert len(api.get("/v1/events").json()["items"]) == 1


def test_the_same_external_id_from_another_source_is_another_event(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(2), "external_id": "42"}

    a = api.post("/v1/events", json={**body, "source": "erp"})
    b = api.post("/v1/events", json={**body, "source": "mobile"})

    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_a_duplicate_of_a_retracted_event_returns_it_with_its_retraction(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(2), "source": "erp", "external_id": "E-1"}
    first = api.post("/v1/events", json=body).json()
    api.post(f"/v1/events/{first['id']}/retract", json={"reason": "wrong customer"})

    again = api.post("/v1/events", json=body)

    assert again.status_code == 200
    assert again.json()["id"] == first["id"] and again.json()["retraction"]["reason"] == "wrong customer"


# --- listing -------------------------------------------------------------------------------


def make_log(api) -> dict[str, object]:  # noqa: ANN001
    """Two customers and a project, with events on several days."""
    owner = api.create_customer("仁济医院基建处", "owner")
    installer = api.create_customer("上海建工安装", "installer")
    project = api.create_project(owner["id"])
    ids = {
        "intro_owner": api.event("company_introduced", customer_id=owner["id"], at=at(1))["id"],
        "visit_owner": api.event("visit", customer_id=owner["id"], project_id=project["id"], at=at(3), attributes={"reception": "neutral"})["id"],
        "intro_installer": api.event("company_introduced", customer_id=installer["id"], at=at(5))["id"],
        "bid": api.event("bid_joined", customer_id=installer["id"], project_id=project["id"], at=at(7))["id"],
        "stage": api.event("stage_changed", project_id=project["id"], at=at(9), attributes={"stage": "bidding"})["id"],
    }
    return {"owner": owner["id"], "installer": installer["id"], "project": project["id"], **ids}


def event_ids(api, **params: object) -> list[int]:  # noqa: ANN001
    r = api.get("/v1/events", params=params)
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()["items"]]


def test_events_filter_by_customer_project_and_type(api) -> None:
    log = make_log(api)

    assert event_ids(api, customer_id=log["owner"]) == [log["intro_owner"], log["visit_owner"]]
    assert event_ids(api, customer_id=log["installer"]) == [log["intro_installer"], log["bid"]]
    assert event_ids(api, project_id=log["project"]) == [log["visit_owner"], log["bid"], log["stage"]]
    assert event_ids(api, type="company_introduced") == [log["intro_owner"], log["intro_installer"]]
    assert event_ids(api, customer_id=log["installer"], project_id=log["project"]) == [log["bid"]]
    assert event_ids(api, type="nothing_like_this") == []


def test_events_filter_by_time_range_from_inclusive_to_exclusive(api) -> None:
    log = make_log(api)

    assert event_ids(api, **{"from": at(3), "to": at(7)}) == [log["visit_owner"], log["intro_installer"]]
    assert event_ids(api, **{"from": "2026-11-08T00:00:00Z"}) == [log["stage"]]
    assert event_ids(api, to="2026-11-01T02:00:00Z") == []  # 10:00 in Beijing is 02:00 UTC: excluded
    assert event_ids(api, to="2026-11-01T02:00:01Z") == [log["intro_owner"]]


def test_events_list_newest_first_on_request(api) -> None:
    log = make_log(api)

    assert event_ids(api, order="desc", project_id=log["project"]) == [log["stage"], log["bid"], log["visit_owner"]]


def test_events_page_through_the_log_in_both_orders(api) -> None:
    make_log(api)
    make_log(api)
    everything = event_ids(api, limit=200)
    assert len(everything) == 10

    assert [e["id"] for e in all_pages(api, "/v1/events", limit=3)] == everything
    assert [e["id"] for e in all_pages(api, "/v1/events", limit=4, order="desc")] == everything[::-1]


def visit(customer: int) -> dict[str, Any]:
    return {"type": "visit", "customer_id": customer, "occurred_at": at(1), "attributes": {"reception": "neutral"}}


@contextmanager
def open_write(app, customer: int, *, events: int = 1) -> Iterator[None]:  # noqa: ANN001
    """A write of `events` visits for `customer`, in a thread, left open after its first
    (holding its transaction id and that event's id) while the block runs; its other events
    are recorded, and it commits, once the block ends."""
    rulebook, db = app.state.context.rulebook, app.state.context.db
    begun, go = threading.Event(), threading.Event()

    def write() -> None:
        with db.session(write=True) as s:  # commits when the block ends
            for _ in range(events):
                now = datetime.now(timezone.utc)
                record_event(s, rulebook, NewEvent(type="visit", customer_id=customer, occurred_at=now, attributes={"reception": "neutral"}), actor="t", now=now)
                begun.set()
                go.wait(30)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert begun.wait(30)
        yield
    finally:
        go.set()
        writer.join(30)


def test_a_cursor_never_passes_an_event_whose_transaction_commits_later(api, app, migrated: str) -> None:
    """Found by a hunt on PostgreSQL: an id is taken at the INSERT and seen at the COMMIT, so
    a batch that took its ids first and committed last was passed by a reader's cursor
    ("after id N") and never listed: 8,000 events lost to an ERP paging the log. Here one
    write stays open while two later ones commit; every cursor issued meanwhile, followed
    once that write has committed, must list exactly the events not yet read."""
    if not is_postgres(migrated):
        pytest.skip("SQLite has one writer: its ids are taken and seen in commit order")
    held, other = (api.create_customer(name, "installer")["id"] for name in ("上海建工安装", "华东安装"))

    before = [api.post("/v1/events", json=visit(other)).json()["id"] for _ in range(2)]
    with open_write(app, held):
        after = [api.post("/v1/events", json=visit(other)).json()["id"] for _ in range(2)]
        read: list[int] = []
        issued: list[tuple[str, int]] = []  # (cursor, how many events had been read with it)
        cursor = None
        while True:
            page = api.get("/v1/events", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
            read += [e["id"] for e in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
            issued.append((cursor, len(read)))
    everything = event_ids(api, limit=200)
    assert len(everything) == 5 and set(before + after) < set(everything)

    assert issued, "a cursor was issued while the write was open"
    for cursor, seen in issued:
        rest = [e["id"] for e in all_pages(api, "/v1/events", cursor=cursor, limit=2)]
        assert sorted(read[:seen] + rest) == sorted(everything), (read[:seen], rest)


def test_a_transaction_open_in_another_database_does_not_hold_the_list_back(api, migrated: str) -> None:
    """Found by two hunts: transaction ids are the whole server's, and the oldest-first list
    waited for every transaction older than an event's, in any database: one left open by
    another application (or a DROP DATABASE running) hid every new event for as long as it
    lasted. A transaction in this database still holds it back, as it must."""
    if not is_postgres(migrated):
        pytest.skip("SQLite keeps no transaction ids")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(migrated)
    customer = api.create_customer("上海建工安装", "installer")["id"]

    def visit() -> int:
        return api.post("/v1/events", json={"type": "visit", "customer_id": customer, "occurred_at": at(1), "attributes": {"reception": "neutral"}}).json()["id"]

    def connect(database: str) -> psycopg.Connection:
        return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname=database)

    elsewhere = connect("postgres")
    try:
        elsewhere.execute("SELECT pg_current_xact_id()")  # a write transaction: it holds an id
        first = visit()
        assert event_ids(api, limit=200) == [first]
    finally:
        elsewhere.close()

    here = connect(url.database)
    try:
        here.execute("SELECT pg_current_xact_id()")
        second = visit()
        assert event_ids(api, limit=200) == [first]  # behind an older write of this database
    finally:
        here.close()
    assert event_ids(api, limit=200) == [first, second]


def test_events_restored_from_a_server_further_along_are_listed_oldest_first_after_start_up(api, app, migrated: str, settings, clock) -> None:  # noqa: ANN001
    """Found by a hunt: a pg_dump restored on another PostgreSQL server keeps the
    transaction ids of the one it came from. Where those are ahead of this server's, the
    oldest-first list hid every restored event (only transactions older than every running
    one are listed) and then listed them after newer ones. Start-up gives them 0."""
    if not is_postgres(migrated):
        pytest.skip("SQLite keeps no transaction ids")
    db = app.state.context.db
    customer = api.create_customer("上海建工安装", "installer")["id"]
    restored = [api.post("/v1/events", json={"type": "visit", "customer_id": customer, "occurred_at": at(1), "attributes": {"reception": "neutral"}}).json()["id"] for _ in range(3)]
    with db.session(write=True) as s:  # what the other server's ids look like here
        s.execute(text("ALTER TABLE events DISABLE TRIGGER events_append_only"))
        s.execute(text("UPDATE events SET tx = tx + 1000000000"))
        s.execute(text("ALTER TABLE events ENABLE TRIGGER events_append_only"))
    assert event_ids(api, limit=200) == []  # what the hunt saw

    initialize(db, settings, None, now=clock())  # what `rapport serve` and `migrate` run
    later = api.post("/v1/events", json={"type": "visit", "customer_id": customer, "occurred_at": at(1), "attributes": {"reception": "neutral"}}).json()["id"]

    assert event_ids(api, limit=200) == [*restored, later]
    with db.session(write=True) as s:  # the append-only trigger is back
        with pytest.raises(Exception, match="never updated"):
            s.execute(text("UPDATE events SET tx = 1"))


def test_a_cursor_is_refused_for_the_other_order_and_when_forged(api) -> None:
    make_log(api)
    cursor = api.get("/v1/events", params={"limit": 2}).json()["next_cursor"]

    assert_problem(api.get("/v1/events", params={"cursor": cursor, "order": "desc"}), 422, "cursor")
    assert_problem(api.get("/v1/events", params={"cursor": "%%%"}), 422, "cursor")
    assert_problem(api.get("/v1/events", params={"from": "2026-11-01T00:00:00"}), 422, "from")
    assert_problem(api.get("/v1/events", params={"order": "sideways"}), 422, "order")


def by_hand(after: int) -> str:
    """An events cursor made by hand: a position with no transaction."""
    return base64.urlsafe_b64encode(json.dumps({"after": after, "desc": False, "of": "events"}).encode()).decode().rstrip("=")


def test_a_cursor_made_by_hand_starts_after_the_id_it_names(api) -> None:
    """A hunt's find: on PostgreSQL, where a cursor also names a transaction, one without it
    (made by hand) started at the first event again."""
    make_log(api)
    ids = [e["id"] for e in all_pages(api, "/v1/events")]
    assert len(ids) >= 5
    assert [e["id"] for e in all_pages(api, "/v1/events", cursor=by_hand(ids[2]), limit=2)] == ids[3:]
    assert api.get("/v1/events", params={"cursor": by_hand(ids[-1] + 100)}).json()["items"] == []


def test_a_cursor_made_by_hand_leaves_no_larger_id_behind(api, app, migrated: str) -> None:
    """A review's find: on PostgreSQL an older transaction can commit a larger id after a newer
    one's smaller id; a hand-made cursor placed at the smaller id's position never listed the
    larger. It may repeat a smaller id; it must not pass a larger one."""
    if not is_postgres(migrated):
        pytest.skip("SQLite has one writer: its ids are taken and seen in commit order")
    older_customer, newer_customer = (api.create_customer(name, "installer")["id"] for name in ("上海建工安装", "华东安装"))
    # The older write's first event takes its transaction's id; its second, an event id after the newer one's.
    with open_write(app, older_customer, events=2):
        newer = api.post("/v1/events", json=visit(newer_customer))
        assert newer.status_code == 201, newer.text
    ids = event_ids(api, limit=200)
    assert len(ids) == 3 and newer.json()["id"] == sorted(ids)[1]
    for n in [0, *ids]:
        listed = [e["id"] for e in all_pages(api, "/v1/events", cursor=by_hand(n), limit=2)]
        assert {i for i in ids if i > n} <= set(listed), (n, listed)


# --- retraction ----------------------------------------------------------------------------


def test_retraction_regrades_and_keeps_the_event_listed(api, clock) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    visit = owner_level_one_events(api, owner["id"])[-1]
    clock.advance(hours=3)

    r = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "logged twice"})

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == visit["id"] and body["type"] == "visit"
    assert body["effects"] == [{"subject": "customer", "id": owner["id"], "metric": "relationship_level", "old": 1, "new": 0}]
    assert body["retraction"]["reason"] == "logged twice" and body["retraction"]["actor"] == "key:bootstrap"
    assert parse(body["retraction"]["at"]) == clock.now
    assert level(api, owner["id"]) == 0
    listed = {e["id"]: e for e in api.get("/v1/events", params={"customer_id": owner["id"]}).json()["items"]}
    assert len(listed) == 7 and listed[visit["id"]]["retraction"]["reason"] == "logged twice"
    rel = api.get(f"/v1/customers/{owner['id']}").json()["relationship"]
    assert visit["id"] not in next(c for c in rel["criteria"] if c["id"] == "O1.4")["evidence"]


def test_retracting_twice_changes_nothing_the_second_time(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    visit = owner_level_one_events(api, owner["id"])[-1]
    first = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "logged twice"})
    before = stored_state(api, customers=(owner["id"],))

    again = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "another reason"})

    assert again.status_code == 200
    assert again.json()["effects"] == []
    assert again.json()["retraction"] == first.json()["retraction"]
    assert stored_state(api, customers=(owner["id"],)) == before
    assert len(before.customers[owner["id"]][1]) == 2


def test_retracting_an_unknown_event_is_404(api) -> None:
    assert_problem(api.post("/v1/events/999999/retract", json={"reason": "?"}), 404)


def test_retraction_needs_a_reason(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    e = api.event("company_introduced", customer_id=owner["id"], at=at(1))

    assert_problem(api.post(f"/v1/events/{e['id']}/retract", json={}), 422, "reason")
    assert_problem(api.post(f"/v1/events/{e['id']}/retract", json={"reason": "   "}), 422, "reason")
    assert api.get(f"/v1/events/{e['id']}").json()["retraction"] is None


def test_a_bound_finer_than_a_microsecond_is_rounded_up_not_cut(api) -> None:
    # .NET writes seven fractional digits; pydantic cut the seventh: `from` ….0000001 let in
    # an event at ….000000 (before it), and `to` ….0000001 left one out (before it).
    customer = api.create_customer("上海建工安装", "installer")["id"]
    at_the_second = api.post("/v1/events", json={"type": "visit", "customer_id": customer, "occurred_at": "2026-05-01T00:00:00Z", "attributes": {"reception": "neutral"}}).json()["id"]

    assert event_ids(api, **{"from": "2026-05-01T00:00:00.0000001Z"}) == []
    assert event_ids(api, to="2026-05-01T00:00:00.0000001Z") == [at_the_second]
    assert event_ids(api, **{"from": "2026-05-01T00:00:00.0000000Z"}) == [at_the_second]
    assert event_ids(api, to="2026-05-01T00:00:00.0000000Z") == []
