"""Which `rapport` commands may switch the active rulebook: only `serve` and `migrate`, where
an operator deploys one. The others work under the active rulebook or refuse (exit 2), and
`verify` writes nothing at all (SQLite in a temporary folder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.domain.rulebook import load_rulebook
from app.settings import Settings
from tests.conftest import empty_tables, query

DEFAULT = load_rulebook().version
STRICTER = "stricter-1"
FIRST_REVISION = "af432ed6e8a9"  # migrations/versions/2026_11_22_1219-af432ed6e8a9_initial_schema.py


def stricter_rulebook(folder: Path) -> Path:
    """The default rulebook, but level I also needs ten visits: the demo's graded customers
    fall to 0 under it."""
    book = json.loads(json.dumps(load_rulebook().source))
    book["version"] = STRICTER
    for kind, levels in book["levels"].items():
        levels[0]["criteria"].append({"id": f"X.{kind}", "label": {"zh": "十次拜访", "en": "Ten visits"}, "when": {"event": "visit", "min_count": 10}})
    path = folder / "stricter.json"
    path.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")
    return path


def state(folder: Path) -> tuple[Any, ...]:
    """What a rulebook switch changes: the active version, the grades, the history, the outbox."""
    return (
        query(folder, "SELECT value FROM service_state WHERE key = 'rulebook_version'"),
        query(folder, "SELECT id, level, version FROM customers ORDER BY id"),
        query(folder, "SELECT id, heat FROM projects ORDER BY id"),
        query(folder, "SELECT count(*) FROM grade_history"),
        query(folder, "SELECT count(*) FROM outbox_messages"),
    )


def rulebook_regrades(folder: Path) -> int:
    return query(folder, """SELECT count(*) FROM grade_history WHERE "trigger" LIKE '%"kind": "rulebook"%'""")[0][0]


def customers_csv(folder: Path) -> Path:
    path = folder / "customers.csv"
    path.write_text("external_ref,name,kind\nC-100,苏州工业园区管委会,owner\n", encoding="utf-8")
    return path


def test_migrate_switches_the_rulebook_and_reports_the_grades_it_re_computed(run, tmp_path: Path) -> None:  # noqa: ANN001
    first = run("migrate")  # a new database: its first rulebook is recorded, nothing switched (a hunt saw "switched")
    assert first.exit_code == 0 and "switched" not in first.output, first.output
    assert run("demo").exit_code == 0

    switched = run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))})

    assert switched.exit_code == 0, switched.output
    assert f"rulebook switched to '{STRICTER}': every grade re-computed, 5 changed" in switched.output
    assert query(tmp_path, "SELECT value FROM service_state WHERE key = 'rulebook_version'") == [(STRICTER,)]


@pytest.mark.parametrize(
    "command",
    [("verify",), ("regrade",), ("demo",), ("import", "customers", "customers.csv"), ("import", "customers", "customers.csv", "--dry-run")],
    ids=lambda c: " ".join(c),
)
def test_a_command_run_with_another_rulebook_than_the_servers_refuses_and_changes_no_grade(run, tmp_path: Path, command: tuple[str, ...]) -> None:  # noqa: ANN001
    assert run("demo").exit_code == 0
    customers_csv(tmp_path)
    before = state(tmp_path)

    result = run(*command, env={"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))})

    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"'{STRICTER}'" in message and f"'{DEFAULT}'" in message
    assert "rapport migrate" in message and "RAPPORT_RULEBOOK_PATH" in message
    assert "rulebook switched" not in result.output
    assert state(tmp_path) == before


def test_after_a_switch_by_migrate_a_shell_without_the_variable_does_not_switch_it_back(run, tmp_path: Path) -> None:  # noqa: ANN001
    # The QA report: `RAPPORT_RULEBOOK_PATH=custom.json rapport migrate`, then `rapport verify`
    # in a shell without the variable printed "rulebook changed: N grade(s) re-computed".
    assert run("demo").exit_code == 0
    assert run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}).exit_code == 0
    switched = state(tmp_path), rulebook_regrades(tmp_path)

    for command in (("verify",), ("regrade",), ("import", "customers", str(customers_csv(tmp_path)))):
        result = run(*command)
        assert result.exit_code == 2, result.output
        assert f"active rulebook is '{STRICTER}'" in result.stderr and f"'{DEFAULT}'" in result.stderr

    assert (state(tmp_path), rulebook_regrades(tmp_path)) == switched


def test_verify_refuses_a_switch_that_commits_after_its_first_check(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """verify checked the active rulebook in one session and replayed in another: a switch
    committed between the two was replayed under the old rulebook, and every grade it had
    moved was reported as a disagreement (exit 1) instead of the refusal (exit 2)."""
    import app.startup

    assert run("demo").exit_code == 0
    assert run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}).exit_code == 0
    monkeypatch.setattr(app.startup, "check_without_writing", lambda settings, rulebook: None)  # the switch comes after it

    result = run("verify")

    assert result.exit_code == 2, result.output
    assert f"active rulebook is '{STRICTER}'" in result.stderr
    assert "disagreement" not in result.output


def test_commands_that_grade_nothing_neither_look_at_the_rulebook_nor_switch_it(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import app.services.delivery

    monkeypatch.setattr(app.services.delivery, "run_worker", lambda *args, **kwargs: None)
    assert run("demo").exit_code == 0
    before = state(tmp_path)
    other = {"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}

    assert run("keys", "create", "--name", "erp", "--scopes", "write", env=other).exit_code == 0
    assert run("keys", "list", env=other).exit_code == 0
    assert run("keys", "revoke", "--name", "erp", env=other).exit_code == 0
    assert run("worker", env=other).exit_code == 0

    assert state(tmp_path) == before


def test_the_same_rulebook_works_and_a_fresh_database_takes_the_first_one_it_is_given(run, tmp_path: Path) -> None:  # noqa: ANN001
    stricter = {"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}

    assert run("import", "customers", str(customers_csv(tmp_path)), env=stricter).exit_code == 0
    assert run("regrade", env=stricter).exit_code == 0
    assert run("verify", env=stricter).exit_code == 0

    assert query(tmp_path, "SELECT value FROM service_state WHERE key = 'rulebook_version'") == [(STRICTER,)]
    assert run("regrade").exit_code == 2


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_writes_nothing_not_even_the_bootstrap_key(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("demo").exit_code == 0
    database = tmp_path / "rapport.db"
    before = file_digest(database), query(tmp_path, "SELECT name FROM api_keys")

    result = run("verify", env={"RAPPORT_BOOTSTRAP_KEY": "a-bootstrap-secret-for-verify"})

    assert result.exit_code == 0, result.output
    assert (file_digest(database), query(tmp_path, "SELECT name FROM api_keys")) == before


def test_verify_does_not_migrate_a_database_behind_the_newest_schema(run, tmp_path: Path) -> None:  # noqa: ANN001
    upgrade(Settings(database_url=f"sqlite:///{tmp_path / 'rapport.db'}"), FIRST_REVISION)

    result = run("verify")

    assert result.exit_code == 2, result.output
    assert f"revision {FIRST_REVISION}" in result.stderr and "rapport migrate" in result.stderr
    assert query(tmp_path, "SELECT version_num FROM alembic_version") == [(FIRST_REVISION,)]


def test_verify_does_not_create_a_database_that_is_not_there(run, tmp_path: Path) -> None:  # noqa: ANN001
    result = run("verify")

    assert result.exit_code == 2, result.output
    assert "rapport migrate" in result.stderr
    assert not (tmp_path / "rapport.db").exists()


def test_on_the_test_database_verify_reads_the_schema_and_rulebook_and_others_refuse_another(run, migrated: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The same checks on the configured database (PostgreSQL when RAPPORT_DATABASE_URL names one)."""
    engine = make_engine(migrated)
    empty_tables(engine)
    on_test_database = {"RAPPORT_DATABASE_URL": migrated}
    stricter = {**on_test_database, "RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}
    try:
        assert run("migrate", env=on_test_database).exit_code == 0
        assert run("verify", env=on_test_database).exit_code == 0
        refused = [run(*command, env=stricter) for command in (("verify",), ("regrade",), ("import", "customers", str(customers_csv(tmp_path))))]
        with engine.connect() as conn:
            active = conn.execute(text("SELECT value FROM service_state WHERE key = 'rulebook_version'")).all()
            customers = conn.execute(text("SELECT count(*) FROM customers")).scalar()
    finally:
        empty_tables(engine)
        engine.dispose()

    assert [r.exit_code for r in refused] == [2, 2, 2], [r.output for r in refused]
    assert all(f"'{STRICTER}'" in r.stderr and f"'{DEFAULT}'" in r.stderr for r in refused)
    assert [tuple(r) for r in active] == [(DEFAULT,)] and customers == 0


def test_a_rulebook_changed_without_a_new_version_is_refused_and_changes_nothing(run, tmp_path: Path) -> None:  # noqa: ANN001
    # Hunt finding: the same version with other content was taken for the recorded one, so
    # nothing was re-graded, and `regrade` later wrote the difference as a change in time.
    assert run("demo").exit_code == 0
    changed = json.loads(json.dumps(load_rulebook().source))
    changed["levels"]["owner"][0]["at_least"] = 1  # the default's version, another rule
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")
    before = state(tmp_path)

    for command in (("migrate",), ("regrade",), ("verify",)):
        result = run(*command, env={"RAPPORT_RULEBOOK_PATH": str(path)})
        assert result.exit_code == 2, (command, result.output)
        assert "needs a new version" in result.stderr

    assert state(tmp_path) == before


def test_a_version_once_active_names_its_content_for_good(run, tmp_path: Path) -> None:  # noqa: ANN001
    stricter = stricter_rulebook(tmp_path)
    assert run("demo").exit_code == 0
    assert run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter)}).exit_code == 0
    assert run("migrate").exit_code == 0  # back to the default
    book = json.loads(stricter.read_text(encoding="utf-8"))
    book["title"]["en"] += " (edited)"
    stricter.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")

    result = run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter)})

    assert result.exit_code == 2 and "needs a new version" in result.stderr
    assert query(tmp_path, "SELECT value FROM service_state WHERE key = 'rulebook_version'") == [(DEFAULT,)]


