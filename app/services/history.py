"""Reading grade history (written only by app/grading.py)."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.errors import NotFound
from app.services.paging import page

SUBJECTS = {"customer": m.Customer, "project": m.Project}


def history_page(session: Session, subject: str, subject_id: int, *, limit: int, cursor: str | None) -> tuple[Sequence[m.GradeChange], str | None]:
    """One page of a customer's or project's grade changes, oldest first (404 if it does not exist)."""
    if session.get(SUBJECTS[subject], subject_id) is None:
        raise NotFound(f"no {subject} with id {subject_id}")
    query = select(m.GradeChange).where(m.GradeChange.subject_type == subject, m.GradeChange.subject_id == subject_id)
    return page(session, query, m.GradeChange.id, limit=limit, cursor=cursor)
