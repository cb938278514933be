"""Running the Alembic migrations from the service and the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import String, inspect, text

from app.errors import MigrationsUnusable
from app.settings import Settings


def compare_type(context: Any, inspected_column: Any, metadata_column: Any, inspected_type: Any, metadata_type: Any) -> bool | None:
    """Autogenerate's comparison of a column's type (`alembic check`, the migration tests), but
    for text on SQLite: SQLite keeps no length and stores VARCHAR(n) and TEXT alike, so a
    column the models widened is widened by its migration on PostgreSQL only, not by
    rebuilding an SQLite table (the events table, with its triggers). None: Alembic's own."""
    if context.dialect.name == "sqlite" and isinstance(inspected_type, String) and isinstance(metadata_type, String):
        return False
    return None


def unknown_revisions(revisions: set[str]) -> str:
    """Why a database at `revisions`, some of which these migrations do not hold, is refused."""
    return (
        f"the database's schema is at revision {', '.join(sorted(revisions))}, which this release's migrations do not hold: "
        "a newer release of Rapport migrated it. Run that release, or restore a backup taken before"
    )


# A downgrade that would drop the events, retractions and grading history, or lift the
# triggers that keep them append-only, runs only on a database where they hold nothing,
# unless asked for in so many words (a hunt downgraded to "base" a database with its whole
# history: every table dropped, exit status 0).
ALLOW_DOWNGRADE = "RAPPORT_ALLOW_DOWNGRADE"  # the environment's "yes", or the Alembic config's attribute
LOG_TABLES = ("events", "event_retractions", "grade_history")


def refuse_losing_the_log(op: Any) -> None:
    """Called first by a migration's downgrade that drops the log or lifts its protection."""
    if os.environ.get(ALLOW_DOWNGRADE) == "yes" or op.get_context().config.attributes.get(ALLOW_DOWNGRADE):
        return
    bind = op.get_bind()
    present = set(inspect(bind).get_table_names())
    holding = [t for t in LOG_TABLES if t in present and bind.execute(text(f"SELECT 1 FROM {t} LIMIT 1")).first() is not None]
    if holding:
        raise SystemExit(
            f"refused: this downgrade would drop or unprotect {', '.join(holding)}, which hold recorded data (nothing is ever deleted "
            f"from them). Restore a backup taken before the upgrade instead; to downgrade all the same, set {ALLOW_DOWNGRADE}=yes"
        )


def migrations_dir(settings: Settings) -> Path:
    """The migrations folder: the setting, else beside the package (a source checkout or an
    editable install), else ./migrations."""
    if settings.migrations_dir:  # named: that folder or none, never another one silently
        if (Path(settings.migrations_dir) / "env.py").is_file():
            return Path(settings.migrations_dir)
        raise MigrationsUnusable(f"RAPPORT_MIGRATIONS_DIR={settings.migrations_dir} holds no Alembic migrations (no env.py)")
    for path in (Path(__file__).resolve().parents[2] / "migrations", Path.cwd() / "migrations"):
        if (path / "env.py").is_file():
            return path
    raise MigrationsUnusable("Alembic migrations not found; set RAPPORT_MIGRATIONS_DIR")


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(settings)))
    cfg.attributes["database_url"] = settings.database_url
    cfg.attributes["sqlite_busy_timeout_ms"] = settings.sqlite_busy_timeout_ms
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(settings), revision)
    except CommandError as exc:
        # Alembic's own words for a revision of the database it cannot find in the scripts.
        found = str(exc).partition("Can't locate revision identified by ")[2]
        if not found:
            raise
        raise MigrationsUnusable(unknown_revisions({found.strip("'")})) from None
