"""What runs before the service answers or a command works: migrations, the bootstrap key,
the rulebook check.

Only where a rulebook is deployed (`rapport serve`, `rapport migrate`: `prepare`) may the
active rulebook change; every other command that grades or reads grades works under the
active one or not at all (`prepare_command`, `check_without_writing`)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.migrate import alembic_config, unknown_revisions, upgrade
from app.domain.rulebook import Rulebook, load_rulebook
from app.errors import MigrationsUnusable
from app.grading import GRADING, Effect
from app.services.keys import ensure_bootstrap_key
from app.services.state import expect_rulebook, sync_grading, sync_rulebook
from app.settings import Settings


log = logging.getLogger("rapport")


class SchemaBehind(Exception):
    """The database is not at the newest migration (or has no schema at all), and the
    command may not migrate it."""


def prepare(settings: Settings, *, now: datetime | None = None) -> tuple[Rulebook, list[Effect] | None]:
    """Validate the rulebook (a broken one stops here), migrate, then initialize: where a
    rulebook is deployed, so a rulebook other than the active one becomes it."""
    rulebook = load_rulebook(settings.rulebook_path)
    return rulebook, _migrated_and_initialized(settings, rulebook, now, switch=True)


def prepare_command(settings: Settings, rulebook: Rulebook | None, *, now: datetime | None = None) -> None:
    """Migrate and ensure the bootstrap key, as `prepare` does, but never switch the
    rulebook: a command that grades passes its `rulebook`, and if that is not the active
    one nothing is written (RulebookMismatch). Commands that grade nothing pass None."""
    _migrated_and_initialized(settings, rulebook, now, switch=False)


def _migrated_and_initialized(settings: Settings, rulebook: Rulebook | None, now: datetime | None, *, switch: bool) -> list[Effect] | None:
    upgrade(settings)
    db = Database.from_settings(settings)
    try:
        return initialize(db, settings, rulebook, now=now or datetime.now(timezone.utc), switch=switch)
    finally:
        db.dispose()


def initialize(db: Database, settings: Settings, rulebook: Rulebook | None, *, now: datetime, switch: bool = True) -> list[Effect] | None:
    """Ensure the bootstrap key; then, with `switch`, re-grade everything if the rulebook
    version changed (returning the grades that changed; None where nothing was switched),
    and without it refuse a rulebook other than the active one (RulebookMismatch; a
    database that records none takes this one)."""
    with db.session(write=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            restored = settle_restored_transactions(session)
            if restored:
                log.warning(
                    "%d event(s) carry the transaction ids of another PostgreSQL server (a dump restored here): set to 0, "
                    "so that the oldest-first event list shows them, first and in id order",
                    restored,
                )
        if settings.bootstrap_key:
            ensure_bootstrap_key(session, settings.bootstrap_key, now=now)
        if rulebook is None:
            return None
        if switch:
            effects = sync_rulebook(session, rulebook, now=now)
            released = sync_grading(session, rulebook, now=now, regraded=effects is not None)
            if released is not None:
                log.warning("this release grades differently (%s): every grade re-computed, %d changed (history trigger release)", GRADING, len(released))
            return effects
        expect_rulebook(session, rulebook, record=True)
        return None


def settle_restored_transactions(session: Session) -> int:
    """On PostgreSQL an event keeps the id of the transaction that stored it (`tx`), and the
    oldest-first event list reads only events of transactions older than every one still
    running (app/services/paging.py). A dump restored on another server keeps the ids of the
    server it came from: where they are ahead of this server's, the list hid every restored
    event until this server's ids passed them, and then listed them after newer ones. All of
    a restored log's transactions ended before anything here began, so such events take 0,
    as the events stored before `tx` existed did: they come first, in id order. Cheap when
    there is nothing to do (one look at the `(tx, id)` index); the column is bookkeeping, not
    what the event says, but the append-only trigger guards the whole row, so it is set
    aside for this one statement, in this transaction. Returns how many events were set."""
    ahead = session.execute(text("SELECT max(tx) >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint FROM events")).scalar()
    if not ahead:
        return 0
    session.execute(text("ALTER TABLE events DISABLE TRIGGER events_append_only"))
    settled = session.execute(text("UPDATE events SET tx = 0 WHERE tx <> 0")).rowcount
    session.execute(text("ALTER TABLE events ENABLE TRIGGER events_append_only"))
    return settled


def check_without_writing(settings: Settings, rulebook: Rulebook) -> None:
    """What a command that writes nothing (`rapport verify`) checks instead of preparing:
    the schema is at the newest revision (SchemaBehind) and `rulebook` is the active one
    (RulebookMismatch). No migration, no bootstrap key, and no SQLite file is created."""
    if _sqlite_file_missing(settings.database_url):
        raise SchemaBehind("there is no database file")
    scripts = ScriptDirectory.from_config(alembic_config(settings))
    newest = set(scripts.get_heads())
    known = {script.revision for script in scripts.walk_revisions()}
    db = Database.from_settings(settings)
    try:
        with db.session(write=False) as session:
            current = set(MigrationContext.configure(session.connection()).get_current_heads())
            if current - known:
                raise MigrationsUnusable(unknown_revisions(current - known))
            if current != newest:
                found = ", ".join(sorted(current)) or "none"
                raise SchemaBehind(f"the schema is at revision {found}, the newest is {', '.join(sorted(newest))}")
            expect_rulebook(session, rulebook, record=False)
    finally:
        db.dispose()


def _sqlite_file_missing(url: str) -> bool:
    """Whether `url` names a SQLite file that does not exist (connecting would create it)."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return False
    return not Path(name).exists()
