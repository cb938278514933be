"""An index for claiming deliveries per subscription: webhook_deliveries(subscription_id,
status, next_attempt_at, id).

A claim took the earliest due pending delivery of all, then kept it only if its
subscription was active. Deliveries queued for a paused subscription are pending and due,
so every claim walked that backlog first: with 148,000 of them (a receiver down for a day
ends paused), one claim read 28,962 rows, about 100 ms, and 1,000 deliveries to a healthy
receiver took 124 s instead of 28 s. A claim now looks only at the active subscriptions'
due deliveries, each found through this index (app/services/delivery.py `_claim`).

It replaces webhook_deliveries(status, next_attempt_at), which only that claim read: every
other read of pending deliveries names the subscription first, and each index costs every
write that queues a delivery.

Revision ID: 2f6b8d0c4e19
Revises: 5c1d9e7a3f42
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = '2f6b8d0c4e19'
down_revision: Union[str, None] = '5c1d9e7a3f42'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_webhook_deliveries_subscription_due", "webhook_deliveries", ["subscription_id", "status", "next_attempt_at", "id"])
    op.drop_index("ix_webhook_deliveries_status_next_attempt_at", table_name="webhook_deliveries")


def downgrade() -> None:
    op.create_index("ix_webhook_deliveries_status_next_attempt_at", "webhook_deliveries", ["status", "next_attempt_at"])
    op.drop_index("ix_webhook_deliveries_subscription_due", table_name="webhook_deliveries")
