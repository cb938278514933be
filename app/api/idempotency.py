"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header): the first answer to a
keyed request is stored and replayed to retries; the same key with another body is 422,
and 409 while the first request is still in flight.

The key's record is claimed in its own short transaction before the work starts (so a
concurrent retry sees it). The answer is stored in the work's own write transaction when
the work hands it over there (`keep`), else in a transaction of its own after the work."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.api.deps import Caller, Context, header_parameter
from app.api.problems import app_error_response
from app.db import models as m
from app.db.engine import run as run_statement
from app.errors import AppError, Conflict, FieldError, Invalid

log = logging.getLogger("rapport")

MAX_KEY_LENGTH = 255
REPLAYED_HEADERS = ("location", "etag")
# The header on a route that reads it (`key_of`), given as the route's `openapi_extra`.
HEADER_PARAMETER = header_parameter("Idempotency-Key", "Idempotency-Key", "retry-safe: the same key and body get the first answer again (kept ≥ 24 h)")


def key_of(request: Request) -> str | None:
    """The request's Idempotency-Key (checked by `run`). Read from the request, not bound as a
    FastAPI `Header` parameter: FastAPI validated that through pydantic on every request,
    with or without the header (with the route's context dependency, 142,000 of an event
    POST's 4.39 M instructions, bench/instructions.py). Sent on two lines, it is refused
    (422): the second used to be ignored, so a retry carrying only it counted twice, as a
    query parameter given twice is refused (app/api/gate.py)."""
    keys = request.headers.getlist("idempotency-key")
    if len(keys) > 1:
        raise Invalid("the Idempotency-Key header is not valid", errors=[FieldError("Idempotency-Key", f"given {len(keys)} times: send it once", "header")])
    return keys[0] if keys else None


# Every keyed request runs these: prebuilt once and run as Core on the session's connection.
# Built anew and run through the ORM, they cost a keyed event POST ~2 ms more CPU on SQLite
# (5.0 against 3.0 ms, docs/performance.md).
_RECORDS = m.IdempotencyRecord.__table__
_THIS_KEY = (_RECORDS.c.api_key_id == bindparam("record_key_id")) & (_RECORDS.c.key == bindparam("record_key"))
# Expired records are deleted by the keyed requests themselves, a few at a time: the oldest
# `PRUNED_AT_ONCE`, and this key's own once it is read expired (`_claim`). All at once, the
# first keyed request after a quiet spell deleted the whole backlog in its claim's
# transaction, and on SQLite, whose one write lock that holds, every write of the process
# waited: 4.4 s behind 500,000 records (a hunt's find). One statement for both, joined by
# OR, made PostgreSQL scan the whole table (40 ms at 300,000 records, a review's find); this
# one is a range of the `created_at` index. On PostgreSQL records another claim is deleting
# are left to it (SKIP LOCKED).
PRUNED_AT_ONCE = 100
_OLDEST = select(_RECORDS.c.id).where(_RECORDS.c.created_at < bindparam("before")).order_by(_RECORDS.c.created_at).limit(PRUNED_AT_ONCE)
_EXPIRED = {
    "postgresql": delete(_RECORDS).where(_RECORDS.c.id.in_(_OLDEST.with_for_update(skip_locked=True).scalar_subquery())),
    "sqlite": delete(_RECORDS).where(_RECORDS.c.id.in_(_OLDEST.scalar_subquery())),
}
_LOCKED = select(
    _RECORDS.c.fingerprint,
    _RECORDS.c.status_code,
    _RECORDS.c.response_body,
    _RECORDS.c.response_type,
    _RECORDS.c.response_headers,
    _RECORDS.c.locked_until,
    _RECORDS.c.created_at,
).where(_THIS_KEY).with_for_update()
_THIS_ONE = delete(_RECORDS).where(_THIS_KEY)
_LEASE = update(_RECORDS).where(_THIS_KEY).values(locked_until=bindparam("until", type_=_RECORDS.c.locked_until.type))
# The answer goes on this request's claim only while it is still its own: unanswered, with
# the lease it took. A request that outlived its lease (it waited on a row lock behind a
# long batch) had its key taken over by a retry, and the two both recorded the event; the
# retry's answer then overwrote the first's (a hunt's find, across two processes).
_ANSWER = (
    update(_RECORDS)
    .where(_THIS_KEY, _RECORDS.c.status_code.is_(None), _RECORDS.c.locked_until == bindparam("lease", type_=_RECORDS.c.locked_until.type))
    .values({name: bindparam(f"answer_{name}", type_=_RECORDS.c[name].type) for name in ("status_code", "response_body", "response_type", "response_headers")})
    .returning(_RECORDS.c.id)
)
# The claim this request made, if it is still unanswered and still its own (its lease: a
# retry may have taken over a lease that ran out, and its claim must stay).
_UNANSWERED = delete(_RECORDS).where(_THIS_KEY, _RECORDS.c.status_code.is_(None), _RECORDS.c.locked_until == bindparam("lease", type_=_RECORDS.c.locked_until.type))


