"""The `rapport` command: serve, migrate, keys, demo, regrade."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import click

from app.db.engine import Database, make_engine
from app.domain.rulebook import RulebookError, load_rulebook
from app.errors import AppError
from app.settings import Settings, get_settings


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _database(settings: Settings) -> Database:
    return Database(make_engine(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms))


def _prepare(settings: Settings) -> None:
    from app.startup import prepare  # keeps `rapport --help` fast

    try:
        _, effects = prepare(settings)
    except RulebookError as exc:
        raise click.ClickException(str(exc)) from exc
    if effects:
        click.echo(f"rulebook changed: {len(effects)} grade(s) re-computed")


@click.group()
def main() -> None:
    """Rapport: relationship levels and deal heat from logged sales events."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="uvicorn worker processes")
@click.option("--demo", is_flag=True, help="load a small demo data set (if the database is empty) and print a read key")
def serve(host: str, port: int, workers: int, demo: bool) -> None:
    """Migrate the database, then serve the API."""
    import uvicorn

    settings = get_settings()
    _prepare(settings)
    if demo:
        _load_demo(settings, host, port)
    click.echo(f"Rapport on http://{host}:{port} — API docs at http://{host}:{port}/docs — database {_safe(settings.database_url)}")
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


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
    _prepare(settings)
    _load_demo(settings, host, port)


def _load_demo(settings: Settings, host: str, port: int) -> None:
    from app.demo import load_demo
    from app.services.keys import create_key

    rulebook = load_rulebook(settings.rulebook_path)
    db = _database(settings)
    with db.session(write=True) as session:
        loaded = load_demo(session, rulebook, now=_now())
        _, secret = create_key(session, f"demo-{_now():%Y%m%d%H%M%S%f}", ["read", "write"], now=_now())
    db.engine.dispose()
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


@keys.command("create")
@click.option("--name", required=True)
@click.option("--scopes", required=True, help="comma-separated: read, write, admin")
def keys_create(name: str, scopes: str) -> None:
    """Create a key and print its secret (shown once; stored hashed)."""
    from app.services.keys import create_key, parse_scopes

    settings = get_settings()
    _prepare(settings)
    db = _database(settings)
    try:
        with db.session(write=True) as session:
            key, secret = create_key(session, name, parse_scopes(scopes), now=_now())
            click.echo(f"created key {key.name!r} with scopes {','.join(key.scopes)}; its secret, shown only now:", err=True)
    except AppError as exc:
        raise click.ClickException(f"{exc.detail}{''.join(f'; {e.field}: {e.reason}' for e in exc.errors)}") from exc
    click.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from app.services.keys import list_keys

    settings = get_settings()
    _prepare(settings)
    with _database(settings).session(write=False) as session:
        for key in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            click.echo(f"{key.name}\t{','.join(key.scopes)}\t{state}")


@keys.command("revoke")
@click.option("--name", required=True)
def keys_revoke(name: str) -> None:
    """Revoke a key: it stops working at once."""
    from app.services.keys import revoke_key

    settings = get_settings()
    _prepare(settings)
    try:
        with _database(settings).session(write=True) as session:
            revoke_key(session, name, now=_now())
    except AppError as exc:
        raise click.ClickException(exc.detail) from exc
    click.echo(f"revoked {name!r}")


@main.command()
def regrade() -> None:
    """Re-grade every customer and project as of now (for criteria with time windows)."""
    from app.services.state import regrade_for_time

    settings = get_settings()
    _prepare(settings)
    rulebook = load_rulebook(settings.rulebook_path)
    with _database(settings).session(write=True) as session:
        effects = regrade_for_time(session, rulebook, now=_now())
    click.echo(f"{len(effects)} grade(s) changed")


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
