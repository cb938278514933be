"""A database that fails under a `rapport` command: one short line on stderr, naming the
database (no password) and the driver's error, and exit status 3 from every command, apart
from import's and verify's 1 ("rows rejected", "disagreements found")."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import app.imports
from tests.conftest import is_postgres

PASSWORD = "not-the-password-7f3a"
COMMANDS = [
    ("migrate",),
    ("serve", "--port", "0"),  # any free port: the database is what fails
    ("demo",),
    ("regrade",),
    ("verify",),
    ("worker",),
    ("keys", "list"),
    ("keys", "create", "--name", "erp", "--scopes", "write"),
    ("keys", "revoke", "--name", "erp"),
    ("import", "customers", "customers.csv"),
]


@pytest.fixture
def customers_csv(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    path.write_text("external_ref,name,kind\nC-1,上海市第一人民医院,owner\n", encoding="utf-8")
    return path


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("`rapport serve` started serving without a database"))


def assert_database_failure(result, url_text: str) -> str:  # noqa: ANN001
    """The failure's one line (import's progress bar may stand before it, on stderr too)."""
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    *progress, message = result.stderr.strip().splitlines()
    assert all(line.startswith("importing ") for line in progress), result.stderr
    assert message.startswith("Error: the database failed: ") and url_text in message
    assert "Traceback" not in result.stderr and "[SQL" not in message and "parameters" not in message
    assert len(message) < 400, message
    return message


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != ("verify",)], ids=" ".join)
def test_a_sqlite_file_in_a_folder_that_does_not_exist_fails_every_command_with_status_3(run, tmp_path: Path, customers_csv: Path, no_server: None, command: tuple[str, ...]) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'rapport.db'}"

    message = assert_database_failure(run(*command, env={"RAPPORT_DATABASE_URL": url}), url)

    assert message.endswith("unable to open database file")


def test_verify_of_a_file_that_is_not_a_database_fails_with_status_3_and_leaves_it_alone(run, tmp_path: Path) -> None:  # noqa: ANN001
    # (A SQLite file that is not there is "not migrated", status 2: verify creates nothing.)
    (tmp_path / "rapport.db").write_bytes(b"a spreadsheet, saved under the wrong name\n" * 200)

    message = assert_database_failure(run("verify"), "sqlite:///rapport.db")

    assert message.endswith("file is not a database")
    assert (tmp_path / "rapport.db").read_bytes() == b"a spreadsheet, saved under the wrong name\n" * 200


def test_a_database_failure_during_an_import_shows_no_statement_or_parameters(run, tmp_path: Path, customers_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    assert run("migrate").exit_code == 0

    def connection_lost(*args: object, **kwargs: object) -> None:
        driver = ConnectionError("server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally")
        raise OperationalError("INSERT INTO customers (name, contact) VALUES (?, ?)", ("上海市第一人民医院", '{"phone": "13800000000"}'), driver)

    monkeypatch.setattr(app.imports, "_put_record", connection_lost)

    message = assert_database_failure(run("import", "customers", str(customers_csv)), "sqlite:///rapport.db")

    assert message.endswith("server closed the connection unexpectedly")
    assert "13800000000" not in message and "INSERT" not in message


def test_a_sqlite_write_lock_held_too_long_says_why_and_what_to_do(run, tmp_path: Path, customers_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    assert run("migrate").exit_code == 0

    def locked(*args: object, **kwargs: object) -> None:
        busy = sqlite3.OperationalError("database is locked")
        busy.sqlite_errorname = "SQLITE_BUSY"  # as sqlite3 sets it
        raise OperationalError("INSERT INTO customers (name) VALUES (?)", ("上海市第一人民医院",), busy)

    monkeypatch.setattr(app.imports, "_put_record", locked)

    message = assert_database_failure(run("import", "customers", str(customers_csv)), "sqlite:///rapport.db")

    assert "database is locked (another process" in message and "RAPPORT_SQLITE_BUSY_TIMEOUT_MS: run it again)" in message


@pytest.mark.parametrize("given", ["user:password@", "?password="])  # libpq and psycopg take either
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_postgresql_database_that_does_not_exist_fails_every_command_with_status_3(run, db_url: str, customers_csv: Path, no_server: None, command: tuple[str, ...], given: str) -> None:  # noqa: ANN001
    if not is_postgres(db_url):
        pytest.skip("needs a PostgreSQL server: run the suite with RAPPORT_DATABASE_URL naming one")
    absent = make_url(db_url).set(database=f"rapport_absent_{uuid.uuid4().hex[:12]}_test")
    absent = absent.set(password=PASSWORD) if given == "user:password@" else absent.set(query={**absent.query, "password": PASSWORD})
    url = absent.render_as_string(hide_password=False)

    message = assert_database_failure(run(*command, env={"RAPPORT_DATABASE_URL": url}), absent.database or "")

    assert PASSWORD not in message


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdriver://host/db",
        "postgresql+pg8000://postgres@127.0.0.1/rapport",
        "mssql+pymssql://sa@127.0.0.1/rapport",
        # A configuration hunt's finds: a traceback (exit 1) printing most of the password,
        # a password read partly as the host (then printed), and URLs no command can use.
        "postgresql+psycopg://postgres:p@ss:w0rdS3cret@127.0.0.1:5432/rapport",
        "postgresql+psycopg://postgres:p@ssS3cret@127.0.0.1:5432/rapport",
        "postgresql+psycopg_async://postgres@127.0.0.1/rapport",
        "sqlite://",
        "sqlite:///:memory:",
    ],
    ids=["not-a-url", "unknown-driver", "driver-not-installed", "other-engine-not-installed", "port-not-a-number", "at-in-password", "async-driver", "sqlite-memory", "sqlite-memory-named"],
)
@pytest.mark.parametrize("command", [("migrate",), ("keys", "list"), ("verify",)], ids=" ".join)
def test_a_database_url_rapport_cannot_use_is_a_usage_error_in_one_line(run, url: str, command: tuple[str, ...]) -> None:  # noqa: ANN001
    result = run(*command, env={"RAPPORT_DATABASE_URL": url})

    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("Error: RAPPORT_DATABASE_URL is not a database URL Rapport can use: ")
    assert "Traceback" not in result.output and "S3cret" not in result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RAPPORT_IDEMPOTENCY_TTL_HOURS": "1"}, ["RAPPORT_IDEMPOTENCY_TTL_HOURS: Input should be greater than or equal to 24"]),
        ({"RAPPORT_WEBHOOK_TIMEOUT_SECONDS": "61"}, ["RAPPORT_WEBHOOK_TIMEOUT_SECONDS: Input should be less than or equal to 60"]),
        # A configuration hunt's finds: each was accepted, then overflowed at run time.
        ({"RAPPORT_WEBHOOK_POLL_SECONDS": "inf"}, ["RAPPORT_WEBHOOK_POLL_SECONDS: Input should be a finite number"]),
        ({"RAPPORT_SQLITE_BUSY_TIMEOUT_MS": "2147483648"}, ["RAPPORT_SQLITE_BUSY_TIMEOUT_MS: Input should be less than or equal to 2147483647"]),
        ({"RAPPORT_WEBHOOK_LOG_DAYS": "1000000"}, ["RAPPORT_WEBHOOK_LOG_DAYS: Input should be less than or equal to 36500"]),
        ({"RAPPORT_IDEMPOTENCY_LEASE_SECONDS": "1000000000000"}, ["RAPPORT_IDEMPOTENCY_LEASE_SECONDS: Input should be less than or equal to 86400"]),
        ({"RAPPORT_RATE_LIMIT_PER_SECOND": "1e-300"}, ["RAPPORT_RATE_LIMIT_PER_SECOND: must be 0 (no limit) or at least 0.001"]),
        ({"RAPPORT_RATE_LIMIT_PER_SECOND": "abc", "RAPPORT_WORKER_THREADS": "0"}, ["RAPPORT_RATE_LIMIT_PER_SECOND: Input should be a valid number", "RAPPORT_WORKER_THREADS: "]),
        ({"RAPPORT_WEBHOOK_RETRY_SCHEDULE": "[1e400]"}, ["RAPPORT_WEBHOOK_RETRY_SCHEDULE.0: Input should be a finite number"]),
        ({"RAPPORT_WEBHOOK_RETRY_SCHEDULE": "[5, 1e12]"}, ["RAPPORT_WEBHOOK_RETRY_SCHEDULE.1: Input should be less than or equal to 2592000"]),
        ({"RAPPORT_WEBHOOK_RETRY_SCHEDULE": "abc"}, ["RAPPORT_WEBHOOK_RETRY_SCHEDULE is not JSON: Expecting value"]),
    ],
    ids=["below-its-least", "above-its-most", "infinite-poll", "busy-past-32-bits", "log-days-past-any-date", "lease-past-any-date", "rate-too-small", "two-at-once", "infinite-wait", "wait-past-any-date", "not-json"],
)
@pytest.mark.parametrize("command", [("migrate",), ("keys", "list"), ("verify",)], ids=" ".join)
def test_a_setting_rapport_cannot_use_is_a_configuration_error_in_one_line(run, env: dict[str, str], named: list[str], command: tuple[str, ...]) -> None:  # noqa: ANN001
    result = run(*command, env=env)

    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("Error: the configuration cannot be used: ")
    for reason in named:
        assert reason in result.stderr
    assert "Traceback" not in result.output
    assert not Path("rapport.db").exists()  # nothing was done


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_database_migrated_by_a_newer_release_is_refused_by_every_command_in_one_line(run, tmp_path: Path, customers_csv: Path, no_server: None, command: tuple[str, ...]) -> None:  # noqa: ANN001
    # A hunt found a traceback (exit 1) from each command, and verify advising `migrate`.
    import sqlite3

    assert run("migrate").exit_code == 0
    with sqlite3.connect(tmp_path / "rapport.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")

    result = run(*command)

    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert "revision ffffffffffff, which this release's migrations do not hold: a newer release of Rapport migrated it" in result.stderr
    assert "rapport migrate" not in result.stderr


def test_a_migrations_folder_named_but_not_there_is_refused_not_replaced(run, tmp_path: Path) -> None:  # noqa: ANN001
    result = run("migrate", env={"RAPPORT_MIGRATIONS_DIR": str(tmp_path / "nowhere")})

    assert result.exit_code == 2
    assert f"RAPPORT_MIGRATIONS_DIR={tmp_path / 'nowhere'} holds no Alembic migrations" in result.stderr
    assert not (tmp_path / "rapport.db").exists()  # nothing was created either
