"""The keys a process remembers (app/services/known_keys.py): a remembered key answers without
being read again, and any change to the keys, by whoever makes it, makes the process forget
them all — on PostgreSQL when its listener hears the notice (while it is away nothing is
remembered), on SQLite at the next request, which reads the stamp the keys' triggers renew."""

from __future__ import annotations

import socket
import sqlite3
import threading
from datetime import datetime, timezone
from typing import Iterator
from uuid import uuid4

import pytest
from sqlalchemy import text

from app.db import models as m
from app.db.engine import Database, make_engine
from app.services import known_keys
from app.services.keys import Key, create_key, hash_secret, revoke_key
from tests.conftest import authenticated, is_postgres, wait_until

NOW = datetime(2026, 12, 5, 10, 30, tzinfo=timezone.utc)


@pytest.fixture
def pg(db: Database) -> Database:
    if not is_postgres(str(db.engine.url)):
        pytest.skip("the database notifies listeners on PostgreSQL only")
    return db


@pytest.fixture
def lite(db: Database) -> Database:
    if is_postgres(str(db.engine.url)):
        pytest.skip("SQLite only")
    return db


@pytest.fixture
def known(db: Database) -> Iterator[known_keys.KnownKeys]:
    keys = known_keys.KnownKeys.of(db.engine)
    assert keys is not None
    stop = keys.start()
    wait_until(keys.trusted)  # PostgreSQL: once it listens
    yield keys
    stop()


def _new_key(db: Database, known: known_keys.KnownKeys) -> tuple[str, str]:
    """A new key, once `known` has heard of its creation (which, like any change, forgets
    what it remembered)."""
    name = f"k-{uuid4().hex[:8]}"
    heard = known.generation
    with db.session(write=True) as session:
        _, secret = create_key(session, name, ["read"], now=NOW)
    wait_until(lambda: known.heard_since(heard))
    return name, secret


def _reads(db: Database) -> list[str]:
    """Count the key reads `authenticate` sends (they run past SQLAlchemy's events, so watch
    `Database.first_on_loop`)."""
    seen: list[str] = []
    first = db.first_on_loop

    async def counted(statement, **params):  # noqa: ANN001, ANN202
        seen.append(params["digest"])
        return await first(statement, **params)

    db.first_on_loop = counted  # type: ignore[method-assign]
    return seen


def test_each_engine_remembers_keys_its_own_way(db: Database) -> None:
    keys = known_keys.KnownKeys.of(db.engine)
    assert isinstance(keys, known_keys.ListenedKeys if is_postgres(str(db.engine.url)) else known_keys.StampedKeys)
    assert known_keys.KnownKeys.of(make_engine("sqlite://")) is None  # in memory: no other connection sees it


def test_a_remembered_key_is_not_read_again(known: known_keys.KnownKeys, db: Database) -> None:
    name, secret = _new_key(db, known)
    reads = _reads(db)
    try:
        first, again = authenticated(db, secret, known), authenticated(db, secret, known)
    finally:
        del db.first_on_loop
    assert isinstance(first, Key) and first.name == name and again == first
    assert reads == [hash_secret(secret)]  # read once; the digest, never the secret, is kept


def test_a_revoked_key_is_forgotten_when_the_database_says_so(known: known_keys.KnownKeys, db: Database) -> None:
    name, secret = _new_key(db, known)
    assert authenticated(db, secret, known) is not None
    assert known.get(hash_secret(secret)) is not None

    with db.session(write=True) as session:  # another process, as far as `known` can tell
        revoke_key(session, name, now=NOW)

    wait_until(lambda: known.get(hash_secret(secret)) is None, seconds=2)
    assert authenticated(db, secret, known) is None


def test_any_change_to_the_keys_by_sql_is_heard(known: known_keys.KnownKeys, db: Database) -> None:
    _, secret = _new_key(db, known)
    assert authenticated(db, secret, known) is not None
    with db.engine.begin() as conn:  # an operator's SQL, not the service
        conn.execute(text("UPDATE api_keys SET scopes = :s WHERE secret_hash = :h"), {"s": '["admin"]', "h": hash_secret(secret)})
    wait_until(lambda: known.get(hash_secret(secret)) is None, seconds=2)
    assert authenticated(db, secret, known).scopes == ("admin",)


def test_unknown_and_revoked_secrets_are_not_remembered(known: known_keys.KnownKeys, db: Database) -> None:
    name, secret = _new_key(db, known)
    before = known.generation
    with db.session(write=True) as session:
        revoke_key(session, name, now=NOW)
    wait_until(lambda: known.heard_since(before))  # the revocation was heard
    reads = _reads(db)
    try:
        for _ in range(2):
            assert authenticated(db, secret, known) is None
            assert authenticated(db, "rk_" + uuid4().hex, known) is None
    finally:
        del db.first_on_loop
    assert len(reads) == 4


