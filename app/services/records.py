"""What customers and projects share: unique external references, versioned updates."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import facts as repo
from app.db import models as m
from app.db.engine import Database
from app.errors import Conflict, FieldError, Invalid, NotFound, PreconditionFailed

Record = TypeVar("Record", m.Customer, m.Project)


def save_unique(session: Session, row: Any, value: Any | None, *, field: str = "external_ref") -> None:
    """Flush a new or changed row; a taken unique `field` (holding `value`) is a 409, not a 500."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        if value is not None:
            raise Conflict(f"{field} {value!r} is already used", errors=[FieldError(field, "already used by another record")]) from None
        raise


@dataclass(frozen=True)
class NoneMatch:
    """An If-None-Match on a write: it goes ahead only if the stored record is none of these
    (`any`: if there is none at all)."""

    any: bool
    versions: frozenset[tuple[str, int]]  # (id, version) of the tags naming this kind

    def matches(self, row_id: int, version: int) -> bool:
        """Whether the stored record at `version` is one the caller said not to write over."""
        return self.any or (str(row_id), version) in self.versions


Versions = frozenset[int]
"""The versions of a record an If-Match names: it may list several ETags, and the write goes
ahead if the stored record is at any of them (RFC 9110 §13.1.1). Empty: it names none."""


def check_version(row: Any, if_match: Versions | None) -> None:
    """412 unless the caller read the row at its current version (or sent no If-Match).
    The caller holds the row locked, so the version cannot move before the write."""
    if if_match is not None and row.version not in if_match:
        raise PreconditionFailed(f"the resource is at version {row.version}; re-read it and apply the change again")


def update_record(session: Session, model: type[Record], record_id: int, changes: dict[str, Any], *, if_match: Versions | None, now: datetime) -> Record:
    """Apply descriptive changes under a row lock, checking If-Match against the version."""
    row = session.scalar(select(model).where(model.id == record_id).with_for_update())
    if row is None:
        raise NotFound(f"no {model.__tablename__[:-1]} with id {record_id}")
    check_version(row, if_match)
    if changed := apply_changes(row, changes, now):
        save_unique(session, row, changed.get("external_ref"))
        if "external_ref" in changed:
            repo.ref_changed(session, row)
    return row


def upsert_by_ref(
    session: Session,
    model: type[Record],
    ref: str,
    fields: dict[str, Any],
    *,
    fixed: dict[str, Any],
    create: Callable[[], Record],
    if_match: Versions | None,
    now: datetime,
    named: dict[str, str] | None = None,
    if_none_match: NoneMatch | None = None,
) -> tuple[Record, bool]:
    """Create the record with this external_ref (True), or bring the stored one to `fields`
    (False): a full replacement of its descriptive fields, so a re-run sync is a no-op that
    leaves the version as it was. `fixed` fields cannot change (422, naming the field as the
    caller sent it: `named` maps a stored field to that name). `if_none_match` is checked
    against the stored record under its lock, so a concurrent create is seen."""
    row = locked_by_ref(session, model, ref)
    if row is None:
        if if_match is not None:
            raise PreconditionFailed(f"nothing has external_ref {ref!r}, so If-Match cannot match")
        try:
            return create(), True
        except Conflict:
            row = locked_by_ref(session, model, ref)  # a concurrent request created it first
            if row is None:
                raise
    if if_none_match is not None and if_none_match.matches(row.id, row.version):
        shown = "exists" if if_none_match.any else f"is still at version {row.version}"
        raise PreconditionFailed(f"If-None-Match: the record with external_ref {ref!r} {shown}; nothing was changed")
    check_version(row, if_match)
    named = named or {}
    wrong = []
    for name, value in fixed.items():
        if getattr(row, name) != value:
            subject = f"{name} is" if name in named else "is"  # say which field, when reported under another name
            wrong.append(FieldError(named.get(name, name), f"{subject} {getattr(row, name)!r} on the stored record and cannot change"))
    if wrong:
        raise Invalid(f"the record with external_ref {ref!r} cannot be changed that way", errors=wrong)
    if apply_changes(row, fields, now):
        session.flush()
    return row, False


def apply_changes(row: Any, fields: dict[str, Any], now: datetime, *, same: Callable[[Any, Any], bool] = operator.eq) -> dict[str, Any]:
    """Set the `fields` whose values differ from the row's (by `same`), and return them. A
    write that changes nothing (a re-run sync, a PATCH of the values held) keeps the
    version, so the ETags others hold stay valid, and `updated_at`."""
    changes = {name: value for name, value in fields.items() if not _same_field(name, getattr(row, name), value, same)}
    for name, value in changes.items():
        setattr(row, name, value)
    if changes:
        row.version += 1
        row.updated_at = now
    return changes


# Fields whose values are sets sent as lists: another order is no change, and the stored
# order stays (an ERP that exports tags in no fixed order moved the version, and made every
# other caller's If-Match stale, each night: a hunt's find).
UNORDERED = frozenset({"tags"})


def _same_field(name: str, held: Any, value: Any, same: Callable[[Any, Any], bool]) -> bool:
    if name in UNORDERED and isinstance(held, list) and isinstance(value, list):
        return len(held) == len(value) and set(held) == set(value)
    return same(held, value)


def locked_by_ref(session: Session, model: type[Record], ref: str) -> Record | None:
    """The record with this external_ref, if any, locked for this transaction and read as it
    now stands (not as the session last saw it)."""
    return session.scalar(select(model).where(model.external_ref == ref).with_for_update().execution_options(populate_existing=True))


_READS = {
    (model, column): select(model.__table__).where(model.__table__.c[column] == bindparam("value"))
    for model in (m.Customer, m.Project)
    for column in ("id", "external_ref")
}


async def read_alone(db: Database, model: type[Record], column: str, value: int | str) -> Any:
    """The customer or project whose `column` (id or external_ref) is `value`, as its stored
    columns, for an answer that changes nothing: a Core row reads like the entity
    (row.name, row.grade) at a third of the cost of loading the entity. Read with no
    session or transaction around it, on the event loop (`Database.first_on_loop`), for an
    answer made of this row alone (a customer's), which one statement reads consistently:
    on SQLite 29 against 88 µs of CPU a read in a session (docs/performance.md, "The
    read-alone round")."""
    return found(await db.first_on_loop(_READS[(model, column)], value=value), model, column, value)


def found(row: Any, model: type[Record], column: str, value: int | str) -> Any:
    """`row`, the one whose `column` is `value`; if there is none (None), the 404 that names it."""
    if row is None:
        shown = repr(value) if isinstance(value, str) else value
        raise NotFound(f"no {model.__tablename__[:-1]} with {column} {shown}")
    return row


def get_by_ref(session: Session, model: type[Record], ref: str) -> Record:
    row = session.scalar(select(model).where(model.external_ref == ref))
    if row is None:
        raise NotFound(f"no {model.__tablename__[:-1]} with external_ref {ref!r}")
    return row
