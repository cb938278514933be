"""Health, readiness and the active rulebook."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import ContextDep, Reader
from app.api.gate import Gated
from app.api.problems import AUTHENTICATED, problem, problem_response

router = APIRouter(tags=["meta"], route_class=Gated)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No auth, no database, and no worker thread: a
    process whose threads are all busy is alive, and must not be restarted for it."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: problem_response("the database cannot be reached")})
def readyz(ctx: ContextDep) -> Any:
    """Readiness: the database answers. No auth."""
    try:
        with ctx.db.session(write=False) as session:
            session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means not ready
        return problem(503, "unavailable", "Service unavailable", "the database cannot be reached", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "rulebook_version": ctx.rulebook.version})


@router.get("/v1/rulebook", responses=AUTHENTICATED)
async def rulebook(ctx: ContextDep, caller: Reader) -> dict[str, Any]:
    """The active rulebook: its version, the event catalogue with each type's attributes,
    the levels of each customer kind and the heat tiers, with their criteria and labels."""
    return dict(ctx.rulebook.source)
