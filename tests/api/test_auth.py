"""Bearer API keys with scopes: who may read, who may write, and what a refusal looks like."""

from __future__ import annotations

import pytest

from tests.api.expectations import assert_problem, stored_state
from tests.api.scenarios import at, issue_key

V1_READS = ["/v1/customers", "/v1/projects", "/v1/events", "/v1/rulebook"]


@pytest.mark.parametrize("path", V1_READS)
def test_v1_without_a_key_is_401_with_a_bearer_challenge(anonymous, path: str) -> None:
    r = anonymous.get(path)

    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_unknown_key_is_401(client_for) -> None:
    r = client_for("rk_not-a-key-we-issued").get("/v1/customers")

    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_basic_auth_instead_of_bearer_is_401(client_for, app) -> None:
    secret = issue_key(app, "erp", ["read"])
    c = client_for(None, Authorization=f"Basic {secret}")

    assert_problem(c.get("/v1/customers"), 401)


def test_revoked_key_is_401(client_for, app) -> None:
    secret = issue_key(app, "old-phone", ["read", "write"], revoked=True)

    r = client_for(secret).get("/v1/customers")

    assert_problem(r, 401)
    assert "revoked" in r.json()["detail"]


def test_read_key_reads(client_for, app, api) -> None:
    api.create_customer("华东安装", "installer")
    reader = client_for(issue_key(app, "dashboard", ["read"]))

    for path in V1_READS:
        assert reader.get(path).status_code == 200, path


def test_read_key_cannot_write_and_nothing_is_stored(client_for, app, api) -> None:
    customer = api.create_customer("华东安装", "installer")
    reader = client_for(issue_key(app, "dashboard", ["read"]))
    before = stored_state(api, customers=(customer["id"],))

    assert_problem(reader.post("/v1/customers", json={"name": "新客户", "kind": "owner"}), 403)
    assert_problem(reader.patch(f"/v1/customers/{customer['id']}", json={"rep": "王芳"}), 403)
    event = {"type": "company_introduced", "customer_id": customer["id"], "occurred_at": at(1)}
    assert_problem(reader.post("/v1/events", json=event), 403)

    assert stored_state(api, customers=(customer["id"],)) == before
    assert [c["id"] for c in api.get("/v1/customers").json()["items"]] == [customer["id"]]


def test_write_key_without_read_cannot_list(client_for, app) -> None:
    writer = client_for(issue_key(app, "webhook-form-7", ["write"]))

    assert_problem(writer.get("/v1/events"), 403)


def test_write_key_logs_events_and_is_the_default_actor(client_for, app, api) -> None:
    customer = api.create_customer("华东安装", "installer")
    writer = client_for(issue_key(app, "mobile", ["read", "write"]))

    r = writer.post("/v1/events", json={"type": "company_introduced", "customer_id": customer["id"], "occurred_at": at(1)})

    assert r.status_code == 201, r.text
    assert r.json()["actor"] == "key:mobile"


def test_x_actor_header_names_the_user_behind_the_key(client_for, app, api) -> None:
    customer = api.create_customer("华东安装", "installer")
    writer = client_for(issue_key(app, "mobile", ["read", "write"]), **{"X-Actor": "rep:wang.fang"})

    r = writer.post("/v1/events", json={"type": "company_introduced", "customer_id": customer["id"], "occurred_at": at(1)})

    assert r.json()["actor"] == "rep:wang.fang"
