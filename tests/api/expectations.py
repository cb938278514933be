"""What a caller can see, gathered for assertions: problem+json answers, and the stored
state (events, grades, history) that a refused request must leave exactly as it was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

PROBLEM_TYPE = "application/problem+json"


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
