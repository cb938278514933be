"""The bootstrap key and `rapport keys` as an operator uses them (SQLite in a temporary folder)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from app.db import models as m
from app.db.engine import Database, make_engine
from app.services.keys import create_key
from tests.conftest import authenticated, empty_tables

A, B, X = "bootstrap-secret-a", "bootstrap-secret-b", "bootstrap-secret-x"


def live(url: str, secret: str) -> str | None:
    """The name and scopes of the live key with this secret, or None if it is refused."""
    db = Database(make_engine(url))
    try:
        key = authenticated(db, secret)
    finally:
        db.dispose()
    return key and f"{key.name}:{','.join(key.scopes)}"


@pytest.fixture(params=["sqlite-folder", "test-database"])
def keys_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The operator's SQLite file, and the test database (PostgreSQL when configured),
    emptied before and after: the keys made here are no other test's business."""
    if request.param == "sqlite-folder":
        yield f"sqlite:///{tmp_path / 'rapport.db'}"
        return
    url = request.getfixturevalue("migrated")
    engine = make_engine(url)
    empty_tables(engine)
    yield url
    empty_tables(engine)
    engine.dispose()


def test_only_the_current_bootstrap_secret_works_after_it_went_a_b_a_x(run, keys_url: str) -> None:  # noqa: ANN001
    given: list[str] = []
    for secret in (A, B, A, X):
        assert run("keys", "list", env={"RAPPORT_DATABASE_URL": keys_url, "RAPPORT_BOOTSTRAP_KEY": secret}).exit_code == 0
        given.append(secret)

        assert live(keys_url, secret) == "bootstrap:admin", given
        assert [s for s in set(given) - {secret} if live(keys_url, s) is not None] == [], given

    listed = run("keys", "list", env={"RAPPORT_DATABASE_URL": keys_url}).stdout.splitlines()
    assert [line for line in listed if line.endswith("\tactive")] == ["bootstrap\tadmin\tactive"]


def test_revoking_the_bootstrap_key_while_the_variable_is_set_warns_that_start_up_brings_it_back(run, tmp_path: Path) -> None:  # noqa: ANN001
    env = {"RAPPORT_BOOTSTRAP_KEY": A}
    assert run("keys", "list", env=env).exit_code == 0

    revoked = run("keys", "revoke", "--name", "bootstrap", env=env)

    assert revoked.exit_code == 0, revoked.output
    assert "revoked 'bootstrap'" in revoked.stdout
    warning = revoked.stderr.strip()
    assert "RAPPORT_BOOTSTRAP_KEY" in warning and "re-creates it" in warning and "unset or change" in warning
    assert live(f"sqlite:///{tmp_path / 'rapport.db'}", A) is None
    assert run("keys", "list", env=env).exit_code == 0
    assert live(f"sqlite:///{tmp_path / 'rapport.db'}", A) == "bootstrap:admin"  # as documented: it exists after start-up


@pytest.mark.parametrize(("name", "env"), [("erp", {"RAPPORT_BOOTSTRAP_KEY": A}), ("bootstrap", {})], ids=["another key", "variable unset"])
def test_revoking_a_key_start_up_does_not_bring_back_warns_nothing(run, tmp_path: Path, name: str, env: dict[str, str]) -> None:  # noqa: ANN001
    assert run("keys", "list", env={"RAPPORT_BOOTSTRAP_KEY": A}).exit_code == 0
    assert run("keys", "create", "--name", "erp", "--scopes", "read").exit_code == 0

    revoked = run("keys", "revoke", "--name", name, env=env)

    assert revoked.exit_code == 0, revoked.output
    assert revoked.stderr == ""


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_a_key_needs_a_name(run, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    result = run("keys", "create", "--name", name, "--scopes", "read")

    assert result.exit_code == 2
    assert "Invalid value for '--name'" in result.stderr and "must not be empty" in result.stderr
    assert "\t" not in run("keys", "list").stdout


def test_a_key_name_leaves_room_for_its_actor(run, tmp_path: Path) -> None:  # noqa: ANN001
    # What a key writes is by "key:<name>", at most 100 characters: PostgreSQL refused a
    # longer name as a database failure (exit 3), and SQLite stored one its writes could not use.
    result = run("keys", "create", "--name", "k" * 97, "--scopes", "write")

    assert result.exit_code == 2
    assert "Invalid value for '--name'" in result.stderr and "at most 96 characters" in result.stderr
    assert "k" * 97 not in run("keys", "list").stdout
    assert run("keys", "create", "--name", "k" * 96, "--scopes", "write").exit_code == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("keys", "create", "--name", "erp", "--scopes", "foo"), "scopes: unknown: foo"),
        (("keys", "create", "--name", "erp", "--scopes", ""), "scopes"),
        (("keys", "create", "--name", "demo-reader", "--scopes", "read"), "a key named 'demo-reader' exists already"),
        (("keys", "revoke", "--name", "nosuch"), "no key named 'nosuch'"),
    ],
    ids=["unknown scope", "no scope", "name in use", "unknown name"],
)
def test_a_keys_command_given_what_it_cannot_use_is_a_usage_error_that_changes_nothing(run, tmp_path: Path, args: tuple[str, ...], reason: str) -> None:  # noqa: ANN001
    # A hunt found these exiting 1, the status of a command's own "look at this".
    assert run("keys", "create", "--name", "demo-reader", "--scopes", "read").exit_code == 0
    before = run("keys", "list").stdout

    result = run(*args)

    assert result.exit_code == 2, result.output
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run("keys", "list").stdout == before


