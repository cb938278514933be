"""Where outbound webhooks may go (app/services/egress.py): the address policy, and the
worker's client, which resolves a host itself and connects only to addresses it checked."""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest

from app.services.egress import Egress

DEFAULT = Egress()


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254", "169.254.0.23", "fe80::1", "100.100.100.200", "fd00:ec2::254", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255"],
)
def test_the_machine_itself_metadata_and_non_addresses_are_refused_by_default(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::", "64:ff9b::808:808", "10.1.2.3", "172.16.0.9", "192.168.1.20", "fc00::5", "100.64.3.4"])
def test_public_and_private_networks_are_allowed_by_default(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.9", "192.168.1.20", "fc00::5", "100.64.3.4", "::ffff:10.0.0.1"])
def test_private_networks_can_be_refused(address: str) -> None:
    reason = Egress(allow_private=False).refusal(ipaddress.ip_address(address))
    assert reason is not None and "RAPPORT_WEBHOOK_ALLOW_PRIVATE" in reason


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_can_be_allowed_but_never_the_metadata_endpoint(address: str) -> None:
    allowing = Egress(allow_loopback=True, allow_private=True)
    assert allowing.refusal(ipaddress.ip_address(address)) is None
    assert allowing.refusal(ipaddress.ip_address("169.254.169.254")) is not None
    assert allowing.refusal(ipaddress.ip_address("100.100.100.200")) is not None


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080/hooks", True),
        ("https://[::1]/hooks", True),
        ("http://169.254.169.254/latest/meta-data/", True),
        ("http://[::ffff:169.254.169.254]/", True),
        ("https://hooks.example.com/rapport", False),  # a name: checked when the worker connects
        ("http://localhost:8080/", False),
        ("https://10.0.0.8/erp/hooks", False),
    ],
)
def test_a_subscription_url_naming_a_refused_address_is_refused_at_once(url: str, refused: bool) -> None:
    problem = DEFAULT.url_problem(url)
    assert (problem is not None) == refused
    if refused:
        assert urlhost(url) in problem


def urlhost(url: str) -> str:
    return httpx.URL(url).host


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("0", "0.0.0.0"),
        ("2852039166", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
    ],
)
def test_an_address_written_as_the_resolver_reads_it_is_refused_at_once(host: str, address: str) -> None:
    # What the worker's resolver (inet_aton) turns into a refused address is refused when
    # the subscription is made, as the address itself is: not only at delivery.
    problem = DEFAULT.url_problem(f"http://{host}:8080/hooks")
    assert problem is not None
    assert address in problem
    assert DEFAULT.refusal(ipaddress.ip_address(address)) in problem


@pytest.mark.parametrize("host", ["10.1", "167772161", "0x08080808", "8.8.8.8"])
def test_an_allowed_address_written_as_a_number_is_allowed(host: str) -> None:
    assert DEFAULT.url_problem(f"http://{host}/hooks") is None


def test_names_are_not_looked_up_when_a_subscription_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int]] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, flags: int = 0, **kwargs: Any) -> Any:
        asked.append((host, flags))
        return real(host, *args, flags=flags, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)

    for url in ("http://localhost:8080/", "https://hooks.example.com/rapport", "http://127.1/"):
        DEFAULT.url_problem(url)

    assert all(flags & socket.AI_NUMERICHOST for _, flags in asked)


class Receiver:
    """Answers 200 to any POST on loopback, and records the Host header of each."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append({"headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _post(egress: Egress, url: str) -> httpx.Response:
    with egress.client(5) as client:
        return client.post(url, content=b"{}")


def test_the_client_does_not_connect_to_a_refused_address(receiver: Receiver) -> None:
    with pytest.raises(httpx.ConnectError, match="refused: 127.0.0.1 resolves to 127.0.0.1, which is a loopback address"):
        _post(DEFAULT, receiver.url)
    assert receiver.requests == []


def test_a_name_is_checked_by_what_it_resolves_to(receiver: Receiver) -> None:
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    with pytest.raises(httpx.ConnectError, match="refused: localhost resolves to"):
        _post(DEFAULT, by_name)
    assert receiver.requests == []


def test_allowed_the_client_delivers(receiver: Receiver) -> None:
    assert _post(Egress(allow_loopback=True), receiver.url).status_code == 200
    assert len(receiver.requests) == 1


def _resolving(monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[str]) -> list[str]:
    """Make `name` resolve to `addresses`; returns the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != name:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_one_refused_address_among_a_names_addresses_refuses_the_name(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving(monkeypatch, "mixed.example", ["192.0.2.10", "169.254.169.254"])
    with pytest.raises(httpx.ConnectError, match="169.254.169.254"):
        _post(Egress(allow_loopback=True), receiver.url.replace("127.0.0.1", "mixed.example"))


def test_the_connection_goes_to_the_address_checked_and_the_host_is_still_named(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolved once, by the guard; the connection is made to that address, so a second
    # lookup answering otherwise (DNS rebinding) has nothing to change.
    asked = _resolving(monkeypatch, "receiver.example", ["127.0.0.1"])
    url = receiver.url.replace("127.0.0.1", "receiver.example")

    assert _post(Egress(allow_loopback=True), url).status_code == 200

    assert asked == ["receiver.example"]
    assert receiver.requests[0]["headers"]["host"].startswith("receiver.example")
