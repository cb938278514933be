"""The `rapport` command: serve, migrate, keys, demo, regrade, verify, worker, import."""

from __future__ import annotations

import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app.db import models as m
from app.db.engine import Database, driver_reason, is_busy
from app.domain.rulebook import Rulebook, RulebookError, RulebookMismatch, load_rulebook
from app.domain.validation import instant_problem
from app.errors import AppError, MigrationsUnusable, ReleaseMismatch, RulebookChanged
from app.logs import log_to_stderr
from app.settings import Settings, get_settings



def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Unusable(click.ClickException):
    """Input or configuration that cannot be used at all, so nothing was done: exit status
    2, as for a usage error."""

    exit_code = 2


class _DatabaseFailed(click.ClickException):
    """The database could not be reached or failed during the command: exit status 3, apart
    from every command's own statuses (import's and verify's 1 among them)."""

    exit_code = 3


def _prepare(settings: Settings) -> Rulebook:
    """Where a rulebook is deployed (`serve`, `migrate`): migrate, the bootstrap key, and
    re-grade everything if the rulebook is another than the active one."""
    from app.startup import prepare  # keeps `rapport --help` fast

    rulebook, effects = prepare(settings)
    if effects is not None:
        click.echo(f"rulebook switched to {rulebook.version!r}: every grade re-computed, {len(effects)} changed")
    return rulebook


def _ready(settings: Settings) -> None:
    """For a command that grades nothing (keys, worker): migrate and the bootstrap key; the
    rulebook is not looked at, so a shell configured with another one changes nothing."""
    from app.startup import prepare_command

    prepare_command(settings, None)


def _ready_to_grade(settings: Settings) -> Rulebook:
    """For a command that grades (import, regrade, demo): migrate and the bootstrap key, and
    refuse (RulebookMismatch: exit 2, nothing written) a rulebook other than the active one."""
    from app.startup import prepare_command

    rulebook = load_rulebook(settings.rulebook_path)
    prepare_command(settings, rulebook)
    return rulebook


def _mismatch(settings: Settings, exc: RulebookMismatch) -> str:
    where = f"RAPPORT_RULEBOOK_PATH={settings.rulebook_path}" if settings.rulebook_path else "the packaged default: RAPPORT_RULEBOOK_PATH is not set"
    if exc.reused:
        return (
            f"this command's rulebook {exc.configured!r} ({where}) is not the rulebook the database recorded under that version; no grade was changed. "
            "A changed rulebook needs a new version: the history names each grade's rulebook by its version."
        )
    return (
        f"this command's rulebook is {exc.configured!r} ({where}) but the database's active rulebook is {exc.active!r}; no grade was changed. "
        "Run `rapport migrate` with the rulebook the servers use, or set RAPPORT_RULEBOOK_PATH to it."
    )


class _Rapport(click.Group):
    """Every command's failures that are not its own, each as one line and a status: a
    rulebook that cannot be used or is not the active one, or stopped being it while the
    command ran (2), the database (3), an interrupt (130)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Not click's "Aborted!" and exit status 1: for `verify` that says "grades
            # disagree", and a cron wrapper would report disagreements nobody found (a hunt's
            # find). A transaction in flight was rolled back; what committed before stays.
            click.echo(f"rapport {ctx.invoked_subcommand}: interrupted; nothing of the transaction in flight was kept", err=True)
            ctx.exit(130)
        except RulebookError as exc:
            raise _Unusable(str(exc)) from exc
        except RulebookMismatch as exc:
            raise _Unusable(_mismatch(get_settings(), exc)) from None
        except ReleaseMismatch as exc:
            raise _Unusable(str(exc)) from None
        except MigrationsUnusable as exc:
            raise _Unusable(f"{_safe(get_settings().database_url)}: {exc}; nothing was changed") from None
        except RulebookChanged as exc:
            raise _Unusable(
                "the database's active rulebook changed while this command ran (a server or `rapport migrate` switched it); "
                "no grade was changed. Run it again with the rulebook the servers now use (RAPPORT_RULEBOOK_PATH)"
            ) from exc
        except DBAPIError as exc:
            # One line, not SQLAlchemy's text: that carries the statement and its parameters.
            raise _DatabaseFailed(_database_failure(exc)) from None


def _app_error(exc: AppError) -> str:
    """An API error as one line: its detail and each field's reason."""
    return f"{exc.detail}{''.join(f'; {e.field}: {e.reason}' for e in exc.errors)}"


