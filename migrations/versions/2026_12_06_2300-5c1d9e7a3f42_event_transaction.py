"""Events keep the id of the transaction that stored them (PostgreSQL), so that a reader
paging through the log oldest first never passes an event that commits later.

On PostgreSQL an id is taken from the sequence when the row is inserted, and becomes
visible when its transaction commits: a 10,000-event batch takes its ids, and a single
event POSTed meanwhile takes a larger one and commits first. A reader whose cursor passed
that event ("after id N") never saw the batch's events (a bug hunt missed 8,000 of them).
The oldest-first list now reads events in the order of their transactions, and only those
of transactions older than every one still running (`pg_snapshot_xmin`): what it has shown
can no longer be joined by anything before it.

`tx` is `pg_current_xact_id()` (as a bigint) on PostgreSQL for rows stored from now on, 0
for the rows stored before (they were all committed), and 0 on SQLite, where one writer at
a time commits in id order. Adding a column with a constant default rewrites nothing, and
the append-only triggers are not fired.

Revision ID: 5c1d9e7a3f42
Revises: 7e2c5a9d4b10
Create Date: 2026-12-06 23:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '5c1d9e7a3f42'
down_revision: Union[str, None] = '7e2c5a9d4b10'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("events", sa.Column("tx", sa.BigInteger(), nullable=False, server_default="0"))
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint)")
    op.create_index("ix_events_tx_id", "events", ["tx", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_tx_id", table_name="events")
    op.drop_column("events", "tx")
