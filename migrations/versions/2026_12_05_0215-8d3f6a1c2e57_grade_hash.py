"""A digest of each subject's stored grade: customers.grade_hash, projects.grade_hash.

A write that re-grades a subject compares the new grade's digest with this one to know
whether the grade changed (and a new version counts), instead of having the database
parse and compare the stored JSON (app/grading.py `Writes`).

The digests of the rows already stored are computed here, with the function the service
uses (app/db/types.py `grade_digest`), from each row's level (a project's heat, stage and
closed) and decoded grade, in pages of 1,000 rows.

Revision ID: 8d3f6a1c2e57
Revises: 5c1d2e7a9b40
Create Date: 2026-12-05 02:15:00
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from app.db.types import encode_grade, grade_digest

revision: str = '8d3f6a1c2e57'
down_revision: Union[str, None] = '5c1d2e7a9b40'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Each table with what its digest covers besides the grade, as the service reads them.
HEADS = {
    "customers": (sa.column("level", sa.Integer),),
    "projects": (sa.column("heat", sa.Integer), sa.column("stage", sa.String), sa.column("closed", sa.Boolean)),
}
PAGE = 1000


def upgrade() -> None:
    # Nullable, and a plain ADD COLUMN on both engines: no table rebuild on SQLite.
    for name in HEADS:
        op.add_column(name, sa.Column("grade_hash", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    for name, head in HEADS.items():
        table = sa.table(name, sa.column("id", sa.BigInteger), *head, sa.column("grade", sa.JSON().with_variant(JSONB(), "postgresql")), sa.column("grade_hash", sa.BigInteger))
        page = sa.select(table.c.id, *head, table.c.grade).where(table.c.id > sa.bindparam("after")).order_by(table.c.id).limit(PAGE)
        fill = sa.update(table).where(table.c.id == sa.bindparam("row_id")).values(grade_hash=sa.bindparam("digest"))
        after = 0
        while rows := bind.execute(page, {"after": after}).all():
            bind.execute(fill, [{"row_id": row[0], "digest": grade_digest(tuple(row[1:-1]), encode_grade(row[-1] or {}))} for row in rows])
            after = rows[-1][0]


def downgrade() -> None:
    for name in HEADS:
        op.drop_column(name, "grade_hash")
