"""What a caller can see, gathered for assertions: problem+json answers, and the stored
state (events, grades, history) that a refused request must leave exactly as it was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text

from tests.conftest import TABLES

PROBLEM_TYPE = "application/problem+json"


def row_counts(app) -> dict[str, int]:  # noqa: ANN001
    """How many rows each table holds: what a refused request must leave as it was."""
    with app.state.context.db.engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in TABLES}


def assert_problem(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; its `errors` name each of `fields`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_TYPE), response.headers["content-type"]
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"], body
    if fields:
        errors = body.get("errors")
        assert errors, body
        for error in errors:
            assert error["field"] and error["reason"], error
        named = {e["field"] for e in errors}
        for field in fields:
            assert field in named, f"{field!r} not named in {errors}"
    return body


def error_fields(response: httpx.Response) -> set[str]:
    return {e["field"] for e in response.json().get("errors", [])}


def all_pages(client: Any, url: str, **params: Any) -> list[dict[str, Any]]:
    """Follow `next_cursor` to the end; fail on a duplicate id (a page boundary seen twice)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)), f"duplicate ids across pages: {ids}"
    return items


@dataclass(frozen=True)
class StoredState:
    events: list[dict[str, Any]]
    customers: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]  # id -> (customer, history)
    projects: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]


def stored_state(client: Any, *, customers: tuple[int, ...] = (), projects: tuple[int, ...] = ()) -> StoredState:
    """Everything a reader can see of the log and of these subjects' grades and history."""

    def subject(kind: str, id_: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        r = client.get(f"/v1/{kind}/{id_}")
        assert r.status_code == 200, r.text
        return r.json(), all_pages(client, f"/v1/{kind}/{id_}/history", limit=200)

    return StoredState(
        events=all_pages(client, "/v1/events", limit=200),
        customers={c: subject("customers", c) for c in customers},
        projects={p: subject("projects", p) for p in projects},
    )


def assert_if_match_guards_patch(api: Any, path: str, created: httpx.Response, change: dict[str, Any], *, other_path: str) -> None:  # noqa: ANN401
    """The resource at `path` carries an ETag (from its creation, its GET and each PATCH),
    and a PATCH with If-Match applies only at the version read: a stale ETag, or one of
    another resource (`other_path`), is a 412, a malformed one a 422, and neither changes
    anything."""
    read = api.get(path)
    assert created.headers["etag"] == read.headers["etag"]
    field, value = next(iter(change.items()))
    before = read.json()[field]

    assert_problem(api.patch(path, json=change, headers={"If-Match": api.get(other_path).headers["etag"]}), 412)
    assert_problem(api.patch(path, json=change, headers={"If-Match": "version 1"}), 422, "If-Match")
    assert api.get(path).json()[field] == before

    applied = api.patch(path, json=change, headers={"If-Match": read.headers["etag"]})
    assert applied.status_code == 200, applied.text
    assert applied.json()[field] == value and applied.headers["etag"] != read.headers["etag"]
    assert api.get(path).headers["etag"] == applied.headers["etag"]

    assert_problem(api.patch(path, json={field: before}, headers={"If-Match": read.headers["etag"]}), 412)  # read before the change
    assert api.get(path).json()[field] == value
    assert api.patch(path, json={field: before}).status_code == 200  # no If-Match: applies, as for customers
