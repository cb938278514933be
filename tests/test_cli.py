"""The `rapport` command as an operator uses it (SQLite in a temporary folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, text

from app.domain.rulebook import load_rulebook


def test_migrate_creates_the_sqlite_file_in_the_working_directory(run, tmp_path: Path) -> None:  # noqa: ANN001
    result = run("migrate")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rapport.db").is_file()


def test_a_broken_rulebook_refuses_to_start_naming_the_place_and_reason(run, tmp_path: Path) -> None:  # noqa: ANN001
    book = json.loads(json.dumps(load_rulebook().source))
    book["levels"]["owner"][0]["criteria"][0]["when"] = {"event": "telepathy"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")
    result = run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(path)})
    assert result.exit_code != 0
    assert "levels.owner[0].criteria[0].when.event: unknown event type 'telepathy'" in result.output
    assert not (tmp_path / "rapport.db").exists()


def test_keys_are_shown_once_stored_hashed_and_revocable(run, tmp_path: Path) -> None:  # noqa: ANN001
    created = run("keys", "create", "--name", "erp", "--scopes", "write,read")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("rk_") and len(secret) > 40
    engine = create_engine(f"sqlite:///{tmp_path / 'rapport.db'}")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash, scopes FROM api_keys WHERE name = 'erp'")).one()
    assert secret not in stored.secret_hash and len(stored.secret_hash) == 64
    assert json.loads(stored.scopes) == ["read", "write"]

    assert run("keys", "create", "--name", "erp", "--scopes", "read").exit_code != 0  # names are unique
    assert "unknown: root" in run("keys", "create", "--name", "x", "--scopes", "root").output
    assert run("keys", "revoke", "--name", "erp").exit_code == 0
    assert "erp\tread,write\trevoked" in run("keys", "list").output


def test_the_bootstrap_key_exists_after_start_up(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("migrate", env={"RAPPORT_BOOTSTRAP_KEY": "s3cret-bootstrap"}).exit_code == 0
    listed = run("keys", "list").output
    assert "bootstrap\tadmin\tactive" in listed


def test_verify_finds_nothing_after_normal_work_and_names_a_tampered_grade(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("demo").exit_code == 0
    clean = run("verify")
    assert clean.exit_code == 0, clean.output
    assert "0 disagreement(s) in 7 customers, 4 projects, 55 events" in clean.output

    engine = create_engine(f"sqlite:///{tmp_path / 'rapport.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET level = 4 WHERE id = 4"))
    engine.dispose()
    tampered = run("verify")
    assert tampered.exit_code == 1
    assert "customer 4: grade: stored level 4, replay gives 3" in tampered.output
    assert "customer 4: history: history ends at 3, the stored value is 4" in tampered.output


def test_verify_takes_the_instant_regrade_prints(run, tmp_path: Path) -> None:  # noqa: ANN001
    # History rows and `regrade` carry fractions of a second; --as-of refused them, so the
    # documented "pass the --as-of of the last re-grade" could be given only rounded.
    assert run("demo").exit_code == 0
    regraded = run("regrade")
    assert regraded.exit_code == 0, regraded.output
    instant = regraded.output.strip().rsplit("graded from ", 1)[1]
    assert "." in instant or instant.endswith("+00:00")

    for as_of in (instant, "2026-12-07T09:19:40.713307+08:00", "2026-12-07T01:19:40Z", "2026-12-07"):
        checked = run("verify", "--as-of", as_of)
        assert checked.exit_code == 0, (as_of, checked.output)

    for naive in ("2026-12-07T01:19:40", "2026-12-07t01:19:40", "2026-12-07x01:19:40", "2026-12-07 01:19:40"):
        refused = run("verify", "--as-of", naive)
        assert refused.exit_code == 2 and "has no offset" in refused.output, naive

    # A hunt's find: under time windows, 0001-01-01 ended in an OverflowError, exit 1.
    for outside, said in (("0001-01-01", "must not be before 1970"), ("1969-12-31T23:59:59Z", "must not be before 1970"), ("2100-01-01", "must be before 2100")):
        refused = run("verify", "--as-of", outside)
        assert refused.exit_code == 2 and said in refused.output, (outside, refused.output)
    assert run("verify", "--as-of", "1970-01-01").exit_code == 0


def test_on_sqlite_verify_at_the_instant_regrade_printed_finds_what_it_graded(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """regrade graded each round as of the clock once its rows were held, later than the
    instant it printed, so under time windows verify --as-of that instant found grades that
    had lapsed in between (an operator-commands hunt). On SQLite the write lock is held from
    the start, so no write can commit after the printed instant: every round is graded at it."""
    from datetime import datetime, timedelta, timezone

    import app.cli

    book = json.loads(json.dumps(load_rulebook().source))
    book["version"] = "every-fact-for-a-century"
    for step in [*book["levels"]["owner"], *book["levels"]["installer"], *book["heat"]["tiers"]]:
        for criterion in step["criteria"]:
            if "event" in criterion["when"]:
                criterion["when"]["within_days"] = 36_500
    windowed = tmp_path / "windowed.json"
    windowed.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")
    env = {"RAPPORT_RULEBOOK_PATH": str(windowed)}
    assert run("demo", env=env).exit_code == 0
    base, calls = datetime.now(timezone.utc), []

    def a_clock_that_runs_fast() -> datetime:  # each reading 110 years after the one before
        calls.append(None)
        return base + timedelta(days=40_150 * (len(calls) - 1))

    monkeypatch.setattr(app.cli, "_now", a_clock_that_runs_fast)
    regraded = run("regrade", env=env)
    assert regraded.exit_code == 0, regraded.output
    instant = regraded.output.strip().rsplit("graded from ", 1)[1]

    checked = run("verify", "--as-of", instant, env=env)
    assert checked.exit_code == 0, checked.output


def test_serve_refuses_several_worker_processes_on_sqlite_before_touching_it(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # Had it not refused, the test fails here at once instead of serving until CI's time runs out.
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("`rapport serve --workers 2` started a server on SQLite"))
    result = run("serve", "--workers", "2")
    assert result.exit_code == 2, result.output
    assert "SQLite has a single writer" in result.output and "--workers" in result.output
    assert not (tmp_path / "rapport.db").exists()  # refused before migrating


def test_serve_on_a_port_in_use_exits_2_before_touching_the_database(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """uvicorn exits 3 when it cannot bind, which the README gives to a database failure: an
    orchestrator would have reported a database outage (a docs hunt's find)."""
    import socket

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("`rapport serve` went on to serve on a port in use"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "rapport.db").exists()  # refused before migrating


@pytest.mark.parametrize("args", [("--port", "-5"), ("--port", "99999"), ("--host", "999.1.1.1")])
def test_serve_given_an_address_it_cannot_listen_on_exits_2(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:  # noqa: ANN001
    # A hunt found 99999 taken (uvicorn listened on a port of the kernel's choosing) and the
    # others exiting 3, the database's status.
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("`rapport serve` went on to serve"))
    result = run("serve", *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "rapport.db").exists()


@pytest.mark.parametrize(("command", "module", "name"), [("verify", "app.services.verify", "disagreements"), ("regrade", "app.services.state", "regrade_for_time")])
def test_an_interrupted_command_exits_130_not_1(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, module: str, name: str) -> None:  # noqa: ANN001
    # Click's "Aborted!" exits 1, which for `verify` says "grades disagree": a cron wrapper
    # reported disagreements nobody had found (a hunt's find).
    import importlib

    assert run("demo").exit_code == 0

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    result = run(command)

    assert result.exit_code == 130, result.output
    assert f"rapport {command}: interrupted" in result.stderr and "Aborted" not in result.output
