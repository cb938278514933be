"""The transactional outbox: webhook subscriptions, and the messages and deliveries that are
written in the same transaction as the change they report (so a change that rolls back
sends nothing, and one that commits is sent at least once by app/services/delivery.py).

Everything here runs in the caller's transaction and never commits."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence
from uuid import uuid4

from sqlalchemy import JSON, func, literal_column, select, type_coerce, update
from sqlalchemy.orm import Session

from app.db import models as m
from app.db.engine import run
from app.domain.evaluation import HeatGrade
from app.domain.rulebook import Label, Rulebook
from app.domain.signatures import new_secret, replaced_secret
from app.errors import Conflict, NotFound
from app.services.paging import page
from app.services.records import Versions, check_version

LEVEL_CHANGED = "customer.level_changed"
HEAT_CHANGED = "project.heat_changed"
EVENT_CREATED = "event.created"
EVENT_TYPES = (LEVEL_CHANGED, HEAT_CHANGED, EVENT_CREATED)
GRADE_EVENT = {"customer": LEVEL_CHANGED, "project": HEAT_CHANGED}
PING = "webhook.ping"  # sent only by POST /v1/webhooks/subscriptions/{id}/test

DELETED = "deleted"
DELETED_REASON = "the subscription was deleted"  # a pending delivery's end when it is

Payload = dict[str, Any] | Callable[[], dict[str, Any]]


def enqueue(session: Session, type: str, payload: Payload, now: datetime, *, wanted: list[int] | None = None) -> m.OutboxMessage | None:
    """Queue one message of `type` for every subscription that wants it, paused ones
    included (they keep accumulating until resumed). Without such a subscription nothing
    is written and a callable `payload` is never called: the cost is one indexed read, or
    none when the caller already read `wanted` (= `subscribers(session, type)`) in this
    transaction."""
    return _queue(session, type, payload, now, subscribers(session, type) if wanted is None else wanted)[0]


def enqueue_each(session: Session, type: str, payloads: Callable[[], list[dict[str, Any]]], now: datetime, *, wanted: list[int] | None = None) -> None:
    """`enqueue` for many messages of one type (a batch's events), reading the
    subscriptions once, or not at all when the caller read `wanted`."""
    wanted = subscribers(session, type) if wanted is None else wanted
    if wanted:
        for payload in payloads():
            _queue(session, type, payload, now, wanted)


_S = m.Subscription.__table__
# Constants in the SQL, not parameters: an IN list of parameters is re-rendered per run.
_IS_LIVE = _S.c.status.in_([literal_column("'active'"), literal_column("'paused'")])
_LIVE = select(_S.c.id, _S.c.event_types).where(_IS_LIVE).order_by(_S.c.id)


def subscribers(session: Session, type: str) -> list[int]:
    """The subscriptions (active or paused, not deleted) that want messages of `type`."""
    return _wanting(run(session, _LIVE), type)


def subscribers_by_type(session: Session, live: Iterable[Any] | None = None) -> dict[str, list[int]]:
    """`subscribers` of every message type a write queues (`EVENT_TYPES`), from one read,
    or from the `live_subscriptions` a write's statement returned."""
    live = run(session, _LIVE).all() if live is None else sorted(live)
    return {type: _wanting(live, type) for type in EVENT_TYPES}


def live_subscriptions(dialect: str) -> Any:
    """Every live subscription as one JSON array of [id, event_types] pairs: a scalar
    subquery for a write's `INSERT … RETURNING`, which then needs no read of its own (on
    PostgreSQL a read is a round trip, ~150 us of a single event POST's 2.5 ms)."""
    if dialect == "postgresql":
        pairs = func.coalesce(func.json_agg(func.json_build_array(_S.c.id, _S.c.event_types)), literal_column("'[]'::json"))
    else:
        pairs = func.json_group_array(func.json_array(_S.c.id, func.json(_S.c.event_types)))
    return select(type_coerce(pairs, JSON)).where(_IS_LIVE).scalar_subquery()


def _wanting(live: Iterable[Any], type: str) -> list[int]:
    return [sid for sid, types in live if type in types]


def _queue(session: Session, type: str, payload: Payload, now: datetime, subscription_ids: Sequence[int]) -> tuple[m.OutboxMessage | None, list[m.Delivery]]:
    if not subscription_ids:
        return None, []
    message = m.OutboxMessage(msg_id=f"msg_{uuid4().hex}", type=type, payload=payload() if callable(payload) else payload, created_at=now)
    session.add(message)
    session.flush()
    deliveries = [
        m.Delivery(subscription_id=sid, message_id=message.id, status="pending", attempts=0, next_attempt_at=now, created_at=now)
        for sid in subscription_ids
    ]
    session.add_all(deliveries)
    session.flush()
    return message, deliveries


def grade_payload(session: Session, rulebook: Rulebook, change: m.GradeChange, heat: HeatGrade | None = None) -> dict[str, Any]:
    """The body of a `customer.level_changed` or `project.heat_changed` message: the change,
    its subject, a summary of the evidence (the full snapshot is in the history), the
    rulebook version and what triggered it. A project's tier comes from its new grade
    (`heat`): the message is built before grading writes the project's row. A change found
    on the row as stored (trigger `outside`: a heat set by hand) has no grade of the
    rulebook's: its tier comes from the row, which still holds what was found."""
    session.flush()  # the history row's id names it in the message
    if change.subject_type == "customer":
        customer = session.get(m.Customer, change.subject_id)
        assert customer is not None
        subject: dict[str, Any] = {"customer": {"id": customer.id, "name": customer.name, "kind": customer.kind, "external_ref": customer.external_ref}}
        label = rulebook.level_labels[change.new]
    else:
        project = session.get(m.Project, change.subject_id)
        assert project is not None
        if heat is not None:
            tier, label = heat_tier(rulebook, heat.percent, heat.stage, heat.closed)
        else:
            tier, label = heat_tier(rulebook, change.new, project.stage, project.closed)
        subject = {
            "project": {"id": project.id, "name": project.name, "external_ref": project.external_ref, "owner_id": project.owner_id},
            "tier": tier,
        }
    data = {
        **subject,
        "old": change.old,
        "new": change.new,
        "label": label.as_dict(),
        "rulebook_version": change.rulebook_version,
        "evidence": evidence_summary(change.evidence),
        "trigger": change.trigger,
        "actor": change.actor,
        "at": utc_text(change.at),
        "history_id": change.id,
    }
    return {"type": GRADE_EVENT[change.subject_type], "timestamp": utc_text(change.at), "data": data}


def heat_tier(rulebook: Rulebook, heat: int, stage: str | None, closed: bool) -> tuple[str, Label]:
    """A project's tier name (cold, 30 … 90, won, lost) and its label."""
    if closed and stage in rulebook.closed_labels:
        return stage, rulebook.closed_labels[stage]
    tiers = {t.value: t.label for t in rulebook.tiers}
    return (str(heat), tiers[heat]) if heat in tiers else ("cold", rulebook.cold_label)


def evidence_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The criteria met (with their evidence event ids) and the gap to the next step."""
    met = [{"id": c["id"], "evidence": c["evidence"]} for c in snapshot.get("criteria", []) if c["met"]]
    return {"met": met, "next": snapshot.get("next")}


EVENT_FIELDS = ("type", "customer_id", "project_id", "occurred_at", "attributes", "source", "external_id", "actor", "recorded_at")


def stored_event_payload(event_id: int, values: dict[str, Any]) -> dict[str, Any]:
    """The body of an `event.created` message, from the values a write inserted."""
    data = {"id": event_id, **{k: values[k] for k in EVENT_FIELDS if k != "recorded_at"}}
    data["occurred_at"] = utc_text(values["occurred_at"])
    return {"type": EVENT_CREATED, "timestamp": utc_text(values["recorded_at"]), "data": {"event": data}}


def utc_text(at: datetime) -> str:
    """A message's time as the API writes every time it returns: UTC, with `Z` (they had
    `+00:00`, which the delivery log then showed beside the API's own `Z`)."""
    return at.astimezone(timezone.utc).isoformat().removesuffix("+00:00") + "Z"


# --- subscriptions ---------------------------------------------------------------------


def is_deleted(subscription: m.Subscription) -> bool:
    return subscription.status == DELETED


def create_subscription(session: Session, fields: dict[str, Any], *, now: datetime) -> m.Subscription:
    """A new, active subscription with a fresh `whsec_` secret (readable only from the result)."""
    subscription = m.Subscription(**fields, secret=new_secret("standard_webhooks"), status="active", version=1, created_at=now, updated_at=now)
    session.add(subscription)
    session.flush()
    return subscription


def get_subscription(session: Session, subscription_id: int, *, lock: bool = False) -> m.Subscription:
    """The subscription; `lock`: row-locked for this transaction. The lock is PostgreSQL's
    FOR NO KEY UPDATE (a subscription's id never changes, nor is its row deleted): a write
    that queues a delivery holds FOR KEY SHARE on it (the delivery's foreign key), which
    FOR UPDATE waits for. A recorder pausing the subscription did, while that write's next
    delivery waited for the recorder, re-checking the row another recorder had updated:
    PostgreSQL aborted the write as a deadlock (a review's find)."""
    query = select(m.Subscription).where(m.Subscription.id == subscription_id)
    subscription = session.scalar(query.with_for_update(key_share=True) if lock else query)
    if subscription is None:
        raise NotFound(f"no webhook subscription with id {subscription_id}")
    return subscription


def _live_subscription(session: Session, subscription_id: int) -> m.Subscription:
    subscription = get_subscription(session, subscription_id, lock=True)
    if is_deleted(subscription):
        raise Conflict(f"webhook subscription {subscription_id} was deleted; create a new one")
    return subscription


def rotate_secret(session: Session, subscription_id: int, *, grace: timedelta, now: datetime, if_match: Versions | None = None) -> m.Subscription:
    """Give the subscription a new secret; deliveries are signed with the old one too for
    `grace` (0: not at all). `if_match`: the versions the caller read (412 otherwise)."""
    subscription = _live_subscription(session, subscription_id)
    check_version(subscription, if_match)
    subscription.previous_secret, subscription.previous_secret_until = replaced_secret(subscription.secret, grace, now)
    subscription.secret = new_secret("standard_webhooks")
    subscription.version += 1
    subscription.updated_at = now
    return subscription


def list_subscriptions(session: Session, *, status: str | None, limit: int, cursor: str | None) -> tuple[Sequence[m.Subscription], str | None]:
    """Oldest first; deleted subscriptions only when asked for by `status`."""
    s = m.Subscription
    condition = s.status != DELETED if status is None else s.status == status
    return page(session, select(s).where(condition), s.id, limit=limit, cursor=cursor)


def update_subscription(
    session: Session, subscription_id: int, changes: dict[str, Any], *, actor: str, if_match: Versions | None = None, now: datetime
) -> m.Subscription:
    """Change url, description or event types; pause (`status: paused`) or resume
    (`status: active`: every pending delivery becomes due now). `if_match`: the versions the
    caller read (412 if the subscription changed since, a pause by the sender included)."""
    subscription = _live_subscription(session, subscription_id)
    check_version(subscription, if_match)
    changes = dict(changes)
    status = changes.pop("status", None)
    changed = {k: v for k, v in changes.items() if getattr(subscription, k) != v}
    for key, value in changed.items():
        setattr(subscription, key, value)
    if status == "paused" and subscription.status == "active":
        pause(subscription, f"paused by {actor}", now)
    elif status == "active" and subscription.status == "paused":
        _resume(session, subscription, now)
    elif changed:
        _touch(subscription, now)
    if "url" in changed:  # another receiver: its run of failures is not the old one's
        _receiver_fresh(subscription, now)
    return subscription


def _resume(session: Session, subscription: m.Subscription, now: datetime) -> None:
    subscription.status, subscription.paused_reason, subscription.paused_at = "active", None, None
    _receiver_fresh(subscription, now)  # resumed, its receiver gets the whole retry schedule again
    _touch(subscription, now)
    session.execute(
        update(m.Delivery)
        .where(m.Delivery.subscription_id == subscription.id, m.Delivery.status == "pending", m.Delivery.next_attempt_at > now)
        .values(next_attempt_at=now)
    )


def _receiver_fresh(subscription: m.Subscription, now: datetime) -> None:
    """No run of failures, and the receiver known good from `now`: an attempt under way that
    fails after this began before it, and does not count (app/services/delivery.py
    `_receivers_run`)."""
    subscription.failing_since, subscription.failed_attempts, subscription.good_at = None, 0, now


def pause(subscription: m.Subscription, reason: str, now: datetime) -> None:
    """Stop sending to it; its deliveries wait (and new ones accumulate) until it is resumed."""
    subscription.status, subscription.paused_reason, subscription.paused_at = "paused", reason, now
    _touch(subscription, now)


def _touch(subscription: m.Subscription, now: datetime) -> None:
    subscription.version += 1
    subscription.updated_at = now


def delete_subscription(session: Session, subscription_id: int, *, now: datetime, if_match: Versions | None = None) -> None:
    """Stop sending and queueing for good; its pending deliveries end as failed. The
    subscription and its delivery log stay readable. `if_match`: the versions the caller
    read (412 otherwise), unless it is deleted already: a retried DELETE has been applied
    (RFC 9110 §13.1.1 lets that answer 2xx)."""
    subscription = get_subscription(session, subscription_id, lock=True)
    if is_deleted(subscription):
        return
    check_version(subscription, if_match)
    subscription.status, subscription.deleted_at = DELETED, now
    _touch(subscription, now)
    session.execute(
        update(m.Delivery)
        .where(m.Delivery.subscription_id == subscription.id, m.Delivery.status == "pending")
        .values(status="failed", last_error=DELETED_REASON, finished_at=now)
    )


def redeliver(session: Session, subscription_id: int, delivery_id: int, *, now: datetime) -> m.Delivery:
    """Queue a delivery again, due now, with a fresh retry schedule (the receiver sees the
    same webhook-id again). Refused while an attempt is in flight."""
    _live_subscription(session, subscription_id)
    delivery = session.scalar(
        select(m.Delivery).where(m.Delivery.id == delivery_id, m.Delivery.subscription_id == subscription_id).with_for_update()
    )
    if delivery is None:
        raise NotFound(f"webhook subscription {subscription_id} has no delivery {delivery_id}")
    if delivery.status == "pending" and delivery.locked_until is not None and delivery.locked_until > now:
        # Leased: an attempt under way, or one whose worker stopped mid-way (it is tried
        # again when the lease ends, app/services/delivery.py `lease_for`).
        wait = max(1, math.ceil((delivery.locked_until - now).total_seconds()))
        raise Conflict(
            f"this delivery is leased to a worker for an attempt until {utc_text(delivery.locked_until)} (a worker that stopped mid-way leaves it so: it is tried again then)",
            headers={"Retry-After": str(wait)},
        )
    delivery.status, delivery.next_attempt_at, delivery.attempts = "pending", now, 0
    delivery.locked_until, delivery.finished_at = None, None
    return delivery


def ping(session: Session, subscription_id: int, *, now: datetime) -> m.Delivery:
    """Queue a `webhook.ping` message for this subscription alone."""
    subscription = _live_subscription(session, subscription_id)
    payload = {"type": PING, "timestamp": utc_text(now), "data": {"subscription_id": subscription.id}}
    _, (delivery,) = _queue(session, PING, payload, now, [subscription.id])
    return delivery
