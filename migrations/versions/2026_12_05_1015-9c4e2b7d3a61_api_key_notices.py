"""PostgreSQL tells every listening Rapport process when the API keys change: a statement
trigger on api_keys sends NOTIFY rapport_api_keys after any INSERT, UPDATE, DELETE or
TRUNCATE, whoever makes it (`rapport keys revoke`, another process, an operator's SQL).
A process forgets the keys it remembered when it hears one (app/services/known_keys.py).
Nothing on SQLite, whose processes do not remember keys.

Revision ID: 9c4e2b7d3a61
Revises: 6a2f8e1b5c93
Create Date: 2026-12-05 10:15:00
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = '9c4e2b7d3a61'
down_revision: Union[str, None] = '6a2f8e1b5c93'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The channel is also named in app/services/known_keys.py (CHANNEL); a test checks they agree.
CHANNEL = "rapport_api_keys"
FUNCTION = "notify_api_keys_changed"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # Sent when the changing transaction commits, not before: a listener that forgets its
    # keys then reads the committed change. One notice per transaction (PostgreSQL folds
    # identical notices of one transaction into one).
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(f"CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")
    op.execute(f"CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER api_keys_notify_truncate ON api_keys")
    op.execute("DROP TRIGGER api_keys_notify ON api_keys")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