def test_the_demo_under_a_rulebook_without_its_event_types_is_refused_in_one_line(run, tmp_path: Path) -> None:  # noqa: ANN001
    book = json.loads(json.dumps(load_rulebook().source))
    book["version"] = "no-private-meetings-1"
    del book["event_types"]["private_meeting"]
    for step in book["levels"]["owner"]:
        step["criteria"] = [c for c in step["criteria"] if "private_meeting" not in json.dumps(c)]
        step.pop("at_least", None)
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")

    result = run("demo", env={"RAPPORT_RULEBOOK_PATH": str(path)})

    assert result.exit_code == 2, result.output
    assert "the demo data set does not fit rulebook 'no-private-meetings-1'" in result.stderr and "private_meeting" in result.stderr
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


def test_a_switch_that_changes_no_grade_still_says_it_switched(run, tmp_path: Path) -> None:  # noqa: ANN001
    # It printed nothing, as if no switch had happened (a hunt found it easy to miss).
    assert run("demo").exit_code == 0
    book = json.loads(json.dumps(load_rulebook().source))
    book["version"] = "renamed-1"
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")

    result = run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(path)})

    assert result.exit_code == 0
    assert "rulebook switched to 'renamed-1': every grade re-computed, 0 changed" in result.output
    assert "switched" not in run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(path)}).output


