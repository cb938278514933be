"""SQLite: the append-only tables refuse `INSERT OR REPLACE` (and `REPLACE INTO`) of a row
they hold. SQLite resolves such a conflict by deleting the stored row without firing its
DELETE trigger (unless the connection set `recursive_triggers`, which another connection
need not), so the append_only_triggers migration's refusal of DELETE did not stop it: an
operator's `INSERT OR REPLACE INTO grade_history VALUES (…)` rewrote a history row.

A row given with the id of a stored one is refused, as an UPDATE is. An event given with
the `source` + `external_id` of a stored one is skipped (`RAISE(IGNORE)`), which is what
Rapport's own `INSERT … ON CONFLICT DO NOTHING` of events wants anyway (a twin a concurrent
writer stored first), and leaves the stored event as it is whatever the statement asked.
A retraction of a retracted event is refused: Rapport inserts a retraction only after
looking for one, and takes a unique violation (which this is too) as its twin.
PostgreSQL has no REPLACE: its `ON CONFLICT DO UPDATE` fires the UPDATE triggers.

Revision ID: 7e2c5a9d4b10
Revises: 4d8a1f6c2b73
Create Date: 2026-12-06 13:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

from app.db.migrate import refuse_losing_the_log

revision: str = '7e2c5a9d4b10'
down_revision: Union[str, None] = '4d8a1f6c2b73'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Trigger name: (table, the stored row the new one would replace, what to do).
TRIGGERS = {
    "events_no_replace": ("events", "id = NEW.id", "RAISE(ABORT, 'events is append-only: retract instead')"),
    "events_no_replace_twin": ("events", "source = NEW.source AND external_id = NEW.external_id", "RAISE(IGNORE)"),
    "event_retractions_no_replace": (
        "event_retractions",
        "id = NEW.id OR event_id = NEW.event_id",
        "RAISE(ABORT, 'event_retractions is append-only: a retraction is itself part of the log')",
    ),
    "grade_history_no_replace": ("grade_history", "id = NEW.id", "RAISE(ABORT, 'grade_history is append-only: it is the audit trail')"),
}


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for name, (table, stored, action) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN EXISTS (SELECT 1 FROM {table} WHERE {stored}) BEGIN SELECT {action}; END")


def downgrade() -> None:
    refuse_losing_the_log(op)
    if op.get_context().dialect.name != "sqlite":
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name}")
