"""API key secrets: shown once, stored only as a hash, never in a log line or an error,
dead the moment they are revoked; and a key (or a form hook's secret) that may not read
gets nothing from any read endpoint — every GET route of the app, so new ones are covered.

The CLI runs against the test database (SQLite or PostgreSQL), as an operator would."""

from __future__ import annotations

import logging
import re

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from app.api.limits import HOOKS_PREFIX
from app.cli import main as rapport
from app.db import models as m
from app.main import create_app
from app.services.keys import hash_secret
from app.settings import Settings, get_settings
from tests.api.expectations import assert_problem
from tests.api.scenarios import issue_key
from tests.api.test_forms import set_up
from tests.conftest import is_postgres, wait_until

WRONG = "rk_" + "x" * 43


@pytest.fixture
def cli(app, db_url: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """`rapport …` on the app's (emptied) test database."""
    monkeypatch.setenv("RAPPORT_DATABASE_URL", db_url)
    monkeypatch.delenv("RAPPORT_BOOTSTRAP_KEY", raising=False)
    runner = CliRunner()

    def run(*args: str) -> Result:
        get_settings.cache_clear()
        result = runner.invoke(rapport, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    yield run
    get_settings.cache_clear()


def _secret(created: Result) -> str:
    return created.stdout.strip().splitlines()[-1]


def test_a_new_secret_is_printed_once_and_stored_only_as_its_hash(cli, app, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)  # everything, SQL statements and their parameters included
    created = cli("keys", "create", "--name", "erp", "--scopes", "read,write")
    secret = _secret(created)
    assert re.fullmatch(r"rk_[\w-]{40,}", secret)
    assert created.stdout.count(secret) == 1 and secret not in created.stderr
    assert secret not in cli("keys", "list").output
    with app.state.context.db.session(write=False) as session:
        row = session.execute(select(m.ApiKey.__table__).where(m.ApiKey.name == "erp")).one()
    assert row.secret_hash == hash_secret(secret)
    assert not any(secret in str(value) for value in row)
    assert secret not in caplog.text


def test_a_secret_right_or_wrong_never_reaches_a_log_line_or_an_error(cli, client_for, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    secret = _secret(cli("keys", "create", "--name", "mobile", "--scopes", "read"))
    caplog.set_level(logging.DEBUG)
    assert client_for(secret).get("/v1/customers").status_code == 200
    refused = client_for(WRONG).get("/v1/customers")
    assert_problem(refused, 401)
    assert WRONG not in refused.text
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert secret not in caplog.text and WRONG not in caplog.text


def test_a_revoked_key_is_refused_at_once(cli, client_for) -> None:  # noqa: ANN001
    secret = _secret(cli("keys", "create", "--name", "leaver", "--scopes", "read"))
    client = client_for(secret)
    assert client.get("/v1/customers").status_code == 200
    cli("keys", "revoke", "--name", "leaver")
    assert_problem(client.get("/v1/customers"), 401)
    assert "leaver\tread\trevoked" in cli("keys", "list").output


def test_a_serving_process_that_remembers_a_key_refuses_it_once_the_revocation_is_heard(cli, app, client_for, portal, db_url: str) -> None:  # noqa: ANN001
    """While it serves (its lifespan running), a process answers a key it has read from
    memory (app/services/known_keys.py); a revocation by another process, here the CLI,
    holds from the next request on once the process has heard it. SQLite: at once, the
    next request reads the keys' stamp. PostgreSQL: when the notice reaches the process,
    which its server sends a moment after the commit has returned (145 µs at p99 on an idle
    machine, 12 ms on an overloaded one; docs/performance.md, "Revocation on PostgreSQL"):
    on a loaded CI machine, once in a full run, the next request came first."""
    with portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        known = app.state.context.known_keys
        assert known is not None
        wait_until(known.trusted)
        heard = known.generation
        secret = _secret(cli("keys", "create", "--name", "leaver", "--scopes", "read"))
        client = client_for(secret)
        wait_until(lambda: known.heard_since(heard))  # the creation is heard
        assert client.get("/v1/customers").status_code == 200
        assert known.get(hash_secret(secret)) is not None  # from now on, not read
        assert client.get("/v1/customers").status_code == 200
        before = known.generation
        cli("keys", "revoke", "--name", "leaver")
        if is_postgres(db_url):
            wait_until(lambda: known.heard_since(before))  # the notice is heard
        assert_problem(client.get("/v1/customers"), 401)


def _read_routes() -> list[str]:
    """Every GET under /v1 in the app's own route table (its OpenAPI document), path
    parameters filled with 1."""
    table = create_app(Settings(database_url="sqlite://")).openapi()["paths"]
    paths = {path for path, operations in table.items() if "get" in operations and path.startswith("/v1/")}
    return sorted(re.sub(r"\{[^}]+\}", "1", p) for p in paths if not p.startswith(HOOKS_PREFIX))


READ_ROUTES = _read_routes()


def test_the_read_routes_are_found() -> None:
    assert {"/v1/customers", "/v1/events", "/v1/projects/1/history", "/v1/inbox"} <= set(READ_ROUTES)


@pytest.mark.parametrize("path", READ_ROUTES)
def test_a_key_without_read_scope_reads_nothing(app, client_for, path: str) -> None:  # noqa: ANN001
    writer = client_for(issue_key(app, "erp", ["write"]))
    assert_problem(writer.get(path), 403)


@pytest.mark.parametrize("path", READ_ROUTES)
def test_a_form_hooks_secret_is_no_api_key(api, client_for, path: str) -> None:  # noqa: ANN001
    form = set_up(api, "jotform-visit-report")
    assert_problem(client_for(form["secret"]).get(path), 401)

