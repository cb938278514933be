"""Subjects' event logs: read from the database, and kept between writes so that grading
need not read them back for every event.

Grading evaluates a subject from its whole log (design.md). Reading back the logs of the
subjects a write touches was the largest cost of a write: a 500-event batch into a
database of 10,000 events re-read some 16,000 events to grade the ~400 subjects it
touched (docs/performance.md, "The log round"). So each process keeps the logs it last
graded (`LogCache`), each labelled with its subject's `log_stamp`: a value in the
subject's row that every write changing the log replaces with a new random one, in the
same transaction (app/grading.py writes it with the grade).

A kept log is used only while the row still carries the stamp it was kept with; a log
changed since — by another process, or by a write that rolled back — is read again. The
database stays the only truth: the memory only saves reads, and a process that keeps
nothing (`log_cache_events = 0`) grades the same. Random, not counted: a counter starts
again at the same values when ids are used again (a database emptied, or restored from a
backup), and a process would take its old logs for the new ones.

Why a stamp can be trusted: a write changes a customer's log only while it holds that
customer's row lock, and a project's log only while it holds the lock of the project's
owner (app/services/events.py locks both before it inserts); it stamps the row before it
commits, and that UPDATE needs the subject's own row lock. So for a subject a write holds
locked — a customer it grades, a project it grades, a project of an owner it grades — the
stamp and the log it reads agree, and only such logs are published, after the commit,
labelled with the stamp the write committed. (On SQLite every write holds the database's
one write lock: the same, more so.)
"""

from __future__ import annotations

import os
import random
from typing import Any, Iterable, Mapping

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import ByIds
from app.db.log_cache import CACHE, ON_COMMIT, Key, Log, LogCache
from app.domain import facts as f

E, R = m.Event.__table__, m.Retraction.__table__
# Stamps come from a generator of their own, seeded by the operating system when the
# module is loaded and again in a forked child: `random`'s shared one may be seeded by
# whoever runs the process (Hypothesis does, per example), and its stamps would repeat.
# Not `secrets`: a system call per write, ~10 µs of a served POST's CPU under load.
_STAMPS = random.Random()
os.register_at_fork(after_in_child=_STAMPS.seed)


def log_select(*where: Any) -> Select:
    """Events with whether each is retracted, in id order. Plain columns, not ORM entities:
    grading reads many events and changes none of them."""
    return select(E.c.id, E.c.type, E.c.occurred_at, E.c.customer_id, E.c.project_id, E.c.attributes, R.c.id).outerjoin(R, R.c.event_id == E.c.id).where(*where).order_by(E.c.id)


_LOG_OF = {"customer": ByIds.of(log_select, E.c.customer_id), "project": ByIds.of(log_select, E.c.project_id)}


def events(rows: Iterable[Any]) -> Log:
    """The events of rows of a `log_select`."""
    return tuple(
        f.Event(id=id_, type=type_, occurred_at=at, customer_id=cid, project_id=pid, attributes=attrs or {}, retracted=r is not None)
        for id_, type_, at, cid, pid, attrs, r in rows
    )


def events_of(session: Session, statement: ByIds, key: str, ids: Iterable[int], **params: Any) -> dict[int, list[f.Event]]:
    """The events `statement` selects for these subjects (its `ids`), grouped by `key`
    (customer_id or project_id), in a few queries however many subjects are asked for."""
    out: dict[int, list[f.Event]] = {}
    for e in events(statement.rows(session, sorted(set(ids)), **params)):
        out.setdefault(getattr(e, key), []).append(e)
    return out


class WriteLogs:
    """The logs one write's grading reads: a kept log where its stamp still holds (with
    what this write changed in it), the others from the database."""

    def __init__(self, session: Session, changed: Iterable[f.Event] = (), *, keep: bool = True):
        """`keep=False`: neither use nor fill the process's logs (a pass over every subject
        would only push out the ones that writes use, and hold every log until it commits)."""
        self.session = session
        self.cache: LogCache | None = session.info.get(CACHE) if keep else None
        # The events this write stored or retracted, as they now stand, by the logs they are
        # in (known even without a cache: those logs are stamped anew all the same, for the
        # other processes' caches).
        self._changes: dict[Key, list[f.Event]] = {}
        for e in changed:
            for key in (("customer", e.customer_id), ("project", e.project_id)):
                if key[1] is not None:
                    self._changes.setdefault(key, []).append(e)
        # One new stamp for every log this write changes (never 0, which new rows carry).
        self._stamp = _STAMPS.getrandbits(62) + 1
        # key -> (the stamp before this write, the log as this write leaves it)
        self._read: dict[Key, tuple[int, Log]] = {}
        if self.cache is not None:
            session.info.setdefault(ON_COMMIT, []).append(self._publish)

    def changed(self) -> set[Key]:
        """The logs this write changed."""
        return set(self._changes)

    def stamp(self, key: Key, stamp: int) -> int:
        """The stamp `key`'s row is to carry after this write, if it carries `stamp` now."""
        return self._stamp if key in self._changes else stamp

    def of(self, subject: str, stamps: Mapping[int, int]) -> dict[int, Log]:
        """The logs of these subjects ({id: the log_stamp its row carries}), each read once per write."""
        out: dict[int, Log] = {}
        missing: list[int] = []
        for id_, stamp in stamps.items():
            key = (subject, id_)
            if key in self._read:
                out[id_] = self._read[key][1]
                continue
            kept = self.cache.get(key, stamp) if self.cache is not None else None
            if kept is None:
                missing.append(id_)
                continue
            changes = self._changes.get(key)
            out[id_] = _merge(kept, changes) if changes else kept
            self._read[key] = (stamp, out[id_])
        if missing:
            loaded = events_of(self.session, _LOG_OF[subject], f"{subject}_id", missing)
            for id_ in missing:
                out[id_] = tuple(loaded.get(id_, ()))
                self._read[(subject, id_)] = (stamps[id_], out[id_])
        return out

    def known(self, subject: str, stamps: Mapping[int, int]) -> dict[int, Log]:
        """The logs of those of these subjects ({id: the log_stamp its row carries}) that this
        write has read, or that the process keeps under that stamp; nothing is read or kept.
        For subjects the write does not hold locked: a log kept under the stamp a read of the
        row found is the log committed with that row (see the module's docstring)."""
        out: dict[int, Log] = {}
        for id_, stamp in stamps.items():
            key = (subject, id_)
            if key in self._read:
                out[id_] = self._read[key][1]
            elif self.cache is not None and (log := self.cache.get(key, stamp)) is not None:
                out[id_] = log
        return out

    def _publish(self) -> None:
        assert self.cache is not None
        self.cache.put((key, self.stamp(key, stamp), log) for key, (stamp, log) in self._read.items())


def _merge(kept: Log, changes: list[f.Event]) -> Log:
    """A kept log with this write's new and retracted events in it, in id order."""
    if not kept or min(e.id for e in changes) > kept[-1].id:  # only new events: the usual case
        return kept + tuple(sorted(changes, key=lambda e: e.id))
    by_id = {e.id: e for e in kept}
    by_id.update((e.id, e) for e in changes)
    return tuple(by_id[i] for i in sorted(by_id))
