"""API keys: random secrets shown once, stored as sha256, with scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import Database
from app.errors import Conflict, FieldError, Invalid, NotFound

if TYPE_CHECKING:
    from app.services.known_keys import KnownKeys

SCOPES = ("read", "write", "admin")
BOOTSTRAP_NAME = "bootstrap"
REPLACED_PREFIX = f"{BOOTSTRAP_NAME}-replaced-"  # the name a replaced bootstrap key is given


def reserved_name(name: str) -> bool:
    """Whether `name` is the bootstrap key's, or one its replacements are given: a key of
    that name made by hand would be taken for it (`ensure_bootstrap_key`)."""
    folded = name.strip().casefold()
    return folded == BOOTSTRAP_NAME or folded.startswith(REPLACED_PREFIX)


def _free_name(session: Session, name: str) -> str:
    """`name`, or `name-2`, `name-3`… where a key has it (one made before names were
    reserved: the rename failed on the unique name, and every command with it, exit 3)."""
    taken = set(session.scalars(select(m.ApiKey.name).where(m.ApiKey.name.startswith(name, autoescape=True))))
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise Invalid("scopes are a comma-separated list of read, write, admin", errors=[FieldError("scopes", f"unknown: {', '.join(unknown) or '(none given)'}")])
    return scopes


def create_key(session: Session, name: str, scopes: list[str], *, now: datetime, secret: str | None = None) -> tuple[m.ApiKey, str]:
    """Create a key; returns it and its secret (which is stored only as a hash)."""
    if session.scalar(select(m.ApiKey).where(m.ApiKey.name == name)) is not None:
        raise Conflict(f"a key named {name!r} exists already")
    secret = secret or "rk_" + secrets.token_urlsafe(32)
    key = m.ApiKey(name=name, secret_hash=hash_secret(secret), scopes=scopes, created_at=now)
    session.add(key)
    session.flush()
    return key, secret


@dataclass(frozen=True)
class Key:
    """The API key a request authenticated with (kept on `request.state.api_key`)."""

    id: int
    name: str
    scopes: tuple[str, ...]


# Columns, not the entity: every request runs this, and building an ORM row for it cost
# more than the query (the profile in docs/performance.md).
_BY_HASH = select(m.ApiKey.id, m.ApiKey.name, m.ApiKey.scopes, m.ApiKey.secret_hash, m.ApiKey.revoked_at).where(m.ApiKey.secret_hash == bindparam("digest"))


async def authenticate(db: Database, secret: str, known: KnownKeys | None = None) -> Key | None:
    """The live key whose secret this is, or None (unknown or revoked); from `known` if it
    remembers the key, else read on the running event loop (`Database.first_on_loop`: every
    request asks) and then remembered."""
    digest = hash_secret(secret)
    if known is not None:
        remembered = known.get(digest)
        if remembered is not None:
            return remembered
        generation = known.generation
    row = await db.first_on_loop(_BY_HASH, digest=digest)
    if row is None:
        return None
    key_id, name, scopes, secret_hash, revoked_at = row
    # The lookup is by a hash of a high-entropy secret; the constant-time compare guards
    # against a database collation or index doing anything clever with the string.
    if revoked_at is not None or not hmac.compare_digest(secret_hash, digest):
        return None
    key = Key(key_id, name, tuple(scopes))
    if known is not None:
        known.remember(digest, key, generation)
    return key


def has_scope(scopes: Sequence[str], scope: str) -> bool:
    return scope in scopes or "admin" in scopes


def ensure_bootstrap_key(session: Session, secret: str, *, now: datetime) -> m.ApiKey:
    """Make sure the key named bootstrap is a live admin key with exactly this secret
    (RAPPORT_BOOTSTRAP_KEY), and that no earlier bootstrap secret works: the key it
    replaces is revoked and renamed, also when this secret is an earlier one come back."""
    digest = hash_secret(secret)
    key = session.scalar(select(m.ApiKey).where(m.ApiKey.secret_hash == digest))
    current = session.scalar(select(m.ApiKey).where(m.ApiKey.name == BOOTSTRAP_NAME))
    if current is not None and current is not key:
        # The bootstrap secret was changed: the old one stops working.
        current.name = _free_name(session, f"{REPLACED_PREFIX}{current.id}")
        current.revoked_at = current.revoked_at or now
        session.flush()  # frees the name before another key takes it
    if key is None:
        key, _ = create_key(session, BOOTSTRAP_NAME, ["admin"], now=now, secret=secret)
        return key
    if key.name != BOOTSTRAP_NAME or key.revoked_at is not None or key.scopes != ["admin"]:
        key.name, key.revoked_at, key.scopes = BOOTSTRAP_NAME, None, ["admin"]
    return key


def list_keys(session: Session) -> Sequence[m.ApiKey]:
    return session.scalars(select(m.ApiKey).order_by(m.ApiKey.id)).all()


def revoke_key(session: Session, name: str, *, now: datetime) -> m.ApiKey:
    key = session.scalar(select(m.ApiKey).where(m.ApiKey.name == name))
    if key is None:
        raise NotFound(f"no key named {name!r}")
    key.revoked_at = key.revoked_at or now
    return key
