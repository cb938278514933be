"""API keys: random secrets shown once, stored as sha256, with scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.errors import Conflict, FieldError, Invalid, NotFound

SCOPES = ("read", "write", "admin")
BOOTSTRAP_NAME = "bootstrap"


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


def authenticate(session: Session, secret: str) -> m.ApiKey | None:
    digest = hash_secret(secret)
    key = session.scalar(select(m.ApiKey).where(m.ApiKey.secret_hash == digest))
    # The lookup is by a hash of a high-entropy secret; the constant-time compare guards
    # against a database collation or index doing anything clever with the string.
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.secret_hash, digest):
        return None
    return key


def has_scope(scopes: Sequence[str], scope: str) -> bool:
    return scope in scopes or "admin" in scopes


def ensure_bootstrap_key(session: Session, secret: str, *, now: datetime) -> m.ApiKey:
    """Make sure an admin key with exactly this secret exists (RAPPORT_BOOTSTRAP_KEY)."""
    digest = hash_secret(secret)
    key = session.scalar(select(m.ApiKey).where(m.ApiKey.secret_hash == digest))
    if key is not None:
        if key.revoked_at is not None or "admin" not in key.scopes:
            key.revoked_at, key.scopes = None, ["admin"]
        return key
    old = session.scalar(select(m.ApiKey).where(m.ApiKey.name == BOOTSTRAP_NAME))
    if old is not None:
        # The bootstrap secret was changed: the old one stops working.
        old.name = f"{BOOTSTRAP_NAME}-replaced-{old.id}"
        old.revoked_at = old.revoked_at or now
        session.flush()
    key, _ = create_key(session, BOOTSTRAP_NAME, ["admin"], now=now, secret=secret)
    return key


def list_keys(session: Session) -> Sequence[m.ApiKey]:
    return session.scalars(select(m.ApiKey).order_by(m.ApiKey.id)).all()


def revoke_key(session: Session, name: str, *, now: datetime) -> m.ApiKey:
    key = session.scalar(select(m.ApiKey).where(m.ApiKey.name == name))
    if key is None:
        raise NotFound(f"no key named {name!r}")
    key.revoked_at = key.revoked_at or now
    return key
