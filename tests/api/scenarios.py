"""Small set-ups the API tests share: customers brought to a level through the API, and
API keys with chosen scopes. Each returns what a test asserts on (ids, the logged events)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.services.keys import create_key, revoke_key


def at(day: int, hour: int = 10) -> str:
    """An instant in November 2026 (the test clock's now is 20 Nov 09:00 UTC), Beijing time."""
    return f"2026-11-{day:02d}T{hour:02d}:00:00+08:00"


def issue_key(app: FastAPI, name: str, scopes: list[str], *, revoked: bool = False) -> str:
    """Create an API key the way `rapport keys create` does; return its secret."""
    ctx = app.state.context
    with ctx.db.session(write=True) as session:
        _, secret = create_key(session, name, scopes, now=ctx.clock())
        if revoked:
            revoke_key(session, name, now=ctx.clock())
    return secret


def owner_level_one_events(api: Any, owner_id: int, *, last_reception: str = "neutral", visits: int = 3) -> list[dict[str, Any]]:
    """Example 1 of the rulebook: O1.1–O1.5 logged, three visits (the last with this reception).
    With `visits=2` the third visit is left for the test to log (on 7 Nov)."""
    events = [
        api.event("materials_sent", customer_id=owner_id, at=at(1), attributes={"items": ["samples", "credentials"]}),
        api.event("company_introduced", customer_id=owner_id, at=at(2)),
        api.event("contact_obtained", customer_id=owner_id, at=at(3)),
        api.event("impression_confirmed", customer_id=owner_id, at=at(4)),
        api.event("visit", customer_id=owner_id, at=at(5), attributes={"reception": "welcoming"}),
        api.event("visit", customer_id=owner_id, at=at(6), attributes={"reception": "neutral"}),
    ]
    if visits == 3:
        events.append(api.event("visit", customer_id=owner_id, at=at(7), attributes={"reception": last_reception}))
    return events


def owner_level_two_events(api: Any, owner_id: int) -> list[dict[str, Any]]:
    """O2.1–O2.4 logged."""
    return [
        api.event("product_understood", customer_id=owner_id, at=at(8)),
        api.event("private_meeting", customer_id=owner_id, at=at(9)),
        api.event("info_shared", customer_id=owner_id, at=at(10), attributes={"kind": "important"}),
        api.event("easy_access", customer_id=owner_id, at=at(11)),
    ]


def owner_at_level_two(api: Any, name: str = "上海市第六人民医院基建处") -> dict[str, Any]:
    owner = api.create_customer(name, "owner")
    owner_level_one_events(api, owner["id"])
    owner_level_two_events(api, owner["id"])
    return owner


def installer_level_one_events(api: Any, installer_id: int) -> list[dict[str, Any]]:
    """I1.1–I1.5 logged; the visits are the last three events."""
    return [
        api.event("materials_sent", customer_id=installer_id, at=at(1), attributes={"items": ["price_list"]}),
        api.event("company_introduced", customer_id=installer_id, at=at(2)),
        api.event("inquiry_received", customer_id=installer_id, at=at(3)),
        api.event("impression_confirmed", customer_id=installer_id, at=at(4)),
        api.event("visit", customer_id=installer_id, at=at(5), attributes={"reception": "welcoming"}),
        api.event("visit", customer_id=installer_id, at=at(6), attributes={"reception": "welcoming"}),
        api.event("visit", customer_id=installer_id, at=at(7), attributes={"reception": "neutral"}),
    ]


def installer_at_level_one(api: Any, name: str = "上海建工安装有限公司") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    installer = api.create_customer(name, "installer")
    return installer, installer_level_one_events(api, installer["id"])


def level(api: Any, customer_id: int) -> int:
    return api.get(f"/v1/customers/{customer_id}").json()["relationship"]["level"]


def heat(api: Any, project_id: int) -> dict[str, Any]:
    return api.get(f"/v1/projects/{project_id}").json()["heat"]
