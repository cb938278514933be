"""A project read is one statement (app/services/projects.py, `_with_bids`): the project's
row, then a row per live bid. On PostgreSQL a prepared statement is planned generically after
five runs; that plan must not do per-bid work on the project's side."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
from sqlalchemy.dialects import postgresql

from app.db.engine import Database
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.projects import _WITH_BIDS, create_project, read_with_participants

RULEBOOK = load_rulebook()
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def test_the_generic_plan_of_a_project_read_by_id_reads_the_project_once(db: Database) -> None:
    """Joined to projects to find them, the bids made PostgreSQL's generic plan probe the
    project's key once per bid (a review's find: 39-49 ms against 5.5 ms for a project with
    4,000 bid events). The bids are found by their own project_id."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL's plan cache")
    with db.session(write=True) as s:
        owner = create_customer(s, RULEBOOK, {"name": "业主", "kind": "owner"}, now=NOW)
        installers = [create_customer(s, RULEBOOK, {"name": f"安装公司{i}", "kind": "installer"}, now=NOW) for i in range(12)]
        project = create_project(s, RULEBOOK, {"name": "项目", "owner_id": owner.id}, now=NOW)
        project_id = project.id
    for i in range(60):
        bid = NewEvent(type="bid_joined", customer_id=installers[i % 12].id, project_id=project_id, occurred_at=NOW, source="t", external_id=f"bid-{i}")
        db.transaction(lambda s, bid=bid: record_event(s, RULEBOOK, bid, actor="t", now=NOW))
    row, (bidders, _) = asyncio.run(read_with_participants(db, "id", project_id))
    assert row.id == project_id and len(bidders) == 12

    compiled = _WITH_BIDS["id"].compile(dialect=postgresql.psycopg.dialect())
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", compiled.string)))
    sql = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", compiled.string)
    values = {**compiled.params, "value": project_id}
    with db.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("ANALYZE events; ANALYZE projects; ANALYZE customers")
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE project_read AS {sql}")
        literals = ", ".join(f"'{values[name]}'" for name in names)
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE project_read({literals})")
        plan = cursor.fetchone()[0]
        plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        conn.rollback()
    on_projects = [node for node in _nodes(plan) if node.get("Relation Name") == "projects"]
    assert on_projects and all(node["Actual Loops"] == 1 for node in on_projects), [(n["Node Type"], n["Actual Loops"]) for n in on_projects]