def _database_failure(exc: DBAPIError) -> str:
    reason = driver_reason(exc)
    if is_busy(exc):  # "database is locked" said nothing of why, nor what to do (a hunt's find)
        reason += " (another process, a server's long write or another command, held its write lock longer than RAPPORT_SQLITE_BUSY_TIMEOUT_MS: run it again)"
    return f"the database failed: {_safe(get_settings().database_url)}: {reason}"


@click.group(cls=_Rapport)
def main() -> None:
    """Rapport: relationship levels and deal heat from logged sales events.

    \b
    Exit status 3, for every command: the database could not be reached or failed.
    """
    _check_database_url(_usable_settings().database_url)


def _usable_settings() -> Settings:
    """The settings, or exit status 2 with one line per RAPPORT_* variable that cannot be
    used and why (a number out of its range, not a number...): a configuration error, where
    every command printed pydantic's traceback. The values are not echoed: one may be a
    secret."""
    import re

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return get_settings()
    except ValidationError as exc:
        from app.api.problems import validation_reason

        reasons = "; ".join(f"RAPPORT_{'.'.join(str(part) for part in error['loc']).upper()}: {validation_reason(error, 'environment')}" for error in exc.errors())
        raise _Unusable(f"the configuration cannot be used: {reasons}") from None
    except SettingsError as exc:  # a list or object setting that is not JSON
        named = re.search(r'field "(\w+)"', str(exc))
        variable = f"RAPPORT_{named.group(1).upper()}" if named else "a RAPPORT_ variable"
        raise _Unusable(f"the configuration cannot be used: {variable} is not JSON: {exc.__cause__ or exc}") from None


