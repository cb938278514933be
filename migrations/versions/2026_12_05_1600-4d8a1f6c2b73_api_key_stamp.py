"""SQLite tells every Rapport process when the API keys change: row triggers on api_keys put
a new random stamp in service_state ('api_keys_stamp') after any INSERT, UPDATE or DELETE,
whoever makes it (`rapport keys revoke`, another process, an operator's SQL). A process
remembers the keys it read only while the stamp stays the one it saw
(app/services/known_keys.py). Nothing on PostgreSQL, which notifies its listeners instead
(the api_key_notices migration).

Revision ID: 4d8a1f6c2b73
Revises: 9c4e2b7d3a61
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = '4d8a1f6c2b73'
down_revision: Union[str, None] = '9c4e2b7d3a61'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Also named in app/services/known_keys.py (STAMP); a test checks they agree.
STAMP = "api_keys_stamp"
CHANGES = ("insert", "update", "delete")
# Random, not counted: a count starts again from the same values when the row is deleted or
# a database restored, and a process would take the keys it remembered for the new ones.
NEW_STAMP = f"INSERT OR REPLACE INTO service_state (key, value) VALUES ('{STAMP}', CAST(random() AS TEXT))"


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for change in CHANGES:
        op.execute(f"CREATE TRIGGER api_keys_stamp_{change} AFTER {change.upper()} ON api_keys BEGIN {NEW_STAMP}; END")
    op.execute(NEW_STAMP)


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for change in CHANGES:
        op.execute(f"DROP TRIGGER api_keys_stamp_{change}")
    op.execute(f"DELETE FROM service_state WHERE key = '{STAMP}'")