def test_a_regrade_that_a_switch_overtakes_changes_no_grade_and_says_why(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # `rapport regrade` checks the active rulebook, then re-grades: a switch (a server
    # starting, `rapport migrate`) that commits in between must not be re-graded back under
    # the old rulebook. Here the checks pass as if the switch came just after them.
    assert run("demo").exit_code == 0
    assert run("migrate", env={"RAPPORT_RULEBOOK_PATH": str(stricter_rulebook(tmp_path))}).exit_code == 0
    switched = state(tmp_path)
    import app.cli
    import app.services.state

    monkeypatch.setattr(app.cli, "_ready_to_grade", lambda settings: load_rulebook(settings.rulebook_path))
    monkeypatch.setattr(app.services.state, "expect_rulebook", lambda session, rulebook, record: None)

    result = run("regrade")

    assert result.exit_code == 2, result.output
    assert "the database's active rulebook changed while this command ran" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert state(tmp_path) == switched


@pytest.mark.parametrize("command", [("verify",), ("regrade",), ("import", "customers", "customers.csv")])
def test_a_command_of_another_release_than_the_grades_refuses_until_migrate(run, tmp_path: Path, command: tuple[str, ...]) -> None:  # noqa: ANN001
    """Found by the upgrade hunt: before `rapport migrate` of a release that grades
    differently, its `regrade` recorded the release's changes as moves of time, `import`
    credited them to the imported events, and `verify` reported disagreements nobody could
    act on. Each now refuses (exit 2) until `migrate` has re-graded."""
    from sqlalchemy import create_engine, text

    (tmp_path / "customers.csv").write_text("external_ref,name,kind\nC-9,北京协和医院,owner\n", encoding="utf-8")
    assert run("demo").exit_code == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'rapport.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE service_state SET value = 'before' WHERE key = 'grading_release'"))
    engine.dispose()

    refused = run(*command)

    assert refused.exit_code == 2, refused.output
    assert "made by release 'before'" in refused.stderr and "run `rapport migrate`" in refused.stderr
    assert run("migrate").exit_code == 0
    assert run(*command).exit_code == 0


@pytest.mark.parametrize("command", [("migrate",), ("regrade",)], ids=" ".join)
def test_a_rulebook_holding_a_number_of_5000_digits_stops_the_command_with_exit_status_2(run, tmp_path: Path, command: tuple[str, ...]) -> None:  # noqa: ANN001
    # Python converts integers of at most 4300 digits: the ValueError ended in a traceback and
    # exit status 1, where a broken rulebook is promised to be named with status 2.
    book = json.loads(json.dumps(load_rulebook().source))
    book["event_types"]["order_placed"]["attributes"]["amount"]["min"] = "MIN"
    path = tmp_path / "long.json"
    path.write_text(json.dumps(book).replace('"MIN"', "9" * 5000), encoding="utf-8")

    result = run(*command, env={"RAPPORT_RULEBOOK_PATH": str(path)})

    assert result.exit_code == 2, result.output
    assert "not valid JSON: a number of 5000 digits" in result.stderr
    assert "Traceback" not in result.output
