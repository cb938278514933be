"""Reading grade history (written only by app/grading.py)."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.services.paging import page


def history_page(session: Session, subject: str, subject_id: int, *, limit: int, cursor: str | None) -> tuple[Sequence[m.GradeChange], str | None]:
    query = select(m.GradeChange).where(m.GradeChange.subject_type == subject, m.GradeChange.subject_id == subject_id)
    return page(session, query, m.GradeChange.id, limit=limit, cursor=cursor)
