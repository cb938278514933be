"""Where outbound webhooks may go: not to the machine's own services or the cloud's
metadata endpoint (server-side request forgery).

A subscription's URL is chosen by whoever holds an admin key, and the worker POSTs to it
and logs an excerpt of each answer, which the deliveries API shows. Without a guard, that
key could make the worker call what only the server can reach — a database's or an
admin console's port on loopback, `169.254.169.254` (the instance metadata and its
credentials on most clouds) — and read the answers back.

The guard is applied where the worker connects, to every address the host name resolves
to at that moment (a name that resolved to a public address when the subscription was
made may resolve to loopback later: DNS rebinding), and the connection is made to an
address it checked, never to a second resolution of the name. TLS still checks the
certificate against the host name. A URL naming a refused address outright is refused
when the subscription is created or changed (422), so the mistake shows at once: in any
form the resolver reads as an address (`127.1`, `2130706433`, `0x7f000001`), and with
no DNS lookup (a name, `localhost` included, waits for the worker's check).

Refused: loopback, unless `webhook_allow_loopback` (a receiver on the same machine); and
always link-local addresses and the clouds' other metadata addresses (Alibaba Cloud's
100.100.100.200, AWS's fd00:ec2::254), unspecified, multicast and reserved addresses.
Private networks (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10) are allowed unless
`webhook_allow_private` is off: an on-premises ERP or app back end usually lives there.
The worker connects itself, always: HTTP_PROXY / HTTPS_PROXY in the environment are not
used (httpx leaves them out for a client given its own transport, as this one is), so an
egress proxy must be transparent to it.

An attempt's timeout bounds the whole attempt, not each read: a receiver that sends its
answer a byte at a time, each within the read timeout, is cut off when the attempt's time
is up (`_Deadlined`). Otherwise it could hold a sender past its claim's lease, and another
sender would send the same delivery at the same time.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from app.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Egress:
    allow_loopback: bool = False
    allow_private: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Egress:
        return cls(allow_loopback=settings.webhook_allow_loopback, allow_private=settings.webhook_allow_private)

    def refusal(self, address: Address) -> str | None:
        """Why a webhook may not be sent to `address`, or None if it may."""
        if isinstance(address, ipaddress.IPv6Address):
            inner = _carried_ipv4(address)
            if inner is not None:
                return self.refusal(inner)
        if address.is_loopback:
            return None if self.allow_loopback else "is a loopback address (this machine); set RAPPORT_WEBHOOK_ALLOW_LOOPBACK=true to allow it"
        if address.is_link_local or address in _METADATA:
            return "is where clouds serve instance metadata (a link-local or metadata address)"
        if address.is_unspecified or address.is_multicast or address.is_reserved:
            return "is not an address a webhook can be sent to"
        if address in _SHARED or address.is_private:
            return None if self.allow_private else "is a private-network address; set RAPPORT_WEBHOOK_ALLOW_PRIVATE=true to allow it"
        return None

    def url_problem(self, url: str) -> str | None:
        """Why a subscription may not use `url`, if its host is an address that is refused."""
        host = urlsplit(url).hostname or ""
        address = literal_address(host)
        if address is None:
            return None  # a name: checked when the worker connects
        reason = self.refusal(address)
        if reason is None:
            return None
        return f"{host} {reason}" if str(address) == host else f"{host} is {address}, which {reason}"

    def client(self, timeout: float) -> httpx.Client:
        """An HTTP client whose direct connections go only to addresses this allows, and
        whose every request, from its start to its answer's last byte read, takes at most
        `timeout` seconds (a request hook starts the clock in the thread sending it)."""
        transport = httpx.HTTPTransport()
        pool = transport._pool  # httpx makes it; its network backend is the one place every connection is opened
        if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):  # pragma: no cover - httpcore changed
            raise RuntimeError("cannot guard webhook connections with this httpcore")
        pool._network_backend = _Guarded(pool._network_backend, self)

        def start_the_clock(_request: httpx.Request) -> None:
            _attempt.deadline = time.monotonic() + timeout

        return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, event_hooks={"request": [start_the_clock]})


# NAT64's well-known prefix (RFC 6052): 64:ff9b::a9fe:a9fe is 169.254.169.254 through a
# NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to, where it carries one: IPv4-mapped
    (::ffff:127.0.0.1), 6to4 (2002:a9fe:a9fe:: is 169.254.169.254 through a 6to4 relay, a
    hunt's address), NAT64 and Teredo (the client's). Such an address is judged by that one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]
    return None


def literal_address(host: str) -> Address | None:
    """The address `host` writes out, as the resolver reads it without a lookup, or None for a
    name. Not only `127.0.0.1` and `::1`: the resolver (inet_aton) also reads `127.1`,
    `2130706433`, `0x7f000001` and `0177.0.0.1` as 127.0.0.1, and the worker's connection
    would go there."""
    try:
        return ipaddress.ip_address(host)  # also an IPv6 address with a zone (fe80::1%eth0)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)  # never a DNS lookup
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0]) if infos else None


# 100.64.0.0/10, carrier-grade NAT: shared, not public, though not in is_private.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# Instance-metadata services outside link-local space: Alibaba Cloud's (in the shared
# range) and AWS's IPv6 one (in fc00::/7). The others answer on 169.254.169.254 or
# another link-local address.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254"))


class _Guarded(httpcore.NetworkBackend):
    """A network backend that resolves the host itself, refuses it if any of its addresses
    is refused, and connects to the checked addresses (in the order resolved)."""

    def __init__(self, inner: httpcore.NetworkBackend, egress: Egress):
        self._inner = inner
        self._egress = egress

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host}: {exc}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:
            reason = self._egress.refusal(address)
            if reason is not None:
                raise httpcore.ConnectError(f"refused: {host} resolves to {address}, which {reason}")
        error: Exception | None = None
        for address in addresses:
            try:
                left = _time_left(timeout, httpcore.ConnectTimeout)
                return _Deadlined(self._inner.connect_tcp(str(address), port, timeout=left, local_address=local_address, socket_options=socket_options))
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host}: no address")

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:  # pragma: no cover
        raise httpcore.ConnectError("webhooks are not sent to unix sockets")

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore's retries, unused
        self._inner.sleep(seconds)


# The deadline of the request the current thread is sending (set by `Egress.client`'s
# request hook): httpcore runs a sync request in the thread that sends it.
_attempt = threading.local()


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """The timeout of one network operation: `timeout`, or less if the request's deadline
    comes first; `expired` is raised once it has passed."""
    deadline: float | None = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt took longer than its timeout")
    return left if timeout is None else min(timeout, left)


class _Deadlined(httpcore.NetworkStream):
    """A connection whose reads and writes end by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        return _Deadlined(self._inner.start_tls(ssl_context, server_hostname, _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
