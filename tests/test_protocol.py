"""The HTTP protocol `rapport serve` runs (app/api/protocol.py): a request's head is bounded,
and what the network hands over is counted as the head only where it is the head. Fed
piece by piece, as asyncio hands a connection's bytes over, to a tiny ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api.protocol import MAX_HEAD, BoundedHead


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _served(pieces: list[bytes]) -> bytes:
    """What the protocol wrote back after reading `pieces`, one `data_received` each."""

    async def go() -> bytes:
        config = Config(app=_ok, http=BoundedHead, log_level="warning", lifespan="off")
        config.load()
        protocol = BoundedHead(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        for piece in pieces:
            if transport.is_closing():
                break
            protocol.data_received(piece)
            await asyncio.sleep(0)  # let the app run
        await asyncio.sleep(0.05)  # and answer a pipelined request after the one before it
        protocol.connection_lost(None)  # its keep-alive timer
        return transport.written

    return asyncio.run(go())


def _statuses(written: bytes) -> list[bytes]:
    return [line.split(b" ")[1] for line in written.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_a_head_that_keeps_coming_past_the_bound_is_431() -> None:
    pieces = [b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: "] + [b"A" * 16384] * (MAX_HEAD // 16384 + 2) + [b"\r\n\r\n"]
    assert _statuses(_served(pieces)) == [b"431"]


def test_a_head_in_many_small_pieces_under_the_bound_is_served() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"A" * (MAX_HEAD - 1024) + b"\r\n\r\n"
    assert _statuses(_served([head[i : i + 100] for i in range(0, len(head), 100)])) == [b"200"]


@pytest.mark.parametrize("body", [100 * 1024, 300 * 1024])
def test_the_previous_requests_body_is_not_counted_as_the_next_head(body: int) -> None:
    """A pipelined POST's tail arrived in the piece where the next request began, and was
    counted as that request's head: 431, and the connection closed (a review's find)."""
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(body).encode() + b"\r\n\r\n"
    pieces = [post, b"x" * body + b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n"]
    # The POST is answered; the GET is queued behind it (uvicorn answers a pipelined request
    # once the one before it is done, which this harness does not wait for), not refused.
    assert _statuses(_served(pieces))[:1] == [b"200"]
    assert b"431" not in _served(pieces)
