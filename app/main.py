"""The application factory."""

from __future__ import annotations

import logging
from typing import Callable
from datetime import datetime

from fastapi_offline import FastAPIOffline

from app.api import customers, events, forms, meta, problems, projects
from app.api.deps import Context, utc_now
from app.api.present import Presenter
from app.db.engine import Database, make_engine
from app.domain.rulebook import load_rulebook
from app.settings import Settings, get_settings

DESCRIPTION = """Rapport keeps a B2B sales team's customers (project owners 项目甲方 and
installation contractors 安装公司), projects and logged interaction events, and derives from
the events each customer's **relationship level** (0, I–IV) and each project's **deal heat**
(0/30/50/70/90/100 %) by a versioned rulebook — explained criterion by criterion, with every
change kept for audit.

Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 problem+json."""


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now) -> FastAPIOffline:
    """Build the app. The rulebook is loaded and validated here: a broken one refuses to start."""
    settings = settings or get_settings()
    rulebook = load_rulebook(settings.rulebook_path)
    db = Database(make_engine(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms))
    app = FastAPIOffline(title="Rapport", version="0.1.0", description=DESCRIPTION)
    app.state.context = Context(settings=settings, db=db, rulebook=rulebook, presenter=Presenter(rulebook), clock=clock)
    problems.install(app)
    for module in (meta, customers, projects, events, forms):
        app.include_router(module.router)
    logging.getLogger("rapport").setLevel(logging.INFO)
    return app
