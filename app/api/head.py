"""HEAD: every path served by GET is served by HEAD too, as RFC 9110 §9.1 asks of a
general-purpose server: the same status and headers as the GET (its ETag, its
Content-Length), and no body. FastAPI routes a method only where it is declared, so HEAD
was a 405 everywhere."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Run a HEAD request as its GET and drop the body from the answer (uvicorn would drop
    it too; the app does, so that any server or test client gets none)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headless(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headless)
