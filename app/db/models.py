"""SQLAlchemy 2.0 models. The schema itself is created by Alembic (migrations/)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db.types import Id, Json, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (CheckConstraint("kind IN ('owner', 'installer')", name="kind"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    region: Mapped[str | None] = mapped_column(String(100))
    rep: Mapped[str | None] = mapped_column(String(100), index=True)
    contact: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    # The current grade, kept in step with the event log by app/grading.py.
    level: Mapped[int] = mapped_column(Integer, default=0, index=True)
    level_since: Mapped[datetime] = mapped_column(UTCDateTime)
    grade: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Replaced by a new random stamp with every change to the customer's log (an event
    # naming it, or its retraction), in the transaction of the change: app/db/logs.py.
    log_stamp: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The digest of (level, grade) (app/db/types.py `grade_digest`): a write compares its new
    # grade with this, not with the stored JSON. Set with every grade; NULL only if a row
    # was written otherwise, and then the next grading writes it.
    grade_hash: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    region: Mapped[str | None] = mapped_column(String(100))
    amount: Mapped[float | None] = mapped_column(Numeric(16, 2, asdecimal=False))
    expected_close: Mapped[date | None] = mapped_column(Date)
    rep: Mapped[str | None] = mapped_column(String(100), index=True)
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    heat: Mapped[int] = mapped_column(Integer, default=0, index=True)
    heat_since: Mapped[datetime] = mapped_column(UTCDateTime)
    stage: Mapped[str | None] = mapped_column(String(32))
    closed: Mapped[bool] = mapped_column(default=False)
    grade: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # As Customer.log_stamp, for the events naming the project.
    log_stamp: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # As Customer.grade_hash, of (heat, stage, closed, grade).
    grade_hash: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """One logged fact. Never updated or deleted: a wrong one is retracted."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_events_customer_id_type", "customer_id", "type"),
        Index("ix_events_project_id_type", "project_id", "type"),
        Index("ix_events_tx_id", "tx", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attributes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # 69: an API write's source has at most 64 characters, a form's is "form:" and its id of
    # up to 64 (migration 0c7d2e5f9a14).
    source: Mapped[str] = mapped_column(String(69), default="api")
    external_id: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    # The storing transaction's id on PostgreSQL (the database's default, never written
    # here), 0 on SQLite and before it was kept: the oldest-first list reads events in the
    # order of their transactions (migration 5c1d9e7a3f42, app/services/paging.py).
    tx: Mapped[int] = mapped_column(BigInteger, server_default="0")


class Retraction(Base):
    """The record that an event no longer counts. One per event; itself never removed."""

    __tablename__ = "event_retractions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class GradeChange(Base):
    """One change of a grade. Append-only: the audit trail."""

    __tablename__ = "grade_history"
    __table_args__ = (
        CheckConstraint("subject_type IN ('customer', 'project')", name="subject_type"),
        Index("ix_grade_history_subject", "subject_type", "subject_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[int] = mapped_column(Id)
    metric: Mapped[str] = mapped_column(String(32))
    old: Mapped[int] = mapped_column(Integer)
    new: Mapped[int] = mapped_column(Integer)
    rulebook_version: Mapped[str] = mapped_column(String(64))
    evidence: Mapped[dict[str, Any]] = mapped_column(Json)
    trigger: Mapped[dict[str, Any]] = mapped_column(Json)
    actor: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # sha256 of the secret: secrets are 256-bit random, so a fast hash is enough.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyRecord(Base):
    """The first answer to a request sent with an Idempotency-Key, replayed to retries."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and body
    status_code: Mapped[int | None] = mapped_column(Integer)  # None while in flight
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_type: Mapped[str | None] = mapped_column(String(100))
    response_headers: Mapped[dict[str, str] | None] = mapped_column(Json)  # e.g. Location
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime)


class Setting(Base):
    """Small operational facts, e.g. which rulebook version graded the stored grades."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class FormMapping(Base):
    """How one form tool's submissions become events, and how its hook is authenticated."""

    __tablename__ = "form_mappings"
    __table_args__ = (
        CheckConstraint("auth_scheme IN ('standard_webhooks', 'typeform', 'x_signature', 'jiandaoyun', 'url_token')", name="auth_scheme"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    form_id: Mapped[str] = mapped_column(String(64), unique=True)  # the slug in the hook URL
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    tool: Mapped[str] = mapped_column(String(32))
    auth_scheme: Mapped[str] = mapped_column(String(32))
    # HMAC schemes need the secret itself (unlike API keys, it cannot be stored hashed).
    secret: Mapped[str] = mapped_column(String(200))
    # After a rotation the old secret keeps working until this instant.
    previous_secret: Mapped[str | None] = mapped_column(String(200))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    spec: Mapped[dict[str, Any]] = mapped_column(Json)
    enabled: Mapped[bool] = mapped_column(default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FormSubmission(Base):
    """Every authenticated submission, kept as received. Those that could not be mapped
    wait in the inbox (status 'inbox') until replayed or dismissed."""

    __tablename__ = "form_submissions"
    __table_args__ = (
        UniqueConstraint("form_mapping_id", "delivery_id"),
        CheckConstraint("status IN ('processed', 'inbox', 'dismissed')", name="status"),
        Index("ix_form_submissions_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    form_mapping_id: Mapped[int] = mapped_column(ForeignKey("form_mappings.id"))
    delivery_id: Mapped[str] = mapped_column(String(200))  # the tool's own submission id
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    content_type: Mapped[str] = mapped_column(Text)  # whole: a multipart body is read by its boundary
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    problems: Mapped[list[dict[str, str]]] = mapped_column(Json, default=list)
    event_ids: Mapped[list[int]] = mapped_column(Json, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution: Mapped[str | None] = mapped_column(Text)  # why it was dismissed
    actor: Mapped[str | None] = mapped_column(String(100))  # who replayed or dismissed it


class Subscription(Base):
    """A receiver of grade-change webhooks."""

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (CheckConstraint("status IN ('active', 'paused', 'deleted')", name="status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(200))
    event_types: Mapped[list[str]] = mapped_column(Json)
    secret: Mapped[str] = mapped_column(String(100))  # whsec_…, needed to sign
    # After a rotation, the secret before it, with which deliveries are also signed until
    # `previous_secret_until` (so a receiver can switch to the new one in its own time).
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Indexed: every grade change reads the subscriptions that are not deleted.
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The receiver's run of failures, whichever deliveries were tried: when the first failed
    # attempt of it began and how many have failed, none succeeding since (None, 0: the last
    # succeeded); and when it was last known good (the start of its latest successful
    # attempt, or its resume), before which an attempt's failure says nothing of now. A run
    # as long as the retry schedule, of as many attempts, pauses the subscription
    # (app/services/delivery.py `_record`).
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    good_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A deleted subscription is kept, so its delivery log stays readable.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxMessage(Base):
    """A message to send, written in the same transaction as the change it reports."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id header
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Delivery(Base):
    """One message to one subscription: retried until it succeeds or its schedule ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "message_id"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        Index("ix_webhook_deliveries_subscription_id_id", "subscription_id", "id"),
        # A claim reads each active subscription's due deliveries in order here, and never
        # walks a paused subscription's backlog (app/services/delivery.py `_claim`).
        Index("ix_webhook_deliveries_subscription_due", "subscription_id", "status", "next_attempt_at", "id"),
        # For keeping the log bounded (app/services/delivery.py `prune`): the deliveries
        # that ended longest ago, and whether a message has deliveries left.
        Index("ix_webhook_deliveries_finished_at", "finished_at"),
        Index("ix_webhook_deliveries_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    message_id: Mapped[int] = mapped_column(ForeignKey("outbox_messages.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A worker that claimed it holds it until then; another may take it over afterwards.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryAttempt(Base):
    """The log of every attempt to deliver, kept for the subscription's owner to read."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
