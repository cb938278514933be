"""A stamp of each subject's event log: customers.log_stamp, projects.log_stamp.

Every write that adds an event naming a customer or project, or retracts one, gives the
subject a new random stamp in the same transaction. A process that kept a subject's log
from an earlier write uses it only while the row still carries the stamp it was kept with
(app/db/logs.py), so grading need not read the whole log back for every event.

Existing rows start at 0, which no write gives: the first write to each reads its log.

Revision ID: 5c1d2e7a9b40
Revises: eb4fe37b4fa0
Create Date: 2026-12-04 23:30:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '5c1d2e7a9b40'
down_revision: Union[str, None] = 'eb4fe37b4fa0'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("customers", "projects")


def upgrade() -> None:
    # A plain ADD COLUMN on both engines: no table rebuild on SQLite.
    for table in TABLES:
        op.add_column(table, sa.Column("log_stamp", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "log_stamp")