def _claim_statement(dialect_insert: Callable[..., Any]) -> Any:
    """INSERT … ON CONFLICT (api_key_id, key) DO NOTHING RETURNING id: nothing returned means a
    concurrent request claimed the key first."""
    columns = ("api_key_id", "key", "fingerprint", "created_at", "locked_until")
    values = {name: bindparam(name, type_=_RECORDS.c[name].type) for name in columns}
    return dialect_insert(_RECORDS).values(values).on_conflict_do_nothing(index_elements=[_RECORDS.c.api_key_id, _RECORDS.c.key]).returning(_RECORDS.c.id)


_CLAIM = {"postgresql": _claim_statement(pg_insert), "sqlite": _claim_statement(sqlite_insert)}


def fingerprint(method: str, path: str, body: Any) -> str:
    """What makes two requests the same one: method, path and body (a validated model by
    its JSON, raw bytes as their UTF-8 text, or as base64 where they are not UTF-8)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, bytes):
        # Text as text, so a fingerprint stored before this kept matching its retries. Bytes
        # that are not UTF-8 were decoded with U+FFFD in place of each bad byte, which made
        # two different bodies one request; now their every byte counts, and no text
        # (a JSON string) looks like the object they give.
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    return str(value)


Keep = Callable[[Session, Response], Response]


def run(ctx: Context, caller: Caller, key: str | None, fingerprint_of: Callable[[], str], work: Callable[[Keep], Response]) -> Response:
    """Run `work` at most once per (caller's API key, Idempotency-Key). The request's
    fingerprint is taken only when there is a key to hold it against.

    `work(keep)` may pass its answer through `keep(session, answer)` as the last step of
    its write transaction: the answer is then stored in that transaction, which saves the
    keyed request a write transaction, and a work that committed always has its answer
    stored. An answer not kept that way (an error, or a work that answers after its
    commit) is stored afterwards, in a transaction of its own."""
    if key is None:
        return work(_as_is)
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Invalid("the Idempotency-Key header is not valid", errors=[FieldError("Idempotency-Key", f"1 to {MAX_KEY_LENGTH} bytes (a non-ASCII character counts as its UTF-8 bytes)", "header")])
    now = ctx.clock()
    fp = fingerprint_of()
    if ctx.unreleased or ctx.unstored:
        _settle_pending(ctx)
    lease = now + timedelta(seconds=ctx.settings.idempotency_lease_seconds)
    stored = ctx.db.transaction(lambda session: _claim(ctx, session, caller.key_id, key, fp, now, lease))
    if stored is not None:
        return stored
    kept: list[Response] = []

    def keep(session: Session, response: Response) -> Response:
        if response.status_code < 500:
            if not _store(session, caller.key_id, key, response, lease):
                raise _taken_over()  # the work's transaction rolls back: the retry's stands
            kept.append(response)  # a transaction run again keeps it again: `response` is the last
        return response

    try:
        response = work(keep)
    except AppError as exc:
        response = app_error_response(exc)
    except BaseException:
        _release(ctx, caller.key_id, key, lease)  # a crash is not an answer: let the retry run
        raise
    if kept and kept[-1] is response:
        return response
    if response.status_code >= 500:
        _release(ctx, caller.key_id, key, lease)
        return response
    try:
        with ctx.db.session(write=True) as session:
            # Not stored where a retry took the key over meanwhile: the answer kept is the
            # retry's, which found what this work committed (a batch's items: `duplicate`).
            _store(session, caller.key_id, key, response, lease)
    except DBAPIError:
        # The work committed (a batch answers after its commit): its answer is what happened,
        # and the caller gets it, though the database failed right after (a concurrency hunt's
        # 503 "nothing was stored" for a batch stored whole, whose effects nobody was told).
        # The answer waits to be stored with this process's next keyed request; until then a
        # retry of the key is 409, and after its lease it runs again, all of it `duplicate`.
        log.warning("the answer of a keyed write that committed could not be stored; it is kept to store later")
        if len(ctx.unstored) < MAX_UNRELEASED:
            ctx.unstored[(caller.key_id, key, lease)] = response
    return response


def _as_is(_session: Session, response: Response) -> Response:
    return response


def _store(session: Session, key_id: int, key: str, response: Response, lease: datetime) -> bool:
    """Store the answer on the key's record, if this request's claim (`lease`) still holds
    it; return whether it did."""
    return run_statement(
        session,
        _ANSWER,
        record_key_id=key_id,
        record_key=key,
        lease=lease,
        answer_status_code=response.status_code,
        answer_response_body=bytes(response.body),
        answer_response_type=response.media_type,
        answer_response_headers={name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers},
    ).first() is not None


def _claim(ctx: Context, session: Session, key_id: int, key: str, fp: str, now: datetime, lease: datetime) -> Response | None:
    """Claim the key for this request until `lease`; or return the stored answer; or raise
    409/422."""
    before = now - timedelta(hours=ctx.settings.idempotency_ttl_hours)  # older is expired
    dialect = session.get_bind().dialect.name
    run_statement(session, _EXPIRED[dialect], before=before)
    record = run_statement(session, _LOCKED, record_key_id=key_id, record_key=key).first()
    if record is not None and record.created_at < before:  # expired, not among the oldest pruned
        run_statement(session, _THIS_ONE, record_key_id=key_id, record_key=key)
        record = None
    if record is None:
        claim = _CLAIM[dialect]
        if run_statement(session, claim, api_key_id=key_id, key=key, fingerprint=fp, created_at=now, locked_until=lease).first() is None:
            raise _in_flight()
        return None
    if record.fingerprint != fp:
        raise Invalid(
            "this Idempotency-Key was used for a different request",
            errors=[FieldError("Idempotency-Key", "reused with a different method, path or body", "header")],
        )
    if record.status_code is not None:
        return Response(
            content=record.response_body,
            status_code=record.status_code,
            media_type=record.response_type,
            headers={**(record.response_headers or {}), "Idempotent-Replayed": "true"},
        )
    if record.locked_until > now:
        raise _in_flight()
    run_statement(session, _LEASE, record_key_id=key_id, record_key=key, until=lease)  # the first attempt died without an answer: take it over
    return None


def _in_flight() -> Conflict:
    return Conflict("a request with this Idempotency-Key is in progress; retry later", headers={"Retry-After": "1"})


def _taken_over() -> Conflict:
    return Conflict(
        "this request ran past its Idempotency-Key's lease, and a retry with the key took it over: nothing of this request was stored; "
        "the retry's answer is the key's (send the key again to get it)",
        headers={"Retry-After": "1"},
    )


def _release(ctx: Context, key_id: int, key: str, lease: datetime) -> None:
    """Free the key this request claimed and did not answer, so that a retry runs at once.
    Mostly the request failed because the database did, and then so does this: the key is
    kept to free with the next keyed request this process serves (`_settle_pending`),
    instead of answering 409 until its lease runs out. The request's own error stands."""
    try:
        with ctx.db.session(write=True) as session:
            run_statement(session, _UNANSWERED, record_key_id=key_id, record_key=key, lease=lease)
    except DBAPIError:
        if len(ctx.unreleased) < MAX_UNRELEASED:
            ctx.unreleased.add((key_id, key, lease))


def _settle_pending(ctx: Context) -> None:
    """Free the keys whose release failed (`_release`) and store the answers that could not
    be stored (`run`), in one transaction; what it cannot settle yet stays for the next
    request."""
    pending, answers = list(ctx.unreleased), dict(ctx.unstored)
    try:
        with ctx.db.session(write=True) as session:
            for key_id, key, lease in pending:
                run_statement(session, _UNANSWERED, record_key_id=key_id, record_key=key, lease=lease)
            for (key_id, key, lease), response in answers.items():
                _store(session, key_id, key, response, lease)
    except DBAPIError:
        return
    ctx.unreleased.difference_update(pending)
    for held in answers:
        ctx.unstored.pop(held, None)


# Keys a process keeps to free later; past this many (a long outage under load) the rest
# wait for their leases to run out, as before.
MAX_UNRELEASED = 10_000