def test_revoking_a_revoked_key_says_so_and_keeps_its_first_revocation(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("keys", "create", "--name", "erp", "--scopes", "write").exit_code == 0
    assert run("keys", "revoke", "--name", "erp").stdout == "revoked 'erp'\n"
    first = run("keys", "list").stdout

    again = run("keys", "revoke", "--name", "erp")

    assert again.exit_code == 0
    assert again.stdout.startswith("'erp' was already revoked, at ")
    assert run("keys", "list").stdout == first


@pytest.mark.parametrize("name", ["ci\nroot\tadmin\tactive", "a\x1bb", "bootstrap", "bootstrap-replaced-1", " bootstrap", "Bootstrap", "erp "])
def test_a_key_name_is_printable_and_not_the_bootstrap_keys(run, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    # A name with a line break showed in `keys list` as a key that is not there; a key made
    # by hand as bootstrap-replaced-1 stopped every command once the bootstrap secret changed.
    result = run("keys", "create", "--name", name, "--scopes", "read")

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--name'" in result.stderr
    assert run("keys", "list").stdout == ""


def test_a_replaced_bootstrap_key_takes_a_free_name(run, keys_url: str) -> None:  # noqa: ANN001
    # A database where a key was named like the first replacement before names were reserved.
    env = {"RAPPORT_DATABASE_URL": keys_url}
    assert run("keys", "list", env={**env, "RAPPORT_BOOTSTRAP_KEY": A}).exit_code == 0
    db = Database(make_engine(keys_url))
    try:
        with db.session(write=True) as s:
            first = s.scalar(select(m.ApiKey.id).where(m.ApiKey.name == "bootstrap"))
            create_key(s, f"bootstrap-replaced-{first}", ["read"], now=datetime.now(timezone.utc))
    finally:
        db.dispose()

    changed = run("keys", "list", env={**env, "RAPPORT_BOOTSTRAP_KEY": B})

    assert changed.exit_code == 0, changed.output
    assert live(keys_url, B) == "bootstrap:admin" and live(keys_url, A) is None
    assert f"bootstrap-replaced-{first}-2\tadmin\trevoked" in changed.stdout


@pytest.mark.parametrize("secret", ["管理员密钥-0123456789abcdef", " padded-secret-0123456789 ", "tab\tinside-0123456789"])
def test_a_bootstrap_key_no_client_can_send_is_refused_before_anything_changes(run, tmp_path: Path, secret: str) -> None:  # noqa: ANN001
    # It was created, could never log in, and revoked the previous bootstrap key.
    assert run("keys", "list", env={"RAPPORT_BOOTSTRAP_KEY": A}).exit_code == 0

    refused = run("keys", "list", env={"RAPPORT_BOOTSTRAP_KEY": secret})

    assert refused.exit_code == 2
    assert "RAPPORT_BOOTSTRAP_KEY: must be printable ASCII" in refused.stderr
    assert live(f"sqlite:///{tmp_path / 'rapport.db'}", A) == "bootstrap:admin"


def test_an_empty_bootstrap_key_is_unset_and_one_with_inner_spaces_works(run, tmp_path: Path) -> None:  # noqa: ANN001
    # A compose file's `${X}` with X unset gives an empty value: it was unset before the
    # setting was checked, and must stay so. Inner spaces reach the server as sent.
    assert run("keys", "list", env={"RAPPORT_BOOTSTRAP_KEY": ""}).exit_code == 0
    assert run("keys", "list").stdout == ""

    spaced = "our admin key 2026 0123456789abcdef"
    assert run("keys", "list", env={"RAPPORT_BOOTSTRAP_KEY": spaced}).exit_code == 0
    assert live(f"sqlite:///{tmp_path / 'rapport.db'}", spaced) == "bootstrap:admin"
