"""Initial schema: customers, projects, the append-only event log and its retractions,
grade history, API keys, idempotency records and service state.

Revision ID: af432ed6e8a9
Revises: 
Create Date: 2026-11-22 12:19:59.043760
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db.migrate import refuse_losing_the_log

revision: str = 'af432ed6e8a9'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Plain types, not the app's: a migration must keep meaning what it meant when written.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite auto-increments only INTEGER keys
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)  # stored in UTC (naive UTC on SQLite)


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', JSON, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('revoked_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name')),
    sa.UniqueConstraint('secret_hash', name=op.f('uq_api_keys_secret_hash'))
    )
    op.create_table('customers',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('external_ref', sa.String(length=100), nullable=True),
    sa.Column('region', sa.String(length=100), nullable=True),
    sa.Column('rep', sa.String(length=100), nullable=True),
    sa.Column('contact', JSON, nullable=False),
    sa.Column('tags', JSON, nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('level_since', TIMESTAMP, nullable=False),
    sa.Column('grade', JSON, nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.CheckConstraint("kind IN ('owner', 'installer')", name=op.f('ck_customers_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    sa.UniqueConstraint('external_ref', name=op.f('uq_customers_external_ref'))
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_level'), ['level'], unique=False)
        batch_op.create_index(batch_op.f('ix_customers_rep'), ['rep'], unique=False)

    op.create_table('grade_history',
    sa.Column('id', ID, nullable=False),
    sa.Column('subject_type', sa.String(length=16), nullable=False),
    sa.Column('subject_id', ID, nullable=False),
    sa.Column('metric', sa.String(length=32), nullable=False),
    sa.Column('old', sa.Integer(), nullable=False),
    sa.Column('new', sa.Integer(), nullable=False),
    sa.Column('rulebook_version', sa.String(length=64), nullable=False),
    sa.Column('evidence', JSON, nullable=False),
    sa.Column('trigger', JSON, nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=True),
    sa.Column('at', TIMESTAMP, nullable=False),
    sa.CheckConstraint("subject_type IN ('customer', 'project')", name=op.f('ck_grade_history_subject_type')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grade_history'))
    )
    with op.batch_alter_table('grade_history', schema=None) as batch_op:
        batch_op.create_index('ix_grade_history_subject', ['subject_type', 'subject_id', 'id'], unique=False)

    op.create_table('service_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_service_state'))
    )
    op.create_table('idempotency_records',
    sa.Column('id', ID, nullable=False),
    sa.Column('api_key_id', ID, nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.LargeBinary(), nullable=True),
    sa.Column('response_type', sa.String(length=100), nullable=True),
    sa.Column('response_headers', JSON, nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('locked_until', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_idempotency_records_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_records')),
    sa.UniqueConstraint('api_key_id', 'key', name=op.f('uq_idempotency_records_api_key_id_key'))
    )
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_records_created_at'), ['created_at'], unique=False)

    op.create_table('projects',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('owner_id', ID, nullable=False),
    sa.Column('external_ref', sa.String(length=100), nullable=True),
    sa.Column('region', sa.String(length=100), nullable=True),
    sa.Column('amount', sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
    sa.Column('expected_close', sa.Date(), nullable=True),
    sa.Column('rep', sa.String(length=100), nullable=True),
    sa.Column('tags', JSON, nullable=False),
    sa.Column('heat', sa.Integer(), nullable=False),
    sa.Column('heat_since', TIMESTAMP, nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('closed', sa.Boolean(), nullable=False),
    sa.Column('grade', JSON, nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['customers.id'], name=op.f('fk_projects_owner_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    sa.UniqueConstraint('external_ref', name=op.f('uq_projects_external_ref'))
    )
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_projects_heat'), ['heat'], unique=False)
        batch_op.create_index(batch_op.f('ix_projects_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_projects_rep'), ['rep'], unique=False)

    op.create_table('events',
    sa.Column('id', ID, nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('customer_id', ID, nullable=True),
    sa.Column('project_id', ID, nullable=True),
    sa.Column('occurred_at', TIMESTAMP, nullable=False),
    sa.Column('recorded_at', TIMESTAMP, nullable=False),
    sa.Column('attributes', JSON, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('actor', sa.String(length=100), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_events_customer_id_customers')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_events_project_id_projects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_events_source_external_id'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_customer_id_type', ['customer_id', 'type'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_occurred_at'), ['occurred_at'], unique=False)
        batch_op.create_index('ix_events_project_id_type', ['project_id', 'type'], unique=False)

    op.create_table('event_retractions',
    sa.Column('id', ID, nullable=False),
    sa.Column('event_id', ID, nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=True),
    sa.Column('at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_event_retractions_event_id_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_retractions')),
    sa.UniqueConstraint('event_id', name=op.f('uq_event_retractions_event_id'))
    )


def downgrade() -> None:
    refuse_losing_the_log(op)
    op.drop_table('event_retractions')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_project_id_type')
        batch_op.drop_index(batch_op.f('ix_events_occurred_at'))
        batch_op.drop_index('ix_events_customer_id_type')

    op.drop_table('events')
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_projects_rep'))
        batch_op.drop_index(batch_op.f('ix_projects_owner_id'))
        batch_op.drop_index(batch_op.f('ix_projects_heat'))

    op.drop_table('projects')
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_records_created_at'))

    op.drop_table('idempotency_records')
    op.drop_table('service_state')
    with op.batch_alter_table('grade_history', schema=None) as batch_op:
        batch_op.drop_index('ix_grade_history_subject')

    op.drop_table('grade_history')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_rep'))
        batch_op.drop_index(batch_op.f('ix_customers_level'))

    op.drop_table('customers')
    op.drop_table('api_keys')
