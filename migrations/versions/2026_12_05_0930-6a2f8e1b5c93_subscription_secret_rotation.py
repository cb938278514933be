"""Webhook subscriptions keep the secret a rotation replaced, and until when deliveries are
also signed with it: webhook_subscriptions.previous_secret, previous_secret_until (as form
mappings have). Nullable, added with a plain ADD COLUMN on both engines.

Revision ID: 6a2f8e1b5c93
Revises: 3b7e9c4d1f28
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '6a2f8e1b5c93'
down_revision: Union[str, None] = '3b7e9c4d1f28'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("webhook_subscriptions", sa.Column("previous_secret", sa.String(length=100), nullable=True))
    op.add_column("webhook_subscriptions", sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # DROP COLUMN: SQLite ≥ 3.35 drops a column in place (no table rebuild).
    op.drop_column("webhook_subscriptions", "previous_secret_until")
    op.drop_column("webhook_subscriptions", "previous_secret")
