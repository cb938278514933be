"""Keeping stored grades in step with the active rulebook."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.db import models as m
from app.domain.rulebook import Rulebook
from app.grading import Effect, Regrade, regrade_everything

RULEBOOK_VERSION = "rulebook_version"


def sync_rulebook(session: Session, rulebook: Rulebook, *, now: datetime) -> list[Effect]:
    """If the stored grades were made under another rulebook version, re-grade everything
    (trigger "rulebook") so every stored grade is again what the active rulebook says."""
    row = session.get(m.Setting, RULEBOOK_VERSION)
    if row is not None and row.value == rulebook.version:
        return []
    previous = row.value if row is not None else None
    effects: list[Effect] = []
    if previous is not None:
        job = Regrade(trigger={"kind": "rulebook", "from": previous, "to": rulebook.version}, actor="system", now=now)
        effects = regrade_everything(session, rulebook, job)
    if row is None:
        session.add(m.Setting(key=RULEBOOK_VERSION, value=rulebook.version))
    else:
        row.value = rulebook.version
    return effects


def regrade_for_time(session: Session, rulebook: Rulebook, *, now: datetime) -> list[Effect]:
    """Re-grade everything as of `now`: criteria with `within_days` let grades fall with time."""
    return regrade_everything(session, rulebook, Regrade(trigger={"kind": "time"}, actor="system", now=now))
