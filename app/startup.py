"""What runs before the service answers: migrations, the bootstrap key, the rulebook check."""

from __future__ import annotations

from datetime import datetime, timezone

from app.db.engine import Database
from app.db.migrate import upgrade
from app.domain.rulebook import Rulebook, load_rulebook
from app.grading import Effect
from app.services.keys import ensure_bootstrap_key
from app.services.state import sync_rulebook
from app.settings import Settings


def prepare(settings: Settings, *, now: datetime | None = None) -> tuple[Rulebook, list[Effect]]:
    """Validate the rulebook (a broken one stops here), migrate, then initialize."""
    rulebook = load_rulebook(settings.rulebook_path)
    upgrade(settings)
    db = Database.from_settings(settings)
    try:
        effects = initialize(db, settings, rulebook, now=now or datetime.now(timezone.utc))
    finally:
        db.dispose()
    return rulebook, effects


def initialize(db: Database, settings: Settings, rulebook: Rulebook, *, now: datetime) -> list[Effect]:
    """Ensure the bootstrap key, and re-grade everything if the rulebook version changed."""
    with db.session(write=True) as session:
        if settings.bootstrap_key:
            ensure_bootstrap_key(session, settings.bootstrap_key, now=now)
        return sync_rulebook(session, rulebook, now=now)
