"""The API-key read every request makes (`Database.first`, `keys.authenticate`): on each
engine it gives the values SQLAlchemy's own execution gives, and tells a live key from a
revoked or unknown one."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

from sqlalchemy import bindparam, select

from app.db import models as m
from app.db.engine import Database
from app.services.keys import Key, authenticate, create_key, revoke_key

NOW = datetime(2026, 12, 5, 4, 30, tzinfo=timezone.utc)
ROW = select(m.ApiKey.id, m.ApiKey.name, m.ApiKey.scopes, m.ApiKey.created_at, m.ApiKey.revoked_at).where(m.ApiKey.name == bindparam("name"))


def _key(db: Database, scopes: list[str], *, revoked: bool = False) -> tuple[str, str]:
    name = f"k-{uuid4().hex[:8]}"
    with db.session(write=True) as session:
        _, secret = create_key(session, name, scopes, now=NOW)
        if revoked:
            session.flush()
            revoke_key(session, name, now=NOW)
    return name, secret


def test_first_gives_the_values_a_session_gives(db: Database) -> None:
    name, _ = _key(db, ["read", "write"], revoked=True)
    with db.session(write=False) as session:
        expected = tuple(session.execute(ROW, {"name": name}).one())

    row = db.first(ROW, name=name)

    assert row == expected
    _, _, scopes, created_at, revoked_at = row
    assert scopes == ["read", "write"]  # decoded JSON, not its text
    assert created_at == NOW and revoked_at == NOW  # aware datetimes, not strings
    assert db.first(ROW, name="no such key") is None


def test_authenticate_knows_live_revoked_and_unknown_keys(db: Database) -> None:
    live_name, live = _key(db, ["read"])
    _, revoked = _key(db, ["admin"], revoked=True)

    key = authenticate(db, live)

    assert isinstance(key, Key) and key.name == live_name and key.scopes == ("read",)
    assert authenticate(db, revoked) is None
    assert authenticate(db, "rk_" + uuid4().hex) is None
