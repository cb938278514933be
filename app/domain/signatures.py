"""Webhook signatures: checking inbound deliveries and signing outbound ones.

Every check takes the raw body bytes exactly as they arrived (a signature covers bytes,
not parsed JSON) and a list of secrets, any of which may match, so a secret can be rotated
without dropping deliveries. A refused delivery raises `SignatureError`, whose text is a
short reason fit to show the sender. Header names may come in any case.

Schemes (the `scheme` argument of `verify` and `new_secret`):

- `standard_webhooks`: `webhook-id`, `webhook-timestamp` (unix seconds) and
  `webhook-signature: v1,<base64 HMAC-SHA256>` over `"{id}.{timestamp}.{body}"`, with a
  `whsec_<base64>` secret; timestamps more than the tolerance off either way are refused.
- `typeform`: `typeform-signature: sha256=<base64 HMAC-SHA256(secret, body)>`.
- `x_signature`: `x-signature: sha256=<hex HMAC-SHA256(secret, body)>` (GitHub's algorithm).
- `jiandaoyun`: `x-jdy-signature: sha1_hex(nonce:body:secret:timestamp)`, nonce and
  timestamp (unix seconds) from the query string. Plain SHA-1, not an HMAC: the vendor's.
- `url_token`: the secret itself in the query string as `token`, for tools that do not sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as random_source
from datetime import datetime, timedelta
from typing import Mapping, Sequence

SCHEMES = ("standard_webhooks", "typeform", "x_signature", "jiandaoyun", "url_token")
DEFAULT_TOLERANCE_S = 300
_STANDARD_PREFIX = "whsec_"


class SignatureError(Exception):
    """The delivery is not proven to come from the holder of a secret; `str()` says why."""


def replaced_secret(current: str, grace: timedelta, now: datetime) -> tuple[str | None, datetime | None]:
    """What a rotation keeps of the secret it replaces: the secret and until when it stays
    in force (`live_secrets`), or nothing for no grace. Only the secret just replaced is
    kept: a rotation during another's grace period ends that one."""
    return (current, now + grace) if grace > timedelta(0) else (None, None)


def live_secrets(current: str, previous: str | None, previous_until: datetime | None, now: datetime) -> list[str]:
    """The secrets in force at `now`: the current one, and the one a rotation replaced while
    its grace period lasts."""
    if previous is not None and previous_until is not None and now < previous_until:
        return [current, previous]
    return [current]


