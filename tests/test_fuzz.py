"""The whole API fuzzed from its own OpenAPI schema (schemathesis, in-process over ASGI).

Every operation gets valid and invalid inputs (bodies, query strings, path parameters,
headers) with the admin key, against a database seeded with a few customers, projects,
events, a form and a webhook subscription, so some ids exist. What a caller relies on:
no input gets a 5xx; every error is application/problem+json; every response has a
status code the schema declares, a body that matches the schema, and only the ETag,
Location and Retry-After headers the schema declares for that status.

CI runs a bounded, derandomized number of examples per operation. To hunt for bugs,
run it locally with many more, and with the boundary values of every field:
RAPPORT_FUZZ_EXAMPLES=200 RAPPORT_FUZZ_COVERAGE=1 python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from app.main import create_app
from app.settings import Settings
from app.startup import initialize
from tests.api.conftest import ADMIN, Api, Client
from tests.conftest import Clock, empty_tables

AUTH = {"Authorization": f"Bearer {ADMIN}"}
EXAMPLES_PER_OPERATION = int(os.environ.get("RAPPORT_FUZZ_EXAMPLES", "25"))
FORM_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "forms" / "typeform-visit-report.json"
PROBLEM = "application/problem+json"

# Positive and negative inputs; the examples and fuzzing phases are bounded by max_examples.
# The coverage phase (every boundary of every field) is not, so CI leaves it out.
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261120,
        "generation": {"mode": "all", "deterministic": True},
        "phases": {"coverage": {"enabled": bool(os.environ.get("RAPPORT_FUZZ_COVERAGE"))}, "stateful": {"enabled": False}},
    }
)


def _seed(api: Api) -> None:
    """A few of everything, so generated ids sometimes name a real row."""
    owner = api.create_customer("上海市第六人民医院基建处", "owner", external_ref="C-1")
    installer = api.create_customer("上海建工安装有限公司", "installer", external_ref="C-2")
    project = api.create_project(owner["id"], external_ref="P-1")
    api.event("company_introduced", customer_id=owner["id"])
    api.event("visit", customer_id=installer["id"], attributes={"reception": "welcoming"})
    api.event("bid_joined", customer_id=installer["id"], project_id=project["id"])
    wrong = api.event("contact_obtained", customer_id=owner["id"])
    for url, body in (
        (f"/v1/events/{wrong['id']}/retract", {"reason": "logged for the wrong customer"}),
        ("/v1/forms", json.loads(FORM_EXAMPLE.read_text(encoding="utf-8"))),
        ("/v1/webhooks/subscriptions", {"url": "https://crm.example.com/hooks/rapport", "event_types": ["customer.level_changed"]}),
    ):
        r = api.post(url, json=body)
        assert r.status_code in (200, 201), r.text


@pytest.fixture(scope="module")
def fuzzed_app(migrated: str) -> Iterator[FastAPI]:
    # No rate limit: the fuzzer sends far more requests per second than a key may.
    app_settings = Settings(database_url=migrated, bootstrap_key=ADMIN, deliver_in_process=False, rate_limit_per_second=0)
    clock = Clock(datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc))
    app = create_app(app_settings, clock=clock)
    ctx = app.state.context
    empty_tables(ctx.db.engine)
    initialize(ctx.db, app_settings, ctx.rulebook, now=clock())
    with start_blocking_portal() as portal:
        client = Client(portal, app, AUTH)
        _seed(Api(client))
        client.close()
    yield app
    ctx.db.engine.dispose()


# The schema is the app's own; it does not depend on the database, so it is read at
# collection time from an app that never connects (the requests go to `fuzzed_app`).
schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="sqlite://")).openapi(), config=CONFIG)

# The batch's NDJSON body is declared as a string (one event per line): send it as text.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

# Headers a caller acts on: each one an answer sends must be declared with that answer's
# status, or a client generated from the schema cannot read it.
HEADERS = ("etag", "location", "retry-after")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), print_blob=True)
def test_no_input_breaks_the_api_or_its_declared_contract(case: schemathesis.Case, fuzzed_app: FastAPI) -> None:
    response = case.call(headers=AUTH, app=fuzzed_app)
    case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs={"app": fuzzed_app})
    operation = schema.raw_schema["paths"][case.path][case.method.lower()]
    declared = {name.lower() for name in operation["responses"].get(str(response.status_code), {}).get("headers", {})}
    undeclared = {name for name in HEADERS if name in response.headers} - declared
    assert not undeclared, f"{case.method} {case.formatted_path}: {response.status_code} sends {sorted(undeclared)}, which its schema does not declare"
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith(PROBLEM), f"{case.method} {case.formatted_path}: {response.status_code} answered as {content_type!r}: {response.text[:300]}"


def test_every_error_the_schema_declares_is_problem_json() -> None:
    """Client generators read error bodies by the declared media type: it must be the one sent."""
    wrong = [
        f"{method.upper()} {path} {status}: {sorted(response.get('content', {}))}"
        for path, operations in schema.raw_schema["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if int(status) >= 400 and list(response.get("content", {})) != [PROBLEM]
    ]
    assert wrong == []
