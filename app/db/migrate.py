"""Running the Alembic migrations from the service and the CLI."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.settings import Settings


def migrations_dir(settings: Settings) -> Path:
    """The migrations folder: the setting, else beside the package (a source checkout or an
    editable install), else ./migrations."""
    candidates = [settings.migrations_dir] if settings.migrations_dir else []
    candidates += [Path(__file__).resolve().parents[2] / "migrations", Path.cwd() / "migrations"]
    for path in candidates:
        if path is not None and (path / "env.py").is_file():
            return path
    raise FileNotFoundError("Alembic migrations not found; set RAPPORT_MIGRATIONS_DIR")


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(settings)))
    cfg.attributes["database_url"] = settings.database_url
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)
