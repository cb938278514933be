"""Request and response bodies of /v1/webhooks (outbound grade-change webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from app.api.schemas import NoNul, Patch, Strict

EventType = Literal["customer.level_changed", "project.heat_changed", "event.created"]
SubscriptionStatus = Literal["active", "paused", "deleted"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


def _absolute_http(value: str) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain white space")
    if "@" in parts.netloc:
        # They were sent as Basic auth and shown in every read of the subscription, where
        # the signing secret is shown once. A receiver checks a message by its signature.
        raise ValueError("must not carry credentials (user:password@): a receiver checks each message by its signature")
    try:
        httpx.URL(value)  # what the worker will send to: a host name IDNA cannot encode fails there
    except httpx.InvalidURL as exc:
        raise ValueError(f"cannot be sent to: {exc}") from None
    return value


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), NoNul, AfterValidator(_absolute_http)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=10), AfterValidator(_distinct)]


class SubscriptionIn(Strict):
    url: Url = Field(description="where to POST: an absolute http:// or https:// URL; redirects are not followed")
    event_types: EventTypes = Field(description="what to receive")
    description: Description | None = None


class SubscriptionPatch(Patch):
    """Omitted fields stay; `status: paused` stops sending (deliveries wait and keep
    accumulating); `status: active` resumes, and every waiting delivery becomes due."""

    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    status: Literal["active", "paused"] | None = None


class SubscriptionOut(BaseModel):
    id: int
    url: str
    description: str | None
    event_types: list[str]
    status: SubscriptionStatus
    paused_reason: str | None = Field(description="why it is paused: by whom, or which delivery kept failing")
    paused_at: datetime | None
    deleted_at: datetime | None = Field(default=None, description="when it was deleted (it stays readable, with its delivery log)")
    version: int
    created_at: datetime
    updated_at: datetime
    previous_secret_until: datetime | None = Field(
        default=None, description="after a secret rotation: until when deliveries are also signed with the secret before it"
    )
    failing_since: datetime | None = Field(
        default=None,
        description="when the receiver's current run of failed attempts began (null: its last attempt succeeded, or none failed since it was last known good, resumed or given a new URL). Not versioned: the ETag does not move with it",
    )
    failed_attempts: int = Field(
        default=0,
        description="attempts that failed in that run, whichever deliveries they were. The subscription is paused once the run has lasted the whole retry schedule and holds more failed attempts than the schedule has retries",
    )


class SubscriptionCreatedOut(SubscriptionOut):
    secret: str = Field(description="whsec_…: verifies the webhook-signature header. Shown only now")


class SubscriptionRotateSecretIn(Strict):
    grace_hours: int = Field(default=24, ge=0, le=168, description="how long deliveries are also signed with the old secret, so the receiver can switch (0: not at all)")


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null if none came (see error)")
    error: str | None
    duration_ms: int
    response_excerpt: str | None = Field(description="the start (≤ 1 KB) of the receiver's answer")


class DeliveryOut(BaseModel):
    id: int
    msg_id: str = Field(description="the webhook-id header: the same on every attempt and redelivery")
    type: str
    status: DeliveryStatus
    next_attempt_at: datetime | None = Field(description="when it is tried next (pending only)")
    created_at: datetime
    finished_at: datetime | None
    last_status_code: int | None = Field(description="the receiver's status at the last attempt")
    last_error: str | None = Field(description="why the last attempt got no answer, or why the delivery ended unsent")
    payload: dict[str, Any]
    attempts: list[AttemptOut] = Field(description="every attempt, oldest first")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