def sign_standard_webhooks(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (`v1,<base64>`) for one outbound delivery."""
    mac = hmac.new(_standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_standard_webhooks(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    h = _lower(headers)
    msg_id = _required_header(h, "webhook-id")
    raw_timestamp = _required_header(h, "webhook-timestamp")
    signature_list = _required_header(h, "webhook-signature")
    timestamp = _unix_seconds(raw_timestamp, "webhook-timestamp")
    _check_fresh(timestamp, now, tolerance_s)
    given = [sig for version, _, sig in (entry.partition(",") for entry in signature_list.split()) if version == "v1"]
    if not given:
        raise SignatureError("no v1 signature in the webhook-signature header")
    expected = [sign_standard_webhooks(secret, msg_id, timestamp, body).removeprefix("v1,") for secret in _some(secrets)]
    _match_any(expected, given)


def verify_typeform(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> None:
    given = _prefixed(_required_header(_lower(headers), "typeform-signature"), "typeform-signature")
    expected = [base64.b64encode(_hmac_sha256(secret, body)).decode("ascii") for secret in _some(secrets)]
    _match_any(expected, [given])


def verify_hex_hmac(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *, header: str = "x-signature") -> None:
    name = header.lower()
    given = _prefixed(_required_header(_lower(headers), name), name).lower()
    expected = [_hmac_sha256(secret, body).hex() for secret in _some(secrets)]
    _match_any(expected, [given])


def verify_jiandaoyun(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Without `now` only the signature is checked; with it, the query timestamp too."""
    given = _required_header(_lower(headers), "x-jdy-signature").lower()
    nonce = query.get("nonce")
    raw_timestamp = query.get("timestamp")
    if not nonce:
        raise SignatureError("no nonce in the query string")
    if not raw_timestamp:
        raise SignatureError("no timestamp in the query string")
    if now is not None:
        _check_fresh(_unix_seconds(raw_timestamp, "timestamp"), now, tolerance_s)
    expected = [
        hashlib.sha1(b":".join((nonce.encode(), body, secret.encode(), raw_timestamp.encode()))).hexdigest()
        for secret in _some(secrets)
    ]
    _match_any(expected, [given])


def verify_token(secrets: Sequence[str], given: str | None) -> None:
    if not given:
        raise SignatureError("no token in the query string")
    _match_any(list(_some(secrets)), [given], reason="token does not match")


def verify(
    scheme: str,
    secrets: Sequence[str],
    *,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    now: float,
) -> None:
    """Check one delivery under `scheme` (one of `SCHEMES`); raises `SignatureError`."""
    if scheme == "standard_webhooks":
        verify_standard_webhooks(secrets, headers, body, now=now)
    elif scheme == "typeform":
        verify_typeform(secrets, headers, body)
    elif scheme == "x_signature":
        verify_hex_hmac(secrets, headers, body)
    elif scheme == "jiandaoyun":
        verify_jiandaoyun(secrets, headers, query, body, now=now)
    elif scheme == "url_token":
        verify_token(secrets, query.get("token"))
    else:
        raise ValueError(f"unknown signature scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def new_secret(scheme: str) -> str:
    """A fresh random secret (256 bits) in the form `scheme` expects."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown signature scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if scheme == "standard_webhooks":
        return _STANDARD_PREFIX + base64.b64encode(random_source.token_bytes(32)).decode("ascii")
    return random_source.token_urlsafe(32)


def secret_problem(scheme: str, secret: str) -> str | None:
    """Why `secret` cannot be used with `scheme` (for checking one an admin pastes), or None."""
    if not secret:
        return "must not be empty"
    if scheme == "standard_webhooks":
        try:
            _standard_key(secret)
        except ValueError as exc:
            return str(exc)
    return None


def _standard_key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(_STANDARD_PREFIX), validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64")
    return key


def _hmac_sha256(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _required_header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise SignatureError(f"no {name} header")
    return value


def _prefixed(value: str, name: str) -> str:
    algorithm, sep, rest = value.partition("=")
    if not sep or algorithm.lower() != "sha256":
        raise SignatureError(f"{name} header is not of the form sha256=…")
    return rest


# Unix seconds stay under 13 digits until the year 33658; Python refuses to read more than
# 4,300 digits as an int (ValueError), and a stranger's 5,000-digit timestamp was a 500.
_MAX_SECONDS_DIGITS = 12


def _unix_seconds(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_SECONDS_DIGITS:
        raise SignatureError(f"{name} is not unix seconds")
    return int(raw)


def _check_fresh(timestamp: int, now: float, tolerance_s: int) -> None:
    off = abs(now - timestamp)
    if off > tolerance_s:
        raise SignatureError(f"timestamp is {off:.0f} s off (tolerance {tolerance_s} s)")


def _some(secrets: Sequence[str]) -> Sequence[str]:
    if isinstance(secrets, str):  # a lone string would be checked character by character
        raise TypeError("secrets is a sequence of strings, not one string")
    if not secrets:
        raise SignatureError("no secret is configured for this hook")
    return secrets


def _match_any(expected: Sequence[str], given: Sequence[str], *, reason: str = "signature does not match") -> None:
    """Compares every pair, without stopping early, so timing reveals neither which secret
    nor which of several signatures matched."""
    matched = False
    for want in expected:
        for got in given:
            matched |= hmac.compare_digest(want.encode(), got.encode())
    if not matched:
        raise SignatureError(reason)
