"""The grade_hash migration gives the rows already stored the digests the service gives
them, so the first re-grade after an upgrade counts a new version only where a grade
really changed."""

from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from sqlalchemy import select

from app.db import models as m
from app.db.engine import Database, make_engine
from app.db.migrate import ALLOW_DOWNGRADE, alembic_config
from app.domain.rulebook import load_rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event
from app.services.projects import create_project
from app.services.state import regrade_for_time
from app.settings import Settings

RULEBOOK = load_rulebook()
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
BEFORE = "5c1d2e7a9b40"  # the revision before grade_hash


def _stored(db: Database) -> dict[tuple[str, int], tuple[int | None, int]]:
    with db.session(write=False) as s:
        return {
            (model.__tablename__, id_): (digest, version)
            for model in (m.Customer, m.Project)
            for id_, digest, version in s.execute(select(model.id, model.grade_hash, model.version))
        }


def test_the_migration_computes_the_digests_the_service_writes(empty_url: str) -> None:
    cfg = alembic_config(Settings(database_url=empty_url))
    command.upgrade(cfg, "head")
    db = Database(make_engine(empty_url))
    try:
        with db.session(write=True) as s:
            owner = create_customer(s, RULEBOOK, {"name": "仁济医院基建处", "kind": "owner"}, now=NOW).id
            installer = create_customer(s, RULEBOOK, {"name": "上海建工安装", "kind": "installer"}, now=NOW).id
            s.flush()
            project = create_project(s, RULEBOOK, {"name": "门诊楼暖通", "owner_id": owner}, now=NOW).id
        events = [
            *(NewEvent(type="visit", customer_id=owner, occurred_at=NOW, attributes={"reception": "welcoming"}) for _ in range(3)),
            NewEvent(type="stage_changed", project_id=project, occurred_at=NOW, attributes={"stage": "bidding"}),
            NewEvent(type="bid_joined", customer_id=installer, project_id=project, occurred_at=NOW, attributes={"with_our_product": True}),
        ]
        for new in events:
            with db.session(write=True) as s:
                record_event(s, RULEBOOK, new, actor="test", now=NOW)
        written = _stored(db)
        assert len(written) == 3 and all(digest is not None for digest, _ in written.values())
        assert written[("projects", project)][1] > 1  # a grade that changed: a non-trivial one

        cfg.attributes[ALLOW_DOWNGRADE] = True  # through the append-only triggers' revisions, with rows in the log
        command.downgrade(cfg, BEFORE)
        command.upgrade(cfg, "head")
        assert _stored(db) == written

        # A re-grade of everything changes no grade, so it counts no version.
        with db.session(write=True) as s:
            assert regrade_for_time(s, RULEBOOK, now=NOW) == []
        assert _stored(db) == written
    finally:
        db.dispose()
