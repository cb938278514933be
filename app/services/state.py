"""Keeping stored grades in step with the active rulebook.

The database records the active rulebook: its version (`rulebook_version`, named by every
history row), the digest of its content (`rulebook_digest`, which every write that grades
compares with its own: `grading.in_force`), and every version it has made active with its
digest (`rulebook_digests`), so that a version names one content for good: a rulebook
changed without a new version is refused, not taken for the one recorded."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db import models as m
from app.domain.rulebook import Rulebook, RulebookMismatch
from app.errors import ReleaseMismatch
from app.grading import ACTIVE_DIGEST, GRADING, RULEBOOK_VERSION, SYSTEM, TIME, Effect, Regrade, active_digest, regrade_everything

RULEBOOK_DIGESTS = "rulebook_digests"
GRADING_RELEASE = "grading_release"  # the `GRADING` the stored grades were made by


def active_rulebook_version(session: Session) -> str | None:
    """The version of the rulebook the stored grades were made under; None before the first
    start-up has recorded one."""
    return _get(session, RULEBOOK_VERSION)


def _digests(session: Session) -> dict[str, str]:
    recorded = _get(session, RULEBOOK_DIGESTS)
    return json.loads(recorded) if recorded is not None else {}


def _check_content(rulebook: Rulebook, digests: dict[str, str]) -> None:
    """Refuse a rulebook whose version the database recorded with other content."""
    recorded = digests.get(rulebook.version)
    if recorded is not None and recorded != rulebook.digest:
        raise RulebookMismatch(rulebook.version, rulebook.version, reused=True)


def _get(session: Session, key: str) -> str | None:
    row = session.get(m.Setting, key)
    return row.value if row is not None else None


def _set(session: Session, key: str, value: str) -> None:
    row = session.get(m.Setting, key)
    if row is None:
        session.add(m.Setting(key=key, value=value))
    else:
        row.value = value


def _record(session: Session, rulebook: Rulebook, digests: dict[str, str]) -> None:
    """Record `rulebook` as the active one."""
    _set(session, RULEBOOK_VERSION, rulebook.version)
    _set(session, ACTIVE_DIGEST, active_digest(rulebook))
    _set(session, RULEBOOK_DIGESTS, json.dumps({**digests, rulebook.version: rulebook.digest}, sort_keys=True, ensure_ascii=False))


def expect_rulebook(session: Session, rulebook: Rulebook, *, record: bool) -> None:
    """Refuse (RulebookMismatch) to grade or check grades under a rulebook other than the
    active one: a command run from a shell configured unlike the servers would otherwise
    re-grade the whole database, and the servers' next start would re-grade it back. A
    database that records no rulebook yet has graded nothing under another, so with
    `record` it takes this one (and one that records no digest yet, from before digests
    were kept, takes this one's)."""
    active = active_rulebook_version(session)
    if active is not None and active != rulebook.version:
        raise RulebookMismatch(rulebook.version, active)
    digests = _digests(session)
    _check_content(rulebook, digests)
    release = _get(session, GRADING_RELEASE)
    if release != GRADING:
        if _has_grades(session):
            raise _release_mismatch(release)
        if record:  # nothing graded yet: this release's grading is the one in force
            _set(session, GRADING_RELEASE, GRADING)
            if active is not None:
                _set(session, ACTIVE_DIGEST, active_digest(rulebook))
    if record and (active is None or rulebook.version not in digests):
        _record(session, rulebook, digests)


def sync_rulebook(session: Session, rulebook: Rulebook, *, now: datetime) -> list[Effect] | None:
    """If the stored grades were made under another rulebook version, re-grade everything
    (trigger "rulebook") so every stored grade is again what the active rulebook says, and
    return the grades that changed; None if nothing was re-graded: `rulebook` was the active
    one already, or none was (a new database, which it only records). Only
    where a rulebook is deployed (`rapport serve`, `rapport migrate`); other commands
    `expect_rulebook`. A rulebook whose version was recorded with other content is refused
    (RulebookMismatch): its history rows would name one version for two rulebooks.

    On PostgreSQL the switch holds the customers and projects tables against writers (reads
    go on) from before it re-grades until it commits: a write that locked or inserted such
    a row first finishes first and is re-graded by the switch; one that comes later waits,
    then finds the new rulebook active and, if its process grades under the old one, stores
    nothing (`grading.in_force`). SQLite's writers take turns already."""
    digests = _digests(session)
    _check_content(rulebook, digests)
    active = active_rulebook_version(session)
    if active == rulebook.version:
        if rulebook.version not in digests:  # recorded before digests were kept
            _record(session, rulebook, digests)
        return None
    if active is None:  # a new database: nothing graded yet, and nothing switched
        _record(session, rulebook, digests)
        return None
    _hold_against_writers(session)
    job = Regrade(trigger={"kind": "rulebook", "from": active, "to": rulebook.version}, actor=SYSTEM, now=now, in_force=True)  # it is the switch
    effects = regrade_everything(session, rulebook, job)
    _record(session, rulebook, digests)
    return effects


def sync_grading(session: Session, rulebook: Rulebook, *, now: datetime, regraded: bool) -> list[Effect] | None:
    """If the stored grades were made by another release's grading (`GRADING`; none
    recorded: a release from before it was), re-grade everything (trigger "release") and
    return the grades that changed; None if there was nothing to do. `regraded`: a rulebook
    switch has just re-graded everything with this release's grading. A database with no
    grades yet only records it. Where a rulebook is deployed (`serve`, `migrate`), after
    `sync_rulebook`, and held against writers as it is."""
    recorded = _get(session, GRADING_RELEASE)
    if recorded == GRADING:
        return None
    regrade = _has_grades(session) and not regraded
    if regrade:
        _hold_against_writers(session)
    # Recorded before a re-grade, under the tables' lock: a process of the release before
    # that waited for it then finds its grading no longer in force.
    _set(session, ACTIVE_DIGEST, active_digest(rulebook))
    _set(session, GRADING_RELEASE, GRADING)
    if not regrade:
        return None
    return regrade_everything(session, rulebook, Regrade(trigger={"kind": "release", "from": recorded, "to": GRADING}, actor=SYSTEM, now=now, in_force=True))


def _hold_against_writers(session: Session) -> None:
    """Before re-grading everything for a switch (of rulebook or of release): on PostgreSQL,
    hold the customers and projects tables against writers until the commit (reads go on;
    `sync_rulebook` says why). SQLite's writers take turns already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE customers, projects IN EXCLUSIVE MODE"))


def _has_grades(session: Session) -> bool:
    return session.query(m.Customer.id).limit(1).first() is not None


def _release_mismatch(recorded: str | None) -> ReleaseMismatch:
    made_by = f"a release from before {GRADING}" if recorded is None else f"release {recorded!r}"
    return ReleaseMismatch(
        f"the stored grades were made by {made_by}, and this one grades differently ({GRADING!r}): "
        "run `rapport migrate` with this release first (it re-grades everything); nothing was changed"
    )


def regrade_for_time(session: Session, rulebook: Rulebook, *, now: datetime, clock: Callable[[], datetime] | None = None) -> list[Effect]:
    """Re-grade everything as of `now`: criteria with `within_days` let grades fall with time.
    With `clock`, each round of subjects is graded as of the clock once its rows are held
    (`Regrade.clock`): what `rapport regrade` does, beside the writes of a live service."""
    return regrade_everything(session, rulebook, Regrade(trigger=TIME, actor=SYSTEM, now=now, clock=clock))
