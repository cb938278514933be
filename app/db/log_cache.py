"""The event logs a process keeps between writes, and their publication when a write
commits. Why they can be trusted, and how they are used: app/db/logs.py."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.domain.facts import Event

Log = tuple[Event, ...]
Key = tuple[str, int]  # ("customer" | "project", id)


class LogCache:
    """The logs one process keeps: at most about `max_events` events in all, the least
    recently used given up first. Shared by the threads of the process."""

    def __init__(self, max_events: int):
        self.max_events = max_events
        self._logs: OrderedDict[Key, tuple[int, Log]] = OrderedDict()
        self._size = 0  # events kept, plus one per log (so empty logs count too)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._logs)

    def get(self, key: Key, stamp: int) -> Log | None:
        """The kept log of `key`, if it was kept with `stamp`."""
        with self._lock:
            kept = self._logs.get(key)
            if kept is None or kept[0] != stamp:
                return None
            self._logs.move_to_end(key)
            return kept[1]

    def put(self, entries: Iterable[tuple[Key, int, Log]]) -> None:
        with self._lock:
            for key, stamp, log in entries:
                old = self._logs.pop(key, None)
                if old is not None:
                    self._size -= len(old[1]) + 1
                if len(log) < self.max_events:
                    self._logs[key] = (stamp, log)
                    self._size += len(log) + 1
            while self._size > self.max_events:
                _, (_, log) = self._logs.popitem(last=False)
                self._size -= len(log) + 1


CACHE = "rapport.log_cache"
ON_COMMIT = "rapport.on_commit"


def keep_logs(factory: sessionmaker, cache: LogCache | None) -> None:
    """Make the write sessions of `factory` use `cache`, and publish to it what a write
    read and changed once (and only if) the write commits."""
    if cache is None or cache.max_events <= 0:
        return
    factory.configure(info={CACHE: cache})

    @event.listens_for(factory, "after_commit")
    def _publish(session: Session) -> None:
        for publish in session.info.pop(ON_COMMIT, ()):
            publish()

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(ON_COMMIT, None)
