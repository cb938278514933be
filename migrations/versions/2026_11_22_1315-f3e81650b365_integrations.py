"""Integrations: form mappings and their submissions (the inbox), webhook subscriptions,
the transactional outbox, deliveries and the delivery log.

Revision ID: f3e81650b365
Revises: af432ed6e8a9
Create Date: 2026-11-22 13:15:18.911062
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'f3e81650b365'
down_revision: Union[str, None] = 'af432ed6e8a9'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Plain types, not the app's (see the initial migration).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('form_mappings',
    sa.Column('id', ID, nullable=False),
    sa.Column('form_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('tool', sa.String(length=32), nullable=False),
    sa.Column('auth_scheme', sa.String(length=32), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('previous_secret', sa.String(length=200), nullable=True),
    sa.Column('previous_secret_until', TIMESTAMP, nullable=True),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.CheckConstraint("auth_scheme IN ('standard_webhooks', 'typeform', 'x_signature', 'jiandaoyun', 'url_token')", name=op.f('ck_form_mappings_auth_scheme')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_form_mappings')),
    sa.UniqueConstraint('form_id', name=op.f('uq_form_mappings_form_id'))
    )
    op.create_table('outbox_messages',
    sa.Column('id', ID, nullable=False),
    sa.Column('msg_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages')),
    sa.UniqueConstraint('msg_id', name=op.f('uq_outbox_messages_msg_id'))
    )
    op.create_table('webhook_subscriptions',
    sa.Column('id', ID, nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('event_types', JSON, nullable=False),
    sa.Column('secret', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('paused_reason', sa.Text(), nullable=True),
    sa.Column('paused_at', TIMESTAMP, nullable=True),
    sa.Column('deleted_at', TIMESTAMP, nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.CheckConstraint("status IN ('active', 'paused', 'deleted')", name=op.f('ck_webhook_subscriptions_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_subscriptions'))
    )
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_subscriptions_status'), ['status'], unique=False)

    op.create_table('form_submissions',
    sa.Column('id', ID, nullable=False),
    sa.Column('form_mapping_id', ID, nullable=False),
    sa.Column('delivery_id', sa.String(length=200), nullable=False),
    sa.Column('received_at', TIMESTAMP, nullable=False),
    sa.Column('content_type', sa.String(length=200), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('problems', JSON, nullable=False),
    sa.Column('event_ids', JSON, nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('resolved_at', TIMESTAMP, nullable=True),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.Column('actor', sa.String(length=100), nullable=True),
    sa.CheckConstraint("status IN ('processed', 'inbox', 'dismissed')", name=op.f('ck_form_submissions_status')),
    sa.ForeignKeyConstraint(['form_mapping_id'], ['form_mappings.id'], name=op.f('fk_form_submissions_form_mapping_id_form_mappings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_form_submissions')),
    sa.UniqueConstraint('form_mapping_id', 'delivery_id', name=op.f('uq_form_submissions_form_mapping_id_delivery_id'))
    )
    with op.batch_alter_table('form_submissions', schema=None) as batch_op:
        batch_op.create_index('ix_form_submissions_status_id', ['status', 'id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', ID, nullable=False),
    sa.Column('subscription_id', ID, nullable=False),
    sa.Column('message_id', ID, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', TIMESTAMP, nullable=False),
    sa.Column('locked_until', TIMESTAMP, nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('finished_at', TIMESTAMP, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name=op.f('ck_webhook_deliveries_status')),
    sa.ForeignKeyConstraint(['message_id'], ['outbox_messages.id'], name=op.f('fk_webhook_deliveries_message_id_outbox_messages')),
    sa.ForeignKeyConstraint(['subscription_id'], ['webhook_subscriptions.id'], name=op.f('fk_webhook_deliveries_subscription_id_webhook_subscriptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('subscription_id', 'message_id', name=op.f('uq_webhook_deliveries_subscription_id_message_id'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_webhook_deliveries_subscription_id_id', ['subscription_id', 'id'], unique=False)

    op.create_table('webhook_attempts',
    sa.Column('id', ID, nullable=False),
    sa.Column('delivery_id', ID, nullable=False),
    sa.Column('at', TIMESTAMP, nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('response_excerpt', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'], name=op.f('fk_webhook_attempts_delivery_id_webhook_deliveries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_attempts'))
    )
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_attempts_delivery_id'), ['delivery_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_attempts_delivery_id'))

    op.drop_table('webhook_attempts')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_subscription_id_id')
        batch_op.drop_index('ix_webhook_deliveries_status_next_attempt_at')

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('form_submissions', schema=None) as batch_op:
        batch_op.drop_index('ix_form_submissions_status_id')

    op.drop_table('form_submissions')
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_subscriptions_status'))

    op.drop_table('webhook_subscriptions')
    op.drop_table('outbox_messages')
    op.drop_table('form_mappings')