def _check_database_url(url: str) -> None:
    """Exit status 2, one line, for a RAPPORT_DATABASE_URL that names no database SQLAlchemy
    can open (it is not a URL, or names a driver that is not installed): a usage error,
    where the first command to use it printed a traceback."""
    from sqlalchemy.exc import ArgumentError

    unusable = "RAPPORT_DATABASE_URL is not a database URL Rapport can use"
    encode = "a password holding @, : or / must be percent-encoded (%40, %3A, %2F)"
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ArgumentError as exc:
        raise _Unusable(f"{unusable}: {exc}") from None
    except ValueError:
        # SQLAlchemy's words name the text it could not read, which is the password's rest
        # where an @ in it was not encoded (a configuration hunt's find: a traceback, exit 1).
        raise _Unusable(f"{unusable}: its port is not a number, or its host cannot be read; {encode}") from None
    except ImportError as exc:
        hint = ' (Rapport\'s PostgreSQL driver is psycopg: pip install ".[postgres]", and a URL postgresql+psycopg://...)' if parsed.get_backend_name() == "postgresql" else ""
        raise _Unusable(f"{unusable}: its driver is not installed: {exc}{hint}") from None
    if "@" in (parsed.host or ""):  # postgres:p@ss@host read as host "ss@host", then printed
        raise _Unusable(f"{unusable}: its host holds an @; {encode}")
    if getattr(dialect, "is_async", False):
        raise _Unusable(f"{unusable}: {parsed.drivername} is an asyncio driver; Rapport's are sqlite:// and postgresql+psycopg://")
    if parsed.get_backend_name() == "sqlite" and (parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"):
        raise _Unusable(f"{unusable}: an in-memory SQLite database lives as long as one connection, and each command opens several: name a file (sqlite:///rapport.db)")


def _check_can_listen(host: str, port: int) -> None:
    """Exit status 2, before anything is migrated, where the server could not listen (the
    port is taken, the address is not this machine's). uvicorn would exit 3, its "startup
    failure", which the README gives to the database: an orchestrator would have reported
    a database outage. Bound as uvicorn binds (SO_REUSEADDR), then released."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise _Unusable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="uvicorn worker processes (more than 1 needs PostgreSQL)")
@click.option(
    "--shutdown-timeout",
    default=20,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="seconds requests in flight get to finish after SIGTERM (keep it below your orchestrator's grace period)",
)
@click.option("--demo", is_flag=True, help="load a small demo data set (if the database is empty) and print a read/write key")
def serve(host: str, port: int, workers: int, shutdown_timeout: int, demo: bool) -> None:
    """Migrate the database, then serve the API. SIGTERM stops it gracefully: no new
    connections, requests in flight finish, the webhook thread ends its attempt under way
    (what is not yet delivered stays queued), then exit status 0."""
    import signal

    import uvicorn

    # uvicorn raises the SIGTERM it stopped on again once the shutdown is done: by then the
    # shutdown was graceful, so say so with exit status 0 rather than dying of the signal.
    # Set before the start-up's work: as a container's process 1, which the kernel sends no
    # signal it has no handler for, a SIGTERM during migrations (or a rulebook switch's
    # re-grading, or a wait on the database) was dropped, and `docker stop` waited for its
    # SIGKILL. Now it ends the start-up there, its transaction rolled back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = get_settings()
    if workers > 1 and settings.is_sqlite:
        raise click.BadParameter("SQLite has a single writer: more than one worker process only queues on its lock. Use PostgreSQL for several workers.", param_hint="--workers")
    _check_can_listen(host, port)
    rulebook = _prepare(settings)
    if demo:
        _load_demo(settings, rulebook, host, port)
    click.echo(f"Rapport on http://{host}:{port} — API docs at http://{host}:{port}/docs — database {_safe(settings.database_url)}")
    # httptools with a bound on a request's line and headers (app/api/protocol.py).
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="app.api.protocol:BoundedHead",
        timeout_graceful_shutdown=shutdown_timeout,
        log_level="info",
    )


@main.command()
def migrate() -> None:
    """Apply the database migrations (also done by `serve`)."""
    settings = get_settings()
    _prepare(settings)
    click.echo(f"database at the latest schema: {_safe(settings.database_url)}")


@main.command()
@click.option("--host", default="127.0.0.1", hidden=True)
@click.option("--port", default=8000, hidden=True, type=int)
def demo(host: str, port: int) -> None:
    """Load the demo data set into an empty database and print a key to read it with."""
    settings = get_settings()
    _load_demo(settings, _ready_to_grade(settings), host, port)


def _load_demo(settings: Settings, rulebook: Rulebook, host: str, port: int) -> None:
    from app.demo import load_demo
    from app.services.keys import create_key

    db = Database.from_settings(settings)
    try:
        with db.session(write=True) as session:
            loaded = load_demo(session, rulebook, now=_now())
            _, secret = create_key(session, f"demo-{_now():%Y%m%d%H%M%S%f}", ["read", "write"], now=_now())
    except AppError as exc:  # a rulebook of its own that lacks what the demo's events need
        raise _Unusable(f"the demo data set does not fit rulebook {rulebook.version!r} (it is written for the default one): {_app_error(exc)}; nothing was loaded") from None
    finally:
        db.dispose()
    click.echo("demo data loaded" if loaded else "the database already has customers: demo data not loaded")
    base = f"http://{host}:{port}"
    click.echo(f"a read/write key for the demo (shown once): {secret}")
    click.echo("try:")
    click.echo(f"  curl -s -H 'Authorization: Bearer {secret}' {base}/v1/customers/1")
    click.echo(f"  curl -s -H 'Authorization: Bearer {secret}' '{base}/v1/projects?limit=10'")
    click.echo(f"  curl -s -H 'Authorization: Bearer {secret}' {base}/v1/projects/1/history")


@main.group()
def keys() -> None:
    """Manage API keys."""


# What a key writes is recorded with the actor "key:<name>", at most 100 characters.
MAX_KEY_NAME = 96


def _key_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from app.services.keys import reserved_name

    if not value.strip():
        raise click.BadParameter("must not be empty")
    if value != value.strip():
        raise click.BadParameter("must not begin or end with a space (' bootstrap' would list as the bootstrap key)")
    if not value.isprintable():
        # A line break or a tab in a name made `keys list` show lines of a key that is not
        # there ("root admin active"), and the actor it records.
        raise click.BadParameter("must be printable: no line breaks, tabs or other control characters")
    if reserved_name(value):
        raise click.BadParameter("the names bootstrap and bootstrap-replaced-… are the bootstrap key's (RAPPORT_BOOTSTRAP_KEY)")
    if len(value) > MAX_KEY_NAME:
        # PostgreSQL refused a longer one as "the database failed" (exit 3), SQLite stored it,
        # and the key's writes would then fail on its actor's length (a hunt's find).
        raise click.BadParameter(f"at most {MAX_KEY_NAME} characters (what the key writes is recorded as by key:<name>, at most 100)")
    return value


@keys.command("create")
@click.option("--name", required=True, callback=_key_name)
@click.option("--scopes", required=True, help="comma-separated: read, write, admin")
def keys_create(name: str, scopes: str) -> None:
    """Create a key and print its secret (shown once; stored hashed)."""
    from app.services.keys import create_key, parse_scopes

    settings = get_settings()
    _ready(settings)
    db = Database.from_settings(settings)
    try:
        with db.session(write=True) as session:
            key, secret = create_key(session, name, parse_scopes(scopes), now=_now())
            click.echo(f"created key {key.name!r} with scopes {','.join(key.scopes)}; its secret, shown only now:", err=True)
    except AppError as exc:  # scopes that are not a list of known ones; a name in use
        raise _Unusable(_app_error(exc)) from None
    click.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from app.services.keys import list_keys

    settings = get_settings()
    _ready(settings)
    with Database.from_settings(settings).session(write=False) as session:
        for key in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            click.echo(f"{key.name}\t{','.join(key.scopes)}\t{state}")


@keys.command("revoke")
@click.option("--name", required=True)
def keys_revoke(name: str) -> None:
    """Revoke a key: every serving process refuses it from its next request (PostgreSQL:
    once the change's notice reaches that process, normally within a millisecond)."""
    from app.services.keys import BOOTSTRAP_NAME, hash_secret, revoke_key

    settings = get_settings()
    _ready(settings)
    now = _now()
    try:
        with Database.from_settings(settings).session(write=True) as session:
            key = revoke_key(session, name, now=now)
            already = key.revoked_at != now  # revoked before: it keeps that time
            bootstrap = settings.bootstrap_key is not None and (key.name == BOOTSTRAP_NAME or key.secret_hash == hash_secret(settings.bootstrap_key))
    except AppError as exc:  # no key of that name
        raise _Unusable(_app_error(exc)) from None
    click.echo(f"{name!r} was already revoked, at {key.revoked_at:%Y-%m-%d %H:%M:%S} UTC" if already else f"revoked {name!r}")
    if bootstrap:
        # Start-up re-creates the bootstrap key (documented): say so, or the revocation looks final.
        click.echo(
            "warning: this is the bootstrap key RAPPORT_BOOTSTRAP_KEY names: the next start with that variable set "
            "(a server, or any rapport command but verify) re-creates it; unset or change RAPPORT_BOOTSTRAP_KEY wherever it is set",
            err=True,
        )


@main.command()
def regrade() -> None:
    """Re-grade every customer and project as of now (for criteria with time windows)."""
    from app.services.state import expect_rulebook, regrade_for_time

    settings = get_settings()
    rulebook = _ready_to_grade(settings)
    with Database.from_settings(settings).session(write=True) as session:
        expect_rulebook(session, rulebook, record=False)  # a server may have switched it since
        now = _now()
        # On PostgreSQL each round of subjects is graded as of when its row locks are held,
        # after any write it waited for: this instant or a little later. SQLite's write lock
        # is held from the session's start, so no write commits after this instant, and every
        # round is graded at it: the instant `verify --as-of` then checks exactly (graded a
        # little later, a time-window grade could lapse in between: an operator hunt's find).
        effects = regrade_for_time(session, rulebook, now=now, clock=None if settings.is_sqlite else _now)
    # The instant it started grading, as `verify --as-of` takes it.
    click.echo(f"{len(effects)} grade(s) changed; graded from {now.isoformat()}")


class _Instant(click.ParamType):
    """An ISO 8601 instant with its offset (fractions of a second allowed, as history rows
    and `rapport regrade` print them), or a date (midnight UTC)."""

    name = "instant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            day = date.fromisoformat(value)
        except ValueError:
            pass
        else:
            return self._in_range(datetime(day.year, day.month, day.day, tzinfo=timezone.utc), value, param, ctx)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 instant (2026-12-07T01:19:40.713307Z) or a date (2026-12-07)", param, ctx)
        if parsed.tzinfo is None:  # any time without an offset (fromisoformat takes 2026-12-07x02:00 too)
            self.fail(f"{value!r} has no offset: add Z or +08:00", param, ctx)
        return self._in_range(parsed, value, param, ctx)

    def _in_range(self, instant: datetime, value: str, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        """The bounds every instant a request carries keeps (1970 to 2100): a window's start
        before year 1 ended `verify --as-of 0001-01-01` in an OverflowError, exit 1, which
        says "disagreements found" (a hunt's find)."""
        problem = instant_problem(instant)
        if problem:
            self.fail(f"{value!r} {problem}", param, ctx)
        return instant


@main.command()
@click.option("--as-of", "as_of", type=_Instant(), help="evaluate as of this instant (ISO 8601 with an offset, or a date: midnight UTC)  [default: now]")
def verify(as_of: datetime | None) -> None:
    """Replay the whole event log under the active rulebook and report every customer and
    project whose stored grade, evidence or history disagrees (exit status 1 if any): the
    check to run after an incident. Reads only, a consistent snapshot on either database,
    and writes nothing: a database behind the newest schema, or a RAPPORT_RULEBOOK_PATH
    other than the active rulebook, is refused (exit status 2). Grades with time windows
    move with time alone: run `rapport regrade` first, or pass the --as-of of the last
    re-grade."""
    from app.services.state import expect_rulebook
    from app.services.verify import disagreements
    from app.startup import SchemaBehind, check_without_writing

    settings = get_settings()
    rulebook = load_rulebook(settings.rulebook_path)
    try:
        check_without_writing(settings, rulebook)
    except SchemaBehind as exc:
        raise _Unusable(f"{_safe(settings.database_url)}: {exc}: run `rapport migrate` first (verify writes nothing, migrations included)") from None
    when = as_of or _now()
    db = Database.from_settings(settings)
    started = time.monotonic()
    try:
        with db.snapshot() as session:
            # Again in the snapshot replayed: a switch that committed since the check above
            # left grades of the new rulebook to be replayed under the old one, and verify
            # reported every one that moved as a disagreement (a hunt's find).
            expect_rulebook(session, rulebook, record=False)
            counts = [session.scalar(select(func.count()).select_from(model)) for model in (m.Customer, m.Project, m.Event)]
            found = 0
            for d in disagreements(session, rulebook, as_of=when):  # printed as found: a long replay shows progress
                click.echo(f"{d.subject} {d.id}: {d.what}: {d.detail}")
                found += 1
    finally:
        db.dispose()
    click.echo(
        f"{found} disagreement(s) in {counts[0]} customers, {counts[1]} projects, {counts[2]} events "
        f"under rulebook {rulebook.version}, as of {when.isoformat()} ({time.monotonic() - started:.1f} s)"
    )
    if found:
        sys.exit(1)


@main.command()
def worker() -> None:
    """Deliver outbound webhooks until stopped (SIGTERM or Ctrl-C let the attempt under way
    finish first). Any number may run beside the API processes: none sends a delivery
    another is sending."""
    import signal
    import threading

    from app.services.delivery import run_worker

    settings = get_settings()
    _ready(settings)
    log_to_stderr()  # a paused subscription and the log's pruning are said there
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    db = Database.from_settings(settings)
    click.echo(f"delivering webhooks from {_safe(settings.database_url)}; stop with Ctrl-C or SIGTERM")
    try:
        run_worker(db, settings, stop, clock=_now)
    finally:
        db.dispose()
    click.echo("worker stopped")


@main.group(name="import")
def import_group() -> None:
    """Import events, customers or projects from a CSV file.

    \b
    Exit status: 0 every row stored (or already there); 1 some rows rejected (they are in
    the rejected file, with the reason); 2 the file cannot be imported at all, or the
    rulebook is not the database's active one (nothing stored); 3 the database failed (the
    chunks stored before stay stored: run the command again).
    """


def _import_options(command: Callable[..., None]) -> Callable[..., None]:
    """The argument and options every `rapport import` command takes."""
    for option in reversed((
        click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--rejected", type=click.Path(dir_okay=False, path_type=Path), help="where the rejected rows go  [default: <FILE stem>.rejected.csv beside FILE]"),
        click.option("--chunk", default=500, show_default=True, type=click.IntRange(1, 10_000), help="rows per write transaction"),
        click.option("--encoding", default="utf-8-sig", show_default=True, help="the file's text encoding (a BOM is optional); gb18030 for a CSV saved by Excel on Chinese Windows"),
        click.option("--actor", help="who the changes are recorded as  [default: import:<file name>]"),
        click.option("--dry-run", is_flag=True, help="check and report every row, storing nothing"),
    )):
        command = option(command)
    return command


@import_group.command("events")
@_import_options
@click.option("--source", default="import", show_default=True, help="the source of rows whose source cell is empty")
def import_events(file: Path, **options: Any) -> None:
    """Log events from a CSV file.

    Columns: type, occurred_at (ISO 8601 with an offset), customer_ref or customer_id,
    project_ref or project_id, source, external_id, note; attributes either as attr.<name>
    columns (bool: true/false, 1/0, yes/no, 是/否; number; enum_list: values separated by |)
    or as one `attributes` column holding a JSON object. An empty cell is absent.

    A row without an external_id gets one derived from its content (row:<hash>), so
    importing the same file again changes nothing. Two rows alike in every cell are then
    one event: give them external_ids to keep both.
    """
    _import("events", file, **options)


@import_group.command("customers")
@_import_options
def import_customers(file: Path, **options: Any) -> None:
    """Create or update customers, by external_ref, from a CSV file.

    Columns: external_ref (required), name, kind (owner or installer), region, rep,
    contact.person, contact.phone, contact.email, contact.address, tags (separated by |).
    A column the file does not have leaves that field as stored; an empty cell clears it.
    """
    _import("customers", file, **options)


@import_group.command("projects")
@_import_options
def import_projects(file: Path, **options: Any) -> None:
    """Create or update projects, by external_ref, from a CSV file.

    Columns: external_ref (required), name, owner_ref or owner_id (an owner customer; it
    cannot change), region, amount, expected_close (YYYY-MM-DD), rep, tags (separated by |).
    A column the file does not have leaves that field as stored; an empty cell clears it.
    """
    _import("projects", file, **options)


def _import(kind: str, file: Path, **options: Any) -> None:
    try:
        _import_file(kind, file, **options)
    except KeyboardInterrupt:
        # Before any row was read (the file is read once first): click's "Aborted!" and
        # exit status 1 would say "rows were rejected".
        click.echo(f"\ninterrupted before {file.name}'s rows were read: nothing was stored", err=True)
        sys.exit(130)


def _import_file(kind: str, file: Path, *, rejected: Path | None, chunk: int, encoding: str, actor: str | None, dry_run: bool, source: str = "import") -> None:
    from app.imports import Forced, Options, UnusableInput, default_actor, open_table, run_import

    settings = get_settings()
    rulebook = _ready_to_grade(settings)
    rejected = rejected or file.with_name(f"{file.stem}.rejected.csv")
    if rejected.resolve() == file.resolve():
        raise _Unusable("--rejected names the file being imported")
    started = time.monotonic()
    db = Database.from_settings(settings)
    try:
        # A blank --actor is none, as a blank X-Actor is.
        options = Options(chunk=chunk, actor=(actor or "").strip() or default_actor(file), source=source, dry_run=dry_run)
        table = open_table(file, kind, encoding)
        with click.progressbar(length=table.rows, label=f"importing {kind} from {file.name}", file=sys.stderr) as bar:
            try:
                report = run_import(db, rulebook, table, rejected_path=rejected, options=options, clock=_now, progress=bar.update)
            except KeyboardInterrupt as exc:
                # Not click's "Aborted!" and exit status 1, which says "rows were rejected":
                # a job that reads the status would have looked for a rejected file. A first
                # Ctrl-C lets the chunk in flight finish (app/imports.py); a second does not.
                if dry_run:
                    stored = "nothing was stored"
                elif isinstance(exc, Forced):
                    stored = "the chunks committed before it stay stored, and the chunk in flight may have been stored too; importing the file again stores only the rest"
                else:
                    stored = "the chunks committed before it stay stored; importing the file again stores only the rest"
                click.echo(f"\ninterrupted after {bar.pos:,} of {table.rows:,} rows: {stored}", err=True)
                sys.exit(130)
            except RulebookChanged:
                # Not the generic "no grade was changed" (`_Rapport.invoke`): the chunks
                # committed before the switch stay stored, re-graded by it (a hunt's find).
                stored = "nothing was stored" if dry_run else "the chunks committed before it stay stored, and the switch re-graded them"
                raise _Unusable(
                    f"the database's active rulebook changed while this import ran (a server or `rapport migrate` switched it), after {bar.pos:,} "
                    f"of {table.rows:,} rows: {stored}. Run the same command again with the rulebook the servers now use (RAPPORT_RULEBOOK_PATH): "
                    "it stores only the rest (rows without an external_id: only if the new rulebook types their attributes as the old one did, docs/import.md)"
                ) from None
    except UnusableInput as exc:
        raise _Unusable(f"{file.name}: {exc}. Nothing was stored.") from exc
    finally:
        db.dispose()
    elapsed = time.monotonic() - started
    click.echo(f"{report.summary()} — {report.rows} row{'' if report.rows == 1 else 's'} in {elapsed:.1f} s ({report.rows / max(elapsed, 1e-6):,.0f} rows/s)")
    if report.rejected_file is not None:
        click.echo(f"rejected rows, with their line and the reason: {report.rejected_file}")
    elif report.removed_stale:
        click.echo(f"removed {rejected}, left by an earlier import")
    if dry_run:
        click.echo("dry run: nothing was stored")
    if report.counts["rejected"]:
        click.get_current_context().exit(1)


def _safe(url: str) -> str:
    """The database URL as it may be printed: its password hidden, also one given as a
    query parameter (`?password=`, which libpq and psycopg take too, was printed in clear)."""
    parsed = make_url(url)
    query = {name: "***" if name.lower() in ("password", "sslpassword") else value for name, value in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


if __name__ == "__main__":
    sys.exit(main())
