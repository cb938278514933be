"""Room for what a form stores whole: events.source VARCHAR(64) → VARCHAR(69), and
form_submissions.content_type VARCHAR(200) → TEXT.

A form's events have the source "form:<form_id>", and a form id may have 64 characters: on
PostgreSQL every delivery to a form whose id had 60 or more was refused by the column
("value too long"), answered 500, and nothing was kept (a hunt's find; SQLite, which keeps
no length, stored them). A submission's Content-Type was cut to 200 characters, which could
drop a multipart body's boundary, and then no replay could read the kept body.

On PostgreSQL a wider VARCHAR and VARCHAR to TEXT change the catalogue only: no table is
rewritten, no index rebuilt. SQLite's columns are left as they are: it keeps no length, and
VARCHAR and TEXT are one there (app/db/migrate.py `compare_type`).

Revision ID: 0c7d2e5f9a14
Revises: 8b3e6f1a9d27
Create Date: 2026-12-07 22:30:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0c7d2e5f9a14'
down_revision: Union[str, None] = '8b3e6f1a9d27'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("events", "source", type_=sa.String(length=69), existing_type=sa.String(length=64), existing_nullable=False)
    op.alter_column("form_submissions", "content_type", type_=sa.Text(), existing_type=sa.String(length=200), existing_nullable=False)


def downgrade() -> None:
    # Refused by PostgreSQL ("value too long"), the whole downgrade with it, once a longer
    # value is stored: restore the backup taken before the upgrade instead.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("form_submissions", "content_type", type_=sa.String(length=200), existing_type=sa.Text(), existing_nullable=False)
    op.alter_column("events", "source", type_=sa.String(length=64), existing_type=sa.String(length=69), existing_nullable=False)
