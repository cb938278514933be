"""Configuration from the environment (prefix RAPPORT_). Built by a function, never at import."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, NonNegativeFloat, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# The longest wait before a webhook retry: 30 days. Longer, a retry's time would be past any
# date the database keeps (1e400 is infinity), and the attempt could not be recorded.
MAX_RETRY_WAIT = 30 * 24 * 3600


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore")

    database_url: str = Field(default="sqlite:///rapport.db", description="SQLAlchemy URL; default: rapport.db in the working directory")
    bootstrap_key: str | None = Field(default=None, description="if set, an admin API key with exactly this secret exists after start-up")

    @field_validator("bootstrap_key")
    @classmethod
    def _sendable(cls, value: str | None) -> str | None:
        # Empty is unset, as it always was (a compose file's `${X}` with X unset gives it).
        # A secret a client cannot send as it is would be a key that never works, and setting
        # it revokes the previous bootstrap key: the operator was locked out (a hunt's find,
        # with Chinese characters). A header carries printable ASCII, and its spaces at
        # either end are dropped; spaces inside are kept, and work.
        if not value:
            return None
        if not re.fullmatch(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?", value):
            raise ValueError("must be printable ASCII (letters, digits, punctuation, inner spaces), with no space at either end, as an Authorization header carries it")
        return value
    rulebook_path: Path | None = Field(default=None, description="a rulebook JSON file; default: the packaged default rulebook")
    migrations_dir: Path | None = Field(default=None, description="where the Alembic scripts are, if not beside the package")
    # Upper bounds on every duration and count (a configuration hunt's finds): beyond them a
    # date or a timer overflowed at run time, a 500 on every keyed write, delivery threads
    # that died while /readyz said ready, or SQLite's 32-bit busy timeout read as "no wait".
    idempotency_ttl_hours: int = Field(default=24, ge=24, le=24 * 366 * 10, description="how long Idempotency-Key answers are kept (at most ten years)")
    idempotency_lease_seconds: int = Field(default=60, ge=1, le=86_400, description="after this, an unfinished request's key may be taken over (at most a day)")
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0, le=2**31 - 1)
    log_cache_events: int = Field(
        default=100_000,
        ge=0,
        description="events of recently graded subjects' logs each process keeps, so the next write to them need not read them back (about 0.5 KiB each); 0 = keep none",
    )
    remember_keys: bool = Field(
        default=True,
        description="each process remembers the API keys it authenticated while the database tells it of every change to the keys (PostgreSQL: notices, on one more connection per process; SQLite: a stamp the keys' triggers renew, read on one more connection); off: every request reads its key",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry spans, metrics and logs for each request, sent to the providers an operator configures (`opentelemetry-instrument`, or FASTAPI_OTEL_AUTO_CONFIGURE=true with the OTEL_* variables); off: not even looked for",
    )
    worker_threads: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="requests each process runs at once on its worker threads (their database work; more wait their turn), and reads as many again on threads of their own; default: 4 on SQLite, 2 on PostgreSQL (`request_threads`); raise it when each request waits long on the database (a remote server)",
    )
    batch_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="POST /v1/events/batch requests each process runs at once, on threads of their own: long batches never hold the threads single requests need",
    )
    db_pool_size: int = Field(default=20, ge=1, le=200, description="database connections each process keeps open (PostgreSQL: mind max_connections across processes)")
    lock_timeout_seconds: float = Field(
        default=10,
        ge=0,
        le=3600,
        description="PostgreSQL, serving processes: how long a request waits for a row another write holds (a long batch, a regrade, a transaction left open) before it answers 503 and stores nothing; 0 waits as long as it takes",
    )
    max_batch_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="the largest body POST /v1/events/batch reads")
    max_hook_bytes: int = Field(default=1024 * 1024, ge=1024, description="the largest form-tool delivery POST /v1/hooks/forms/{form_id} reads")
    deliver_in_process: bool = Field(default=True, description="deliver outbound webhooks from a thread of the API process (off: run `rapport worker`)")
    webhook_retry_schedule: list[Annotated[float, Field(ge=0, le=MAX_RETRY_WAIT, allow_inf_nan=False)]] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=1,
        description="seconds to wait before each retry of a failed webhook delivery (JSON list, each at most 30 days); when they run out the subscription is paused",
    )
    webhook_concurrency: int = Field(default=4, ge=1, le=32, description="webhook deliveries each worker (or API process) sends at once, so that a few slow receivers do not hold up the others")
    webhook_log_days: int = Field(default=30, ge=1, le=36_500, description="days a finished webhook delivery (with its attempts) stays in the delivery log; then the worker deletes it")
    webhook_allow_loopback: bool = Field(default=False, description="let outbound webhooks go to this machine (loopback addresses); off, a subscription cannot reach the server's own services")
    webhook_allow_private: bool = Field(default=True, description="let outbound webhooks go to private-network addresses (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10), where an on-premises receiver usually is")
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=60, allow_inf_nan=False, description="how long one webhook delivery may take")
    webhook_poll_seconds: float = Field(default=1, gt=0, le=3600, allow_inf_nan=False, description="how often the webhook worker looks for due deliveries (at most an hour)")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="the largest request body of any other endpoint (413 above)")
    rate_limit_per_second: NonNegativeFloat = Field(
        default=50, le=1_000_000, allow_inf_nan=False, description="requests per second each API key (and each form hook) may sustain, per process; 0 = no limit, else at least 0.001"
    )
    rate_limit_burst: int = Field(default=200, ge=1, le=1_000_000_000, description="how many requests a key may send at once before the per-second rate applies")

    @field_validator("rate_limit_per_second")
    @classmethod
    def _a_rate_a_client_can_wait_for(cls, value: float) -> float:
        # 1e-320 overflowed the wait into a 500, 1e-300 a Retry-After of 300 digits.
        if 0 < value < 0.001:
            raise ValueError("must be 0 (no limit) or at least 0.001 (one request in about 17 minutes)")
        return value

    @property
    def is_sqlite(self) -> bool:
        """Whether `database_url` names a SQLite database (one writer at a time)."""
        return make_url(self.database_url).get_backend_name() == "sqlite"

    def request_threads(self) -> int:
        """`worker_threads`, or its default for the database: 4 threads on SQLite, where the
        writes that wait together share one commit (the more wait, the more share it), and 2
        on PostgreSQL, where every write has its own transaction and more threads only take
        turns at the one core a process computes on: event POSTs served 0.53 of the floor's
        throughput with 2 threads against 0.49 with 4, in 5 and 6 runs (docs/performance.md,
        "The thread-count round")."""
        if self.worker_threads is not None:
            return self.worker_threads
        return 4 if self.is_sqlite else 2


@lru_cache
def get_settings() -> Settings:
    return Settings()
