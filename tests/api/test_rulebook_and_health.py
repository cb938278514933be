"""Probes, browsable docs that work offline, and the active rulebook as callers read it."""

from __future__ import annotations

import json
import re

import pytest

from tests.api.expectations import assert_problem

EVENT_TYPES = {
    "materials_sent", "company_introduced", "contact_obtained", "inquiry_received", "visit",
    "impression_confirmed", "product_understood", "private_meeting", "info_shared", "easy_access",
    "rep_accepted", "order_placed", "deep_relationship", "prefers_us", "attended_promotion",
    "exclusive", "opens_doors", "advocates", "accepts_worse_terms", "switched_to_us",
    "stage_changed", "tender_brand", "spec_agreed", "owner_stance", "bid_joined", "bid_won",
    "product_accepted", "competitor_strategy_known", "contract_signed",
}  # fmt: skip
OWNER_CRITERIA = ["O1.1", "O1.2", "O1.3", "O1.4", "O1.5", "O2.1", "O2.2", "O2.3", "O2.4", "O3.1", "O3.2", "O3.3", "O3.4", "O3.5", "O4.1", "O4.2", "O4.3", "O4.4"]
INSTALLER_CRITERIA = [f"I{lvl}.{i}" for lvl, n in ((1, 5), (2, 5), (3, 5), (4, 5)) for i in range(1, n + 1)]


def test_healthz_answers_without_a_key(anonymous) -> None:
    r = anonymous.get("/healthz")

    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_answers_without_a_key_and_names_the_rulebook(anonymous) -> None:
    r = anonymous.get("/readyz")

    assert r.status_code == 200
    assert r.json() == {"status": "ready", "rulebook_version": "default-2026.11.1"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_this_service_not_a_cdn(anonymous, page: str) -> None:
    r = anonymous.get(page)

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "cdn." not in r.text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', r.text)
    assert any(a.endswith(".js") for a in assets), r.text
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by this service"
        assert anonymous.get(asset).status_code == 200, asset


def test_openapi_schema_describes_every_v1_endpoint(anonymous) -> None:
    r = anonymous.get("/openapi.json")

    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in (
        "/v1/customers", "/v1/customers/{customer_id}", "/v1/customers/{customer_id}/history",
        "/v1/projects", "/v1/projects/{project_id}", "/v1/projects/{project_id}/history",
        "/v1/events", "/v1/events/{event_id}", "/v1/events/{event_id}/retract", "/v1/rulebook",
    ):  # fmt: skip
        assert path in paths, path


def test_every_route_that_takes_a_key_documents_x_actor_once_and_the_hooks_do_not(anonymous) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]

    for path, operations in paths.items():
        for method, operation in operations.items():
            actors = [p for p in operation.get("parameters", []) if p["name"].lower() == "x-actor"]
            keyed = path.startswith("/v1/") and not path.startswith("/v1/hooks/")
            assert len(actors) == int(keyed), (method, path)
            if actors:
                assert actors[0]["in"] == "header" and actors[0]["schema"]["anyOf"][0]["maxLength"] == 100


def test_the_routes_that_take_an_idempotency_key_document_it(anonymous) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]

    keyed = {(method, path) for path, operations in paths.items() for method, operation in operations.items() if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))}

    assert keyed == {("post", "/v1/events"), ("post", "/v1/events/batch"), ("post", "/v1/events/{event_id}/retract")}


def test_an_x_actor_over_its_limit_is_422_naming_the_header_and_stores_nothing(api, app) -> None:
    customer = api.post("/v1/customers", json={"name": "长沙地铁", "kind": "owner"}, headers={"X-Actor": "rep:li"}).json()
    refused = api.post("/v1/events", json={"type": "visit", "customer_id": customer["id"], "occurred_at": "2026-11-01T10:00:00+00:00", "attributes": {"reception": "neutral"}}, headers={"X-Actor": "x" * 101})

    problem = assert_problem(refused, 422)
    assert problem["errors"] == [{"field": "x-actor", "in": "header", "reason": "String should have at most 100 characters"}]
    assert api.get("/v1/events", params={"customer_id": customer["id"]}).json()["items"] == []


def test_rulebook_needs_a_key(anonymous) -> None:
    assert_problem(anonymous.get("/v1/rulebook"), 401)


