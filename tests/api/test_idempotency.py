"""Idempotency-Key on event POSTs and retractions (IETF draft-ietf-httpapi-idempotency-key-header):
a retry gets the first answer, a reused key with another body is 422, a key still in flight 409."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from app.api.events import request_fingerprint
from app.api.idempotency import PRUNED_AT_ONCE
from app.api.schemas import EventIn
from app.db import models as m
from app.services.keys import BOOTSTRAP_NAME
from tests.api.expectations import assert_problem, stored_state
from tests.api.scenarios import at, issue_key, owner_level_one_events


def third_visit(customer_id: int) -> dict[str, Any]:
    return {"type": "visit", "customer_id": customer_id, "occurred_at": at(7), "attributes": {"reception": "neutral"}}


def owner_one_visit_short_of_level_one(api) -> int:  # noqa: ANN001
    owner = api.create_customer("仁济医院基建处", "owner")
    owner_level_one_events(api, owner["id"], visits=2)
    return owner["id"]


def key_in_flight(app, key: str, body: dict[str, Any], *, for_seconds: int = 60) -> None:  # noqa: ANN001
    """What the store holds while the first request with `key` is still being worked on."""
    ctx = app.state.context
    now = ctx.clock()
    fp = request_fingerprint(ctx.rulebook, EventIn(**body))
    with ctx.db.session(write=True) as session:
        api_key = session.scalar(select(m.ApiKey).where(m.ApiKey.name == BOOTSTRAP_NAME))
        session.add(m.IdempotencyRecord(api_key_id=api_key.id, key=key, fingerprint=fp, created_at=now, locked_until=now + timedelta(seconds=for_seconds)))


def test_a_retry_with_the_same_key_gets_the_first_answer_and_counts_once(api) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "visit-7f3a"}
    first = api.post("/v1/events", json=third_visit(owner), headers=headers)
    assert first.status_code == 201 and first.json()["effects"]
    before = stored_state(api, customers=(owner,))

    retry = api.post("/v1/events", json=third_visit(owner), headers=headers)

    assert retry.status_code == first.status_code
    assert retry.content == first.content
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.headers["location"] == first.headers["location"] == f"/v1/events/{first.json()['id']}"
    assert stored_state(api, customers=(owner,)) == before


def test_an_attribute_sent_with_its_default_is_the_same_request(api) -> None:
    """`with_manager` defaults to false: sent as false or left out, the visit is the same
    event, and a retry that spells it out is the same request; sent as true, it is another."""
    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "visit-defaults"}
    first = api.post("/v1/events", json=third_visit(owner), headers=headers)
    assert first.status_code == 201, first.text

    spelled_out = {**third_visit(owner), "attributes": {"reception": "neutral", "with_manager": False}}
    retry = api.post("/v1/events", json=spelled_out, headers=headers)

    assert retry.status_code == 201 and retry.headers.get("idempotent-replayed") == "true"
    assert retry.content == first.content
    other = {**third_visit(owner), "attributes": {"reception": "neutral", "with_manager": True}}
    assert_problem(api.post("/v1/events", json=other, headers=headers), 422, "Idempotency-Key")


def test_a_key_whose_request_failed_with_the_database_is_free_for_the_retry(api, monkeypatch) -> None:  # noqa: ANN001
    """The 503 says retry; the key must not answer 409 'in progress' until its lease runs
    out because freeing it needed the database that had just failed too."""
    from sqlalchemy.exc import OperationalError

    from app.api import idempotency
    from app.services import events as svc

    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "visit-db-away"}
    real_record, real_run = svc.record_event, idempotency.run_statement

    def away(*_: Any, **__: Any) -> Any:
        raise OperationalError("INSERT INTO events", {}, Exception("server closed the connection unexpectedly"))

    def release_fails(session: Any, statement: Any, **params: Any) -> Any:
        if statement is idempotency._UNANSWERED:
            away()
        return real_run(session, statement, **params)

    monkeypatch.setattr(svc, "record_event", away)
    monkeypatch.setattr(idempotency, "run_statement", release_fails)
    assert_problem(api.post("/v1/events", json=third_visit(owner), headers=headers), 503)

    monkeypatch.setattr(svc, "record_event", real_record)  # the database is back
    monkeypatch.setattr(idempotency, "run_statement", real_run)
    retry = api.post("/v1/events", json=third_visit(owner), headers=headers)

    assert retry.status_code == 201, retry.text
    assert retry.headers.get("idempotent-replayed") is None  # it ran: the first stored nothing
    assert api.post("/v1/events", json=third_visit(owner), headers=headers).headers.get("idempotent-replayed") == "true"


def test_a_batch_that_committed_is_answered_as_it_was_though_its_answer_could_not_be_stored(api, monkeypatch) -> None:  # noqa: ANN001
    """Found by a concurrency hunt on PostgreSQL: a keyed batch stores its answer after its
    commit, in a transaction of its own. The connection dropped between the two, and the
    caller got 503 "nothing was stored" for a batch stored whole; its retry got 409, then
    `duplicate` items with no effects: nobody learned the grades it changed."""
    from sqlalchemy.exc import OperationalError

    from app.api import idempotency

    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "batch-db-away"}
    real_store = idempotency._store
    failures = []

    def away_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise OperationalError("UPDATE idempotency_keys", {}, Exception("server closed the connection unexpectedly"))
        return real_store(*args, **kwargs)

    monkeypatch.setattr(idempotency, "_store", away_once)
    batch = [{**third_visit(owner), "source": "erp", "external_id": "VISIT-3"}]
    first = api.post("/v1/events/batch", json=batch, headers=headers)

    assert first.status_code == 200, first.text
    assert first.json()["created"] == 1 and first.json()["effects"], first.text  # what happened, effects included
    assert failures  # its answer was not stored with it

    other = api.post("/v1/events", json={**third_visit(owner), "occurred_at": at(8)}, headers={"Idempotency-Key": "next-keyed"})
    assert other.status_code == 201  # the next keyed request stores the answer that waited
    retry = api.post("/v1/events/batch", json=batch, headers=headers)
    assert retry.headers.get("idempotent-replayed") == "true" and retry.content == first.content


def test_a_request_that_outlives_its_lease_stores_nothing_where_a_retry_took_the_key_over(api, app, clock, monkeypatch) -> None:  # noqa: ANN001
    """Found by a hunt across two processes on PostgreSQL: the first request waited on a row
    lock past its lease, its client retried, the retry took the key over and recorded the
    visit, and then the first recorded it too (no external_id): two visits for one, and the
    retry's answer overwrote the first's. The first now finds its claim gone when it comes
    to store its answer, and its transaction rolls back."""
    import threading

    from app.api import idempotency

    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "slow-visit"}
    entered, release = threading.Event(), threading.Event()
    real_run = idempotency.run
    held = []

    def first_waits(ctx, caller, key, fingerprint_of, work):  # noqa: ANN001, ANN202
        def work_after_a_wait(keep):  # noqa: ANN001, ANN202
            if not held:  # the first request: claimed, then held up before its write
                held.append(key)
                entered.set()
                assert release.wait(30)
            return work(keep)

        return real_run(ctx, caller, key, fingerprint_of, work_after_a_wait)

    monkeypatch.setattr(idempotency, "run", first_waits)
    first = api.send_soon("POST", "/v1/events", json=third_visit(owner), headers=headers)
    assert entered.wait(30)
    clock.advance(seconds=app.state.context.settings.idempotency_lease_seconds + 1)

    retry = api.post("/v1/events", json=third_visit(owner), headers=headers)
    release.set()
    late = first.result(30)

    assert retry.status_code == 201, retry.text
    assert "a retry with the key took it over" in assert_problem(late, 409)["detail"]
    visits = api.get("/v1/events", params={"customer_id": owner, "type": "visit"}).json()["items"]
    assert len(visits) == 3  # two before, and this one once
    replay = api.post("/v1/events", json=third_visit(owner), headers=headers)
    assert replay.headers.get("idempotent-replayed") == "true" and replay.content == retry.content


def test_the_same_key_with_another_body_is_422_and_stores_nothing(api) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    headers = {"Idempotency-Key": "visit-7f3a"}
    api.post("/v1/events", json=third_visit(owner), headers=headers)
    before = stored_state(api, customers=(owner,))

    other = {**third_visit(owner), "attributes": {"reception": "rejecting"}}
    r = api.post("/v1/events", json=other, headers=headers)

    assert_problem(r, 422, "Idempotency-Key")
    assert stored_state(api, customers=(owner,)) == before


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ((b"\xff", b"\xfe"), (b"\xfe", b"\xff"), False),  # both are "not UTF-8", in another order
        ((b"\xff", b"\xfe"), (b"\xff", b"\xfe"), True),
        (("是".encode(), "否".encode()), ("是".encode(), "否".encode()), True),
    ],
)
def test_a_batch_is_the_same_request_only_byte_for_byte(api, first, second, same) -> None:  # noqa: ANN001
    """openapi.md: a batch's body is compared byte for byte. Bytes that are not UTF-8 were
    once read as U+FFFD each, so two such bodies passed for one request."""
    owner = api.create_customer("仁济医院基建处", "owner")["id"]

    def body(marks: tuple[bytes, bytes]) -> bytes:
        lines = [json.dumps({"type": "visit", "customer_id": owner, "occurred_at": at(7), "note": "MARK"}).encode().replace(b"MARK", mark) for mark in marks]
        return b"\n".join(lines)

    headers = {"Idempotency-Key": "batch-bytes", "Content-Type": "application/x-ndjson"}
    r1 = api.post("/v1/events/batch", content=body(first), headers=headers)
    assert r1.status_code == 200, r1.text
    r2 = api.post("/v1/events/batch", content=body(second), headers=headers)

    if same:
        assert r2.headers.get("idempotent-replayed") == "true" and r2.content == r1.content
    else:
        assert_problem(r2, 422, "Idempotency-Key")


def test_a_key_still_in_flight_is_409_with_retry_after(api, app) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    key_in_flight(app, "visit-7f3a", third_visit(owner))
    before = stored_state(api, customers=(owner,))

    r = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-7f3a"})

    assert_problem(r, 409)
    assert r.headers["retry-after"]
    assert stored_state(api, customers=(owner,)) == before


def test_a_key_in_flight_with_another_body_is_still_422(api, app) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    key_in_flight(app, "visit-7f3a", third_visit(owner))

    r = api.post("/v1/events", json={**third_visit(owner), "note": "edited"}, headers={"Idempotency-Key": "visit-7f3a"})

    assert_problem(r, 422, "Idempotency-Key")


def test_a_key_whose_first_attempt_died_can_be_retried_after_its_lease(api, app, clock) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    key_in_flight(app, "visit-7f3a", third_visit(owner), for_seconds=60)
    clock.advance(seconds=61)

    r = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-7f3a"})

    assert r.status_code == 201, r.text
    replay = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-7f3a"})
    assert replay.content == r.content


def test_keys_are_kept_at_least_a_day(api, clock) -> None:
    owner = owner_one_visit_short_of_level_one(api)
    first = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-7f3a"})
    clock.advance(hours=23, minutes=59)

    retry = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-7f3a"})

    assert (retry.status_code, retry.content) == (201, first.content)
    assert len(api.get("/v1/events", params={"customer_id": owner}).json()["items"]) == 7


def test_expired_keys_are_pruned_a_few_at_a_time_and_an_expired_one_is_free_again(api, app, clock) -> None:
    """The first keyed request after a quiet spell deleted every expired record in its claim's
    transaction: on SQLite every write waited 4.4 s behind 500,000 of them (a hunt's find)."""
    owner = api.create_customer("仁济医院基建处", "owner")["id"]
    body = {"type": "company_introduced", "customer_id": owner, "occurred_at": at(1)}
    for i in range(PRUNED_AT_ONCE + 50):
        assert api.post("/v1/events", json=body, headers={"Idempotency-Key": f"old-{i}"}).status_code == 201
    clock.advance(hours=25)

    def kept() -> int:
        with app.state.context.db.session(write=False) as session:
            return len(session.scalars(select(m.IdempotencyRecord.key)).all())

    # A key that expired is this request's again, though older ones are still there.
    again = api.post("/v1/events", json=body, headers={"Idempotency-Key": f"old-{PRUNED_AT_ONCE + 49}"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert kept() == 50  # 150 old ones, this key's and the 100 oldest others gone; its new one kept
    assert api.post("/v1/events", json=body, headers={"Idempotency-Key": "new"}).status_code == 201
    assert kept() == 2


def test_keys_belong_to_one_api_key(api, app, client_for) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    other = client_for(issue_key(app, "erp", ["read", "write"]))
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(1)}

    a = api.post("/v1/events", json=body, headers={"Idempotency-Key": "same"})
    b = other.post("/v1/events", json=body, headers={"Idempotency-Key": "same"})

    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_a_refused_request_is_replayed_as_refused(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    bad = {"type": "bid_joined", "customer_id": owner["id"], "project_id": 999999, "occurred_at": at(1)}

    first = api.post("/v1/events", json=bad, headers={"Idempotency-Key": "k1"})
    retry = api.post("/v1/events", json=bad, headers={"Idempotency-Key": "k1"})

    assert_problem(first, 422, "project_id", "customer_id")
    assert (retry.status_code, retry.content) == (first.status_code, first.content)
    assert api.get("/v1/events").json()["items"] == []


def test_an_overlong_key_is_refused(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(1)}

    assert_problem(api.post("/v1/events", json=body, headers={"Idempotency-Key": "k" * 256}), 422, "Idempotency-Key")
    assert api.get("/v1/events").json()["items"] == []


def test_a_key_sent_twice_is_refused(api) -> None:
    # A hunt's find: the second line was ignored, so a retry carrying only it stored the
    # event again.
    owner = api.create_customer("仁济医院基建处", "owner")
    body = {"type": "company_introduced", "customer_id": owner["id"], "occurred_at": at(1)}

    twice = api.post("/v1/events", json=body, headers=[("Idempotency-Key", "k1-x"), ("Idempotency-Key", "k2-x")])

    assert "given 2 times" in assert_problem(twice, 422, "Idempotency-Key")["errors"][0]["reason"]
    assert api.get("/v1/events").json()["items"] == []


def test_retraction_with_a_key_is_replayed_too(api) -> None:
    owner = api.create_customer("仁济医院基建处", "owner")
    visit = owner_level_one_events(api, owner["id"])[-1]
    headers = {"Idempotency-Key": "retract-1"}

    first = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "logged twice"}, headers=headers)
    retry = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "logged twice"}, headers=headers)
    reused = api.post(f"/v1/events/{visit['id']}/retract", json={"reason": "another"}, headers=headers)

    assert first.json()["effects"] == [{"subject": "customer", "id": owner["id"], "metric": "relationship_level", "old": 1, "new": 0}]
    assert (retry.status_code, retry.content) == (200, first.content)
    assert_problem(reused, 422, "Idempotency-Key")


def test_a_keyed_event_and_its_answer_are_committed_together(api, app) -> None:  # noqa: ANN001
    """A keyed POST claims its key, then stores the event and the answer in one transaction:
    no moment at which the event is committed and a retry would find no answer to replay."""
    owner = owner_one_visit_short_of_level_one(api)
    commits: list[object] = []
    engine = app.state.context.db.engine
    listener = lambda conn: commits.append(conn)  # noqa: E731
    event.listen(engine, "commit", listener)
    try:
        first = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-one-commit"})
    finally:
        event.remove(engine, "commit", listener)
    assert first.status_code == 201, first.text
    assert len(commits) == 2  # the claim, then the event with its answer
    retry = api.post("/v1/events", json=third_visit(owner), headers={"Idempotency-Key": "visit-one-commit"})
    assert retry.headers.get("idempotent-replayed") == "true" and retry.content == first.content
