"""Running the Alembic migrations from the service and the CLI."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError

from app.errors import MigrationsUnusable
from app.settings import Settings


def unknown_revisions(revisions: set[str]) -> str:
    """Why a database at `revisions`, some of which these migrations do not hold, is refused."""
    return (
        f"the database's schema is at revision {', '.join(sorted(revisions))}, which this release's migrations do not hold: "
        "a newer release of Rapport migrated it. Run that release, or restore a backup taken before"
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