def test_rulebook_names_its_version_and_every_event_type_with_its_attributes(api) -> None:
    book = api.get("/v1/rulebook").json()

    assert book["version"] == "default-2026.11.1"
    assert set(book["event_types"]) == EVENT_TYPES
    visit = book["event_types"]["visit"]
    assert visit["attributes"]["reception"]["values"] == ["welcoming", "neutral", "rejecting"]
    assert visit["attributes"]["with_manager"]["type"] == "bool"
    assert book["event_types"]["bid_joined"]["customer_kind"] == "installer"
    assert book["event_types"]["stage_changed"]["attributes"]["stage"]["values"] == ["lead", "tender_drafting", "bidding", "awarded", "contracted", "won", "lost"]
    for et in book["event_types"].values():
        assert et["label"]["zh"] and et["label"]["en"]


def test_rulebook_lists_levels_one_to_four_for_owners_and_installers_with_bilingual_labels(api) -> None:
    levels = api.get("/v1/rulebook").json()["levels"]

    for kind, expected in (("owner", OWNER_CRITERIA), ("installer", INSTALLER_CRITERIA)):
        assert [lvl["level"] for lvl in levels[kind]] == [1, 2, 3, 4]
        ids = [c["id"] for lvl in levels[kind] for c in lvl["criteria"]]
        assert ids == expected
        for lvl in levels[kind]:
            assert lvl["label"]["zh"] and lvl["label"]["en"]
            for c in lvl["criteria"]:
                assert c["label"]["zh"] and c["label"]["en"], c


def test_rulebook_lists_heat_tiers_with_criteria_and_labels(api) -> None:
    heat = api.get("/v1/rulebook").json()["heat"]

    assert [t["percent"] for t in heat["tiers"]] == [90, 70, 50, 30]
    ids = [c["id"] for t in heat["tiers"] for c in t["criteria"]]
    assert ids == ["H90.1", "H90.2", "H70.1", "H70.2", "H70.3", "H50.1", "H50.2", "H50.3", "H50.4", "H30.1", "H30.2", "H30.3", "H30.4"]
    for tier in heat["tiers"]:
        assert tier["label"]["zh"] and tier["label"]["en"]
        for c in tier["criteria"]:
            assert c["label"]["zh"] and c["label"]["en"]
    assert heat["cold_label"] == {"zh": "冷(0%)", "en": "Cold (0 %)"}


def test_the_schema_names_the_api_key_on_every_keyed_operation_and_only_there(anonymous) -> None:
    # It declared no security at all: generated clients sent no key, and /docs took none.
    schema = anonymous.get("/openapi.json").json()

    assert {k: v for k, v in schema["components"]["securitySchemes"]["apiKey"].items() if k != "description"} == {"type": "http", "scheme": "bearer"}
    for path, operations in schema["paths"].items():
        keyed = path.startswith("/v1/") and not path.startswith("/v1/hooks/")
        for method, operation in operations.items():
            assert (operation.get("security") == [{"apiKey": []}]) == keyed, (method, path)


def test_the_schema_declares_the_415_of_a_compressed_body_where_it_is_answered(anonymous, api) -> None:
    """Any body sent with a Content-Encoding is a 415 on a keyed route (the form hook keeps
    what it gets in its inbox); the schema declared it on the batch and the hook only."""
    schema = anonymous.get("/openapi.json").json()

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answered = path.startswith("/v1/") and not path.startswith("/v1/hooks/") and method in ("post", "put", "patch")
            assert ("415" in operation["responses"]) == answered, (method, path)
    assert api.post("/v1/inbox/1/replay", content=b"{}", headers={"Content-Encoding": "gzip"}).status_code == 415


def test_the_schema_bounds_ids_with_json_schema_keywords_and_exact_integers(anonymous) -> None:
    # The bounds came out as `gt`/`le`, which no JSON Schema tool reads, and then as a float
    # one above the largest id.
    text = anonymous.get("/openapi.json").text
    schema = json.loads(text)

    assert '"gt":' not in text and '"le":' not in text and '"ge":' not in text
    customer_id = schema["components"]["schemas"]["EventIn"]["properties"]["customer_id"]["anyOf"][0]
    assert customer_id == {"type": "integer", "maximum": 2**63 - 1, "exclusiveMinimum": 0}
