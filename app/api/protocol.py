"""The HTTP protocol `rapport serve` runs: uvicorn's httptools protocol, with a bound on a
request's line and headers.

httptools sets none (uvicorn's h11 protocol has one, 16 KiB; httptools is used because it
parses faster), and it gathers a header's value piece by piece as the bytes arrive, at a
cost that grows faster than the header: a 16 MB header took 1 s of CPU and a 64 MB one 26 s,
during which the process answered nobody, `/healthz` included. No key is needed to send one,
so the rate limit never saw it (a hunt's find). A request whose line and headers pass about
`MAX_HEAD` bytes is now answered 431 and its connection closed.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # nginx's largest default is 4 buffers of 8 KiB; an API key is 47 bytes

_TOO_LARGE = json.dumps(
    {
        "type": "urn:rapport:problem:headers-too-large",
        "title": "Request header fields too large",
        "status": 431,
        "detail": f"the request line and headers are larger than {MAX_HEAD} bytes",
    }
).encode()
_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TOO_LARGE
)


class BoundedHead(HttpToolsProtocol):
    """httptools, with a request's line and headers bounded by about `MAX_HEAD` bytes.

    The bytes are counted as they arrive, whole pieces of what the network hands over: each
    piece that was read wholly inside a request's head (one that began while the head was
    incomplete, and left it incomplete). The piece in which a request begins is not counted
    (part of it may be the previous request's body: a pipelined POST's tail was counted
    against the next request's head, whose connection then closed before the POST's answer
    went out, a review's find), nor the one in which a head ends. asyncio hands over at
    most 256 KiB at a time, so a head is refused within a few hundred KiB: enough to keep
    the parser's cost small, not an exact bound."""

    _head: int | None = None  # bytes of the current request's head so far; None between heads

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        inside = self._head is not None  # this piece begins inside a head
        super().data_received(data)
        if not inside or self._head is None or self.transport.is_closing():
            return
        self._head += len(data)
        if self._head > MAX_HEAD:
            self.logger.warning("a request's line and headers passed %d bytes: answered 431, connection closed", MAX_HEAD)
            self._head = None
            self.transport.write(_ANSWER)
            self.transport.close()
