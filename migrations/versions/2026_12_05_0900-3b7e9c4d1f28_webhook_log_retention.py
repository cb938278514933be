"""Indexes for keeping the webhook delivery log bounded: webhook_deliveries(finished_at),
to find the deliveries that ended longest ago, and webhook_deliveries(message_id), to tell
whether an outbox message has deliveries left (app/services/delivery.py `prune`).

Revision ID: 3b7e9c4d1f28
Revises: 8d3f6a1c2e57
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = '3b7e9c4d1f28'
down_revision: Union[str, None] = '8d3f6a1c2e57'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_webhook_deliveries_finished_at", "webhook_deliveries", ["finished_at"])
    op.create_index("ix_webhook_deliveries_message_id", "webhook_deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_message_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_finished_at", table_name="webhook_deliveries")
