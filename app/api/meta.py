"""Health, readiness and the active rulebook."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ContextDep, Reader
from app.api.gate import Gated
from app.api.problems import AUTHENTICATED, app_error_response, problem, problem_response
from app.api.threads import run_readiness
from app.errors import RulebookChanged
from app.grading import in_force

router = APIRouter(tags=["meta"], route_class=Gated)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No auth, no database, and no worker thread: a
    process whose threads are all busy is alive, and must not be restarted for it."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: problem_response("the database cannot be reached, or this process's rulebook is no longer the active one", "Retry-After")})
async def readyz(ctx: ContextDep) -> Any:
    """Readiness: the database answers, and this process's rulebook is still the active
    one (a process left on another after a switch grades nothing: restart it). No auth.
    Checked on a thread of its own: requests waiting on the database do not hold it up."""

    def check() -> None:
        with ctx.db.session(write=False) as session:
            in_force(session, ctx.rulebook)

    try:
        await run_readiness(check)
    except RulebookChanged as exc:
        return app_error_response(exc)
    except Exception:  # noqa: BLE001 - any failure means not ready
        return problem(503, "unavailable", "Service unavailable", "the database cannot be reached", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "rulebook_version": ctx.rulebook.version})


@router.get("/v1/rulebook", responses=AUTHENTICATED)
async def rulebook(ctx: ContextDep, caller: Reader) -> dict[str, Any]:
    """The active rulebook: its version, the event catalogue with each type's attributes,
    the levels of each customer kind and the heat tiers, with their criteria and labels."""
    return dict(ctx.rulebook.source)
