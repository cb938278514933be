"""Keeping stored grades in step with the active rulebook."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.db import models as m
from app.domain.rulebook import Rulebook, RulebookMismatch
from app.grading import Effect, Regrade, regrade_everything

RULEBOOK_VERSION = "rulebook_version"


def active_rulebook_version(session: Session) -> str | None:
    """The version of the rulebook the stored grades were made under; None before the first
    start-up has recorded one."""
    row = session.get(m.Setting, RULEBOOK_VERSION)
    return row.value if row is not None else None


def expect_rulebook(session: Session, rulebook: Rulebook, *, record: bool) -> None:
    """Refuse (RulebookMismatch) to grade or check grades under a rulebook other than the
    active one: a command run from a shell configured unlike the servers would otherwise
    re-grade the whole database, and the servers' next start would re-grade it back. A
    database that records no rulebook yet has graded nothing under another, so with
    `record` it takes this one."""
    active = active_rulebook_version(session)
    if active is None:
        if record:
            session.add(m.Setting(key=RULEBOOK_VERSION, value=rulebook.version))
        return
    if active != rulebook.version:
        raise RulebookMismatch(rulebook.version, active)


def sync_rulebook(session: Session, rulebook: Rulebook, *, now: datetime) -> list[Effect]:
    """If the stored grades were made under another rulebook version, re-grade everything
    (trigger "rulebook") so every stored grade is again what the active rulebook says. Only
    where a rulebook is deployed (`rapport serve`, `rapport migrate`); other commands
    `expect_rulebook`."""
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