def test_many_threads_ask_at_once(known: known_keys.KnownKeys, db: Database) -> None:
    """Requests ask from the event loop and from every worker thread at the same time."""
    _, secret = _new_key(db, known)
    key = authenticated(db, secret, known)
    digest = hash_secret(secret)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(5_000):
                assert known.get(digest) == key
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_key_read_while_a_change_was_heard_is_not_remembered() -> None:
    keys = known_keys.ListenedKeys(lambda: None)
    keys._listening = -1  # as if listening, without a connection  # noqa: SLF001
    key = Key(1, "k", ("read",))
    generation = keys.generation
    keys.forget()  # a notice came between the read's start and its end
    keys.remember("digest", key, generation)
    assert keys._keys == {}  # noqa: SLF001
    keys.remember("digest", key, keys.generation)
    assert keys._keys["digest"][0] == key  # noqa: SLF001


def test_nothing_is_remembered_while_the_listener_is_away(known: known_keys.KnownKeys, pg: Database) -> None:
    _, secret = _new_key(pg, known)
    assert authenticated(pg, secret, known) is not None
    before = known.generation
    with pg.engine.connect() as conn:
        ended = conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = :q AND pid <> pg_backend_pid()"), {"q": f"LISTEN {known_keys.CHANNEL}"}
        ).scalars().all()
    assert ended and all(ended)
    wait_until(lambda: known.get(hash_secret(secret)) is None, seconds=3)  # forgotten: the notices may be lost
    # It stops listening, listens again on its own (each forgets), and remembers again from then on.
    wait_until(lambda: known.generation >= before + 2 and known.listening, seconds=5)
    assert authenticated(pg, secret, known) is not None
    assert known.get(hash_secret(secret)) is not None


def test_a_key_is_forgotten_after_max_age_whatever_happens() -> None:
    now = [100.0]
    keys = known_keys.ListenedKeys(lambda: None, max_age=60, clock=lambda: now[0])
    quiet, peer = socket.socketpair()  # nothing is ever sent on it: no notice waits
    with quiet, peer:
        keys._listening = quiet.fileno()  # noqa: SLF001
        key = Key(1, "k", ("read",))
        keys.remember("digest", key, keys.generation)
        now[0] += 59.9
        assert keys.get("digest") == key
        now[0] += 0.2
        assert keys.get("digest") is None


def test_the_channel_is_the_one_the_migration_notifies(pg: Database) -> None:
    with pg.engine.connect() as conn:
        body = conn.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'notify_api_keys_changed'")).scalar_one()
    assert f"pg_notify('{known_keys.CHANNEL}'" in body
    assert m.ApiKey.__tablename__ == "api_keys"


def test_sqlite_a_revocation_by_another_process_is_refused_at_the_next_request(known: known_keys.KnownKeys, lite: Database) -> None:
    name, secret = _new_key(lite, known)
    assert authenticated(lite, secret, known) is not None
    assert known.get(hash_secret(secret)) is not None
    other = Database(make_engine(str(lite.engine.url)))  # `rapport keys revoke`, say
    try:
        with other.session(write=True) as session:
            revoke_key(session, name, now=NOW)
    finally:
        other.dispose()

    assert known.get(hash_secret(secret)) is None  # no waiting: the next request reads the stamp
    assert authenticated(lite, secret, known) is None


def test_sqlite_without_a_stamp_nothing_is_remembered(known: known_keys.KnownKeys, lite: Database) -> None:
    _, secret = _new_key(lite, known)
    with lite.engine.begin() as conn:  # a database not migrated that far, or the row deleted
        conn.execute(text("DELETE FROM service_state WHERE key = :k"), {"k": known_keys.STAMP})
    reads = _reads(lite)
    try:
        assert authenticated(lite, secret, known) is not None and authenticated(lite, secret, known) is not None
        assert len(reads) == 2 and known.get(hash_secret(secret)) is None
        _new_key(lite, known)  # any change to the keys stamps them again
        assert authenticated(lite, secret, known) is not None and authenticated(lite, secret, known) is not None
        assert len(reads) == 3
    finally:
        del lite.first_on_loop


def test_sqlite_a_stamp_that_cannot_be_read_is_tried_again_later() -> None:
    now = [100.0]
    attempts: list[int] = []

    def connect() -> sqlite3.Connection:
        attempts.append(1)
        raise sqlite3.OperationalError("unable to open database file")

    keys = known_keys.StampedKeys(connect, clock=lambda: now[0])
    assert not keys.trusted() and not keys.trusted()
    assert len(attempts) == 1  # not once per request while it fails
    now[0] += known_keys.StampedKeys.RETRY_AFTER
    assert not keys.trusted() and len(attempts) == 2


def test_sqlite_the_stamp_is_the_one_the_migration_renews(lite: Database) -> None:
    with lite.engine.connect() as conn:
        triggers = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'api_keys'")).all())
    assert sorted(triggers) == ["api_keys_stamp_delete", "api_keys_stamp_insert", "api_keys_stamp_update"]
    assert all(f"'{known_keys.STAMP}'" in sql for sql in triggers.values())
