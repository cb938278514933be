"""webhook_subscriptions.failing_since, failed_attempts, good_at: a receiver's run of failures.

A subscription was paused only when one delivery had failed every retry of its schedule.
A receiver that hangs (each attempt the whole timeout) while new messages keep coming had
its failing delivery's retries wait behind the new ones, each due sooner, so it was paused
far later than the schedule says, or never: a hunt with a 2 s, 2 s schedule saw no pause
after 150 s, where 13 s was due. Each attempt's outcome now keeps these columns: the run's
first failure and its count (set by failures, ended by a success), and when the receiver
was last known good (a success's start, or a resume: older failures do not count). A
failure that ends a run as long as the whole schedule, of as many attempts as a delivery
gets, pauses the subscription (app/services/delivery.py `_record`). Added with a plain ADD
COLUMN on both engines (failed_attempts with its default, 0).

Revision ID: 8b3e6f1a9d27
Revises: 2f6b8d0c4e19
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '8b3e6f1a9d27'
down_revision: Union[str, None] = '2f6b8d0c4e19'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("webhook_subscriptions", sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("webhook_subscriptions", sa.Column("failed_attempts", sa.Integer(), server_default="0", nullable=False))
    op.add_column("webhook_subscriptions", sa.Column("good_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # DROP COLUMN: SQLite ≥ 3.35 drops a column in place (no table rebuild).
    op.drop_column("webhook_subscriptions", "good_at")
    op.drop_column("webhook_subscriptions", "failed_attempts")
    op.drop_column("webhook_subscriptions", "failing_since")
