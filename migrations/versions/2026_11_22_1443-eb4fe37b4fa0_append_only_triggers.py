"""Append-only, enforced by the database: the event log, its retractions and the grade
history refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL), whoever connects.

A wrong event is corrected by retracting it; nothing in the service updates or deletes
these rows, so the triggers only ever stop a mistake or a tampering.

Revision ID: eb4fe37b4fa0
Revises: f3e81650b365
Create Date: 2026-11-22 14:43:00.540216
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

from app.db.migrate import refuse_losing_the_log

revision: str = 'eb4fe37b4fa0'
down_revision: Union[str, None] = 'f3e81650b365'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The table and what the refusal tells whoever tried.
PROTECTED = {
    "events": "events is append-only: retract instead",
    "event_retractions": "event_retractions is append-only: a retraction is itself part of the log",
    "grade_history": "grade_history is append-only: it is the audit trail",
}
# PostgreSQL: a SQLSTATE of our own (class "RP" is not used by PostgreSQL), so a client
# can tell this refusal from any other error.
SQLSTATE = "RP001"
FUNCTION = "refuse_append_only_change"


def _postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgres():
        op.execute(
            f"""
            CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = '{SQLSTATE}',
                    HINT = 'rows of ' || TG_TABLE_NAME || ' are never updated or deleted';
            END
            $$
            """
        )
        for table, message in PROTECTED.items():
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}('{message}')"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}('{message}')"
            )
        return
    # SQLite has no TRUNCATE: `DELETE FROM t` without WHERE fires the delete trigger too.
    # A later batch_alter_table on these tables rebuilds them on SQLite and loses the
    # triggers: such a migration must create them again.
    for table, message in PROTECTED.items():
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )


def downgrade() -> None:
    refuse_losing_the_log(op)
    if _postgres():
        for table in PROTECTED:
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION {FUNCTION}()")
        return
    for table in PROTECTED:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_no_{action}")
