"""The direct reads (app/api/direct.py) answer a GET of a customer or a project by id exactly
as the route does: the same status, headers and body, for the answers and for every
refusal, on the same database. `routed` is the same app without them."""

from __future__ import annotations

import sqlite3
from typing import Any, Iterator

import httpx
import pytest
from anyio.from_thread import BlockingPortal
from sqlalchemy.exc import OperationalError

from app.api import customers as customer_routes
from app.api.direct import DirectReads
from app.main import create_app
from app.settings import Settings
from tests.api.conftest import ADMIN
from tests.api.scenarios import at, issue_key
from tests.conftest import Clock


def _without_direct_reads(application: Any) -> Any:
    application.user_middleware = [m for m in application.user_middleware if m.cls is not DirectReads]
    application.middleware_stack = None  # built again, from the list, at its first request
    return application


@pytest.fixture
def routed(app, settings: Settings, clock: Clock) -> Iterator[Any]:  # noqa: ANN001
    """The same app on the same database (after `app` emptied it), every request routed."""
    application = _without_direct_reads(create_app(settings, clock=clock))
    yield application
    application.state.context.db.dispose()


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the direct reads answered (rather than handed to the app)."""
    calls: list[str] = []
    original = DirectReads._read

    async def counted(self: DirectReads, scope: Any, read: Any, ident: int) -> Any:
        calls.append(scope["path"])
        return await original(self, scope, read, ident)

    monkeypatch.setattr(DirectReads, "_read", counted)
    return calls


class Both:
    """Sends each request to both apps and returns both answers."""

    def __init__(self, portal: BlockingPortal, direct: Any, routed: Any):
        self.portal = portal
        # raise_app_exceptions=False: an unexpected error's 500 is compared as an answer.
        self.clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a, raise_app_exceptions=False), base_url="http://rapport.test") for a in (direct, routed)
        ]

    def send(self, method: str, path: str, headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None, **kwargs: Any) -> httpx.Response:
        """The direct app's answer, once it is checked to be the routed app's to the byte."""
        direct, routed = (self.portal.call(lambda c=c: c.request(method, path, headers=headers, **kwargs)) for c in self.clients)
        assert (direct.status_code, direct.headers.raw, direct.content) == (routed.status_code, routed.headers.raw, routed.content)
        return direct

    def close(self) -> None:
        for c in self.clients:
            self.portal.call(c.aclose)


@pytest.fixture
def both(app, routed, portal: BlockingPortal) -> Iterator[Both]:  # noqa: ANN001
    b = Both(portal, app, routed)
    yield b
    b.close()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def graded(api) -> dict[str, int]:  # noqa: ANN001
    """An owner with a project an installer bid on, and events that grade all three."""
    owner = api.create_customer("华润置地", "owner")
    installer = api.create_customer("上海建工安装有限公司", "installer")
    project = api.create_project(owner["id"])
    api.event("visit", customer_id=installer["id"], at=at(1), attributes={"reception": "welcoming"})
    api.event("company_introduced", customer_id=owner["id"], at=at(2))
    api.event("bid_joined", customer_id=installer["id"], project_id=project["id"], at=at(3))
    return {"owner": owner["id"], "installer": installer["id"], "project": project["id"]}


def test_a_customer_and_a_project_read_directly_are_the_routes_answers(both: Both, graded: dict[str, int], direct_calls: list[str]) -> None:
    for path in (f"/v1/customers/{graded['owner']}", f"/v1/customers/{graded['installer']}", f"/v1/projects/{graded['project']}"):
        r = both.send("GET", path, _bearer(ADMIN))
        assert r.status_code == 200 and r.headers["etag"]
    project = both.send("GET", f"/v1/projects/{graded['project']}", _bearer(ADMIN)).json()
    assert [b["id"] for b in project["bidders"]] == [graded["installer"]]
    assert len(direct_calls) == 4  # answered directly, not handed on


def test_head_is_answered_directly_without_a_body(both: Both, graded: dict[str, int], direct_calls: list[str]) -> None:
    r = both.send("HEAD", f"/v1/customers/{graded['owner']}", _bearer(ADMIN))

    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    assert direct_calls == [f"/v1/customers/{graded['owner']}"]


@pytest.mark.parametrize("path", ["/v1/customers/987654", "/v1/projects/987654"])
def test_a_missing_record_is_the_routes_404(both: Both, path: str, direct_calls: list[str]) -> None:
    r = both.send("GET", path, _bearer(ADMIN))

    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert direct_calls == [path]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no Authorization"),
        pytest.param({"Authorization": f"Basic {ADMIN}"}, id="not Bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty secret"),
        pytest.param(_bearer("rk_not-a-key-we-issued"), id="unknown key"),
    ],
)
def test_a_key_refused_is_refused_as_the_route_refuses_it(both: Both, graded: dict[str, int], headers: dict[str, str]) -> None:
    r = both.send("GET", f"/v1/customers/{graded['owner']}", headers)

    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_and_a_key_without_read_are_refused_alike(both: Both, app, graded: dict[str, int]) -> None:  # noqa: ANN001
    revoked = issue_key(app, "old-phone", ["read"], revoked=True)
    writer = issue_key(app, "form-7", ["write"])

    assert both.send("GET", f"/v1/projects/{graded['project']}", _bearer(revoked)).status_code == 401
    assert both.send("GET", f"/v1/projects/{graded['project']}", _bearer(writer)).status_code == 403
    assert both.send("GET", f"/v1/projects/{graded['project']}", _bearer(issue_key(app, "phone", ["read"]))).status_code == 200


@pytest.mark.parametrize(
    ("actor", "status"),
    [("王芳".encode(), 200), ("王芳".encode("gbk"), 422), (b"x" * 101, 422), (b"  ", 200)],
    ids=["UTF-8 name", "GBK bytes", "too long", "blank"],
)
def test_x_actor_is_checked_as_the_route_checks_it(both: Both, graded: dict[str, int], actor: bytes, status: int) -> None:
    r = both.send("GET", f"/v1/customers/{graded['installer']}", [(b"Authorization", f"Bearer {ADMIN}".encode()), (b"X-Actor", actor)])

    assert r.status_code == status


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/05",  # a leading zero: no id
        "/v1/customers/9223372036854775808",  # beyond 64 bits
        "/v1/customers/0",
        "/v1/customers/{id}/",  # a trailing slash
        "/v1/customers/{id}?limit=5",  # a query the route does not take
        "/v1/projects/{project}/history",
    ],
)
def test_what_the_direct_reads_do_not_claim_is_the_routes_answer(both: Both, graded: dict[str, int], path: str, direct_calls: list[str]) -> None:
    both.send("GET", path.format(id=graded["owner"], project=graded["project"]), _bearer(ADMIN))

    assert direct_calls == []


def test_an_id_written_with_an_escape_is_the_id(both: Both, graded: dict[str, int], direct_calls: list[str]) -> None:
    owner = str(graded["owner"])

    r = both.send("GET", f"/v1/customers/%3{owner[0]}{owner[1:]}", _bearer(ADMIN))

    assert r.status_code == 200 and r.json()["id"] == graded["owner"]
    assert direct_calls == [f"/v1/customers/{owner}"]


def test_a_compressed_body_on_a_read_is_refused_before_it(both: Both, graded: dict[str, int], direct_calls: list[str]) -> None:
    headers = {**_bearer(ADMIN), "Content-Encoding": "gzip"}

    assert both.send("GET", f"/v1/customers/{graded['owner']}", headers, content=b"\x1f\x8b").status_code == 415
    assert direct_calls == []


def test_the_rate_limit_is_spent_and_refused_alike(migrated: str, clock: Clock, portal: BlockingPortal, api, direct_calls: list[str]) -> None:  # noqa: ANN001
    limited = Settings(database_url=migrated, bootstrap_key=ADMIN, rate_limit_per_second=0.001, rate_limit_burst=2)
    customer = api.create_customer()
    direct, routed = create_app(limited, clock=clock), _without_direct_reads(create_app(limited, clock=clock))
    b = Both(portal, direct, routed)
    try:
        statuses = [b.send("GET", f"/v1/customers/{customer['id']}", _bearer(ADMIN)).status_code for _ in range(3)]
        refused = b.send("GET", f"/v1/customers/{customer['id']}", _bearer(ADMIN))
    finally:
        b.close()
        for a in (direct, routed):
            a.state.context.db.dispose()

    assert statuses == [200, 200, 429]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert len(direct_calls) == 4


def test_a_database_that_fails_the_read_is_the_routes_503(both: Both, graded: dict[str, int], monkeypatch: pytest.MonkeyPatch, direct_calls: list[str]) -> None:
    async def failing(*_args: Any) -> Any:
        raise OperationalError("SELECT …", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(customer_routes, "read_alone", failing)

    r = both.send("GET", f"/v1/customers/{graded['owner']}", _bearer(ADMIN))

    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert direct_calls


def test_an_unexpected_error_is_the_routes_500(both: Both, graded: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(customer_routes, "read_alone", broken)

    r = both.send("GET", f"/v1/customers/{graded['owner']}", _bearer(ADMIN))

    assert r.status_code == 500 and r.json()["type"] == "urn:rapport:problem:internal"


def test_while_opentelemetry_records_a_request_the_route_answers_it(app, graded: dict[str, int], portal: BlockingPortal, direct_calls: list[str]) -> None:  # noqa: ANN001
    # FastAPI names the route in its spans and metrics as it routes: a request it records
    # (its telemetry in the scope) is left to the route, so that it is named.
    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    path = f"/v1/customers/{graded['owner']}"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [(b"host", b"rapport.test"), (b"authorization", f"Bearer {ADMIN}".encode())],
        "client": ("127.0.0.1", 5000), "server": ("rapport.test", 80), "fastapi.telemetry": object(), "app": app,
    }
    routed: list[str] = []

    async def the_app(scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])

    portal.call(DirectReads(the_app, app.state.context), scope, receive, send)
    portal.call(DirectReads(the_app, app.state.context), {**scope, "fastapi.telemetry": None}, receive, send)

    assert routed == [path]  # the first handed on; the second (telemetry off) answered directly
    assert direct_calls == [path] and answers[0]["status"] == 200


@pytest.mark.parametrize("opentelemetry", [False, True])
def test_opentelemetry_is_looked_for_only_when_asked_for(migrated: str, clock: Clock, portal: BlockingPortal, monkeypatch: pytest.MonkeyPatch, opentelemetry: bool) -> None:
    # FastAPI's telemetry asks on every request whether a tracer provider is configured
    # (RAPPORT_OPENTELEMETRY): a cost every read paid for traces nobody had asked for.
    from opentelemetry import trace

    asked: list[int] = []
    real = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: asked.append(1) or real())
    application = create_app(Settings(database_url=migrated, bootstrap_key=ADMIN, opentelemetry=opentelemetry), clock=clock)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://rapport.test")
    try:
        assert portal.call(lambda: client.get("/healthz")).status_code == 200
    finally:
        portal.call(client.aclose)
        application.state.context.db.dispose()

    assert bool(asked) == opentelemetry
