"""API tests: the real app through httpx (ASGITransport) against a real database."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Iterator

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.main import create_app
from app.settings import Settings
from app.startup import initialize
from tests.conftest import Clock, empty_tables

ADMIN = "test-admin-secret"


@pytest.fixture
def app(migrated: str, settings: Settings, clock: Clock):  # noqa: ANN201
    """A fresh app on an emptied database (the schema stays: built once by Alembic)."""
    application = create_app(settings, clock=clock)
    engine = application.state.context.db.engine
    empty_tables(engine)
    ctx = application.state.context
    initialize(ctx.db, settings, ctx.rulebook, now=clock())
    yield application
    ctx.db.dispose()


class Api:
    """A thin client: `api.post("/v1/events", {...})` returns the httpx response."""

    def __init__(self, client: "Client"):
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def create_customer(self, name: str = "上海建工安装有限公司", kind: str = "installer", **fields: Any) -> dict[str, Any]:
        r = self.client.post("/v1/customers", json={"name": name, "kind": kind, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def create_project(self, owner_id: int, name: str = "新门诊楼暖通工程", **fields: Any) -> dict[str, Any]:
        r = self.client.post("/v1/projects", json={"name": name, "owner_id": owner_id, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def event(self, type_: str, *, at: str = "2026-11-19T10:00:00+08:00", **fields: Any) -> dict[str, Any]:
        attributes = fields.pop("attributes", {})
        r = self.client.post("/v1/events", json={"type": type_, "occurred_at": at, "attributes": attributes, **fields})
        assert r.status_code == 201, r.text
        return r.json()


class Client:
    """httpx through ASGITransport, driven from synchronous tests by an anyio portal
    (the app itself runs in the portal's event loop, as under uvicorn)."""

    def __init__(self, portal: BlockingPortal, app, headers: dict[str, str]):  # noqa: ANN001
        self._portal = portal
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test", headers=headers)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(lambda: self._client.request(method, url, **kwargs))

    def send_soon(self, method: str, url: str, **kwargs: Any) -> Future[httpx.Response]:
        """Send without waiting for the answer: several requests in flight at once."""
        return self._portal.start_task_soon(lambda: self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._portal.call(self._client.aclose)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as p:
        yield p


@pytest.fixture
def client_for(app, portal: BlockingPortal) -> Iterator[Callable[[str | None], Client]]:  # noqa: ANN001
    """Make a client that sends the given API key secret (None: no Authorization header)."""
    made: list[Client] = []

    def make(secret: str | None, **headers: str) -> Client:
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        c = Client(portal, app, headers)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(client_for) -> Client:  # noqa: ANN001
    """A client with the bootstrap admin key."""
    return client_for(ADMIN)


@pytest.fixture
def api(client: Client) -> Api:
    return Api(client)


@pytest.fixture
def anonymous(client_for) -> Client:  # noqa: ANN001
    return client_for(None)
