"""Form-tool webhooks in: /v1/forms (mappings, admin), /v1/hooks/forms/{form_id} (the tools
call it), /v1/inbox (submissions that could not be mapped, admin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import schemas as s
from app.api.deps import Admin, ContextDep
from app.api.etags import IfMatch, Precondition, etag, parse_if_match
from app.api.problems import AUTHENTICATED, problem_response, problem_responses, with_headers
from app.api.gate import Gated, spend_hook
from app.db import models as m
from app.domain.form_payloads import shown_text
from app.services import forms as svc

router = APIRouter(tags=["forms"], route_class=Gated, responses=AUTHENTICATED)
FormIfMatch = Annotated[Precondition, Header(description="the ETag you read; 412 if the form changed since")]

FormIdPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="the form's slug")]


def _form(form: m.FormMapping) -> s.FormOut:
    return s.FormOut(
        id=form.id,
        form_id=form.form_id,
        name=form.name,
        description=form.description,
        tool=form.tool,
        auth_scheme=form.auth_scheme,
        hook_path=f"/v1/hooks/forms/{form.form_id}",
        enabled=form.enabled,
        spec=form.spec,
        previous_secret_until=form.previous_secret_until,
        version=form.version,
        created_at=form.created_at,
        updated_at=form.updated_at,
    )


def _with_secret(form: m.FormMapping) -> s.FormSecretOut:
    return s.FormSecretOut(**_form(form).model_dump(), secret=form.secret, hook_url_path=svc.hook_path(form))


def _submission(session: Session, row: m.FormSubmission, *, detail: bool = False) -> s.SubmissionOut:
    form = session.get(m.FormMapping, row.form_mapping_id)
    fields = dict(
        id=row.id,
        form_id=form.form_id if form else "?",
        delivery_id=row.delivery_id,
        status=row.status,
        received_at=row.received_at,
        problems=row.problems,
        event_ids=row.event_ids,
        attempts=row.attempts,
        resolved_at=row.resolved_at,
        resolution=row.resolution,
        actor=row.actor,
    )
    if detail:
        return s.SubmissionDetailOut(**fields, content_type=row.content_type, body=shown_text(row.content_type, row.body))
    return s.SubmissionOut(**fields)


def _hook_out(session: Session, received: svc.Received, *, to_the_tool: bool = False) -> s.HookOut:
    """The answer to a replay, or `to_the_tool` to a delivery. A duplicate's answer to the tool
    leaves out what was decided about the stored submission since it came (its problems, a
    dismissal's reason, who replayed or dismissed it): a form's secret reads nothing, and
    with `url_token` the body is not signed, so whoever holds the URL could name any
    delivery id and read those (a hunt's find)."""
    submission = _submission(session, received.submission)
    if to_the_tool and received.outcome == "duplicate":
        submission = submission.model_copy(update={"problems": [], "resolution": None, "actor": None})
    return s.HookOut(outcome=received.outcome, submission=submission, effects=[e.as_dict() for e in received.effects])


# --- mappings (admin) ------------------------------------------------------------------------


@router.post("/v1/forms", status_code=201, response_model=s.FormSecretOut, responses={201: with_headers("ETag", "Location"), **problem_responses(400, 409, 413)})
def create_form(body: s.FormIn, ctx: ContextDep, caller: Admin) -> JSONResponse:
    """Set up a form: how its hook is authenticated and how a submission becomes events.
    The answer shows the secret (and, for url_token, the hook URL with it) once."""

    def write(session: Session) -> JSONResponse:
        form = svc.create_form(session, ctx.rulebook, body.model_dump(exclude_none=True), now=ctx.clock())
        headers = {"Location": f"/v1/forms/{form.form_id}", "ETag": etag("form", form.form_id, form.version)}
        return JSONResponse(_with_secret(form).model_dump(mode="json"), status_code=201, headers=headers)

    return ctx.db.transaction(write)


@router.get("/v1/forms", response_model=s.FormPage)
def list_forms(
    ctx: ContextDep,
    caller: Admin,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> s.FormPage:
    with ctx.db.session(write=False) as session:
        rows, next_cursor = svc.list_forms(session, limit=limit, cursor=cursor)
        return s.FormPage(items=[_form(f) for f in rows], next_cursor=next_cursor)


@router.get("/v1/forms/{form_id}", response_model=s.FormOut, responses={200: with_headers("ETag"), **problem_responses(404)})
def get_form(form_id: FormIdPath, ctx: ContextDep, caller: Admin, response: Response) -> s.FormOut:
    """One form (never its secret), with its ETag for a later PATCH's If-Match."""
    with ctx.db.session(write=False) as session:
        form = svc.get_form(session, form_id)
        response.headers["ETag"] = etag("form", form.form_id, form.version)
        return _form(form)


@router.patch("/v1/forms/{form_id}", response_model=s.FormOut, responses={200: with_headers("ETag"), **problem_responses(400, 404, 412, 413)})
def update_form(
    form_id: FormIdPath,
    body: s.FormPatch,
    ctx: ContextDep,
    caller: Admin,
    response: Response,
    if_match: FormIfMatch = None,
) -> s.FormOut:
    """Change the name, the mapping or whether the hook is enabled. Submissions waiting in the
    inbox can then be replayed with the new mapping."""
    version = parse_if_match(if_match, "form", form_id)

    def write(session: Session) -> s.FormOut:
        form = svc.update_form(session, ctx.rulebook, form_id, body.model_dump(exclude_unset=True), if_match=version, now=ctx.clock())
        response.headers["ETag"] = etag("form", form.form_id, form.version)
        return _form(form)

    return ctx.db.transaction(write)


@router.post("/v1/forms/{form_id}/rotate-secret", response_model=s.FormSecretOut, responses={200: with_headers("ETag"), **problem_responses(400, 404, 412, 413)})
def rotate_secret(form_id: FormIdPath, ctx: ContextDep, caller: Admin, response: Response, body: s.RotateSecretIn | None = None, if_match: IfMatch = None) -> s.FormSecretOut:
    """Issue a new secret (or set the one given). The old one keeps working for
    `grace_hours` (24 by default), so the tool can be re-configured without losing
    deliveries. With no body: a generated secret, the same scheme, 24 hours' grace. The
    version moves: the answer's ETag serves a later PATCH's If-Match."""
    asked = body or s.RotateSecretIn()
    version = parse_if_match(if_match, "form", form_id)

    def write(session: Session) -> s.FormSecretOut:
        form = svc.rotate_secret(
            session, form_id, scheme=asked.auth_scheme, secret=asked.secret, grace=timedelta(hours=asked.grace_hours), now=ctx.clock(), if_match=version
        )
        response.headers["ETag"] = etag("form", form.form_id, form.version)
        return _with_secret(form)

    return ctx.db.transaction(write)


# --- the hook (the form tool calls it) --------------------------------------------------------

HOOK_BODY = {
    "requestBody": {
        "required": True,
        "description": "the form tool's delivery, exactly as it sends it (JSON or multipart/form-data)",
        "content": {"application/json": {"schema": {"type": "object"}}, "multipart/form-data": {"schema": {"type": "object"}}},
    }
}


@router.post(
    "/v1/hooks/forms/{form_id}",
    status_code=201,
    response_model=s.HookOut,
    openapi_extra=HOOK_BODY,
    responses={
        200: {"model": s.HookOut, "description": "a redelivery of a submission already received: nothing counted twice"},
        202: {"model": s.HookOut, "description": "authentic but not mappable: kept in the inbox (GET /v1/inbox)"},
        **problem_responses(413),
        401: problem_response("bad or missing signature or token, or no such form: nothing stored"),
        403: problem_response("an authentic delivery for a disabled form: nothing stored"),
    },
)
async def receive(form_id: FormIdPath, request: Request, ctx: ContextDep) -> JSONResponse:
    """Receive a submission. It is authenticated first, on the raw body, by the scheme the
    form's mapping names (Standard Webhooks, Typeform-Signature, X-Signature, Jiandaoyun or
    a `token` in the URL); then mapped into events (201), or kept in the inbox (202)."""
    body = await request.body()  # at most max_hook_bytes: app/api/limits.py
    headers = {k.lower(): v for k, v in request.headers.items()}
    query = dict(request.query_params)
    content_type = request.headers.get("content-type", "")

    def work() -> JSONResponse:
        now = ctx.clock()
        # A delivery is charged to its form's bucket only once it has proved itself (or
        # proved itself for a disabled form); a failure of any other kind is charged to the
        # refused deliveries' shared bucket, so no stranger's request spends a tool's own.
        refused = True
        try:
            with ctx.db.session(write=False) as session:
                svc.authenticate(session, form_id, headers=headers, query=query, body=body, now=now)
            refused = False
        except svc.FormDisabled:
            refused = False
            raise
        finally:  # a 429 here answers instead, once the bucket is used up
            spend_hook(ctx.limiter, form_id, refused=refused)

        def write(session: Session) -> JSONResponse:
            form = svc.get_form(session, form_id)
            received = svc.receive(session, ctx.rulebook, form, content_type=content_type, headers=headers, body=body, now=now)
            status = {"processed": 201, "inbox": 202, "duplicate": 200}[received.outcome]
            return JSONResponse(_hook_out(session, received, to_the_tool=True).model_dump(mode="json"), status_code=status)

        return ctx.db.transaction(write)

    return await run_in_threadpool(work)


# --- the inbox (admin) ------------------------------------------------------------------------


@router.get("/v1/inbox", response_model=s.SubmissionPage)
def list_inbox(
    ctx: ContextDep,
    caller: Admin,
    status: Literal["inbox", "processed", "dismissed"] | None = Query(default="inbox", description="default: those waiting in the inbox"),
    form_id: Annotated[s.QueryText | None, Query(max_length=64)] = None,
    limit: s.PageLimit = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> s.SubmissionPage:
    """Form submissions, newest first: by default those that could not be mapped, with why."""
    with ctx.db.session(write=False) as session:
        rows, next_cursor = svc.list_submissions(session, status=status, form_id=form_id, limit=limit, cursor=cursor)
        return s.SubmissionPage(items=[_submission(session, r) for r in rows], next_cursor=next_cursor)


@router.get("/v1/inbox/{submission_id}", response_model=s.SubmissionDetailOut, responses=problem_responses(404))
def get_submission(submission_id: s.PathId, ctx: ContextDep, caller: Admin) -> s.SubmissionOut:
    """One submission with the body exactly as received."""
    with ctx.db.session(write=False) as session:
        return _submission(session, svc.get_submission(session, submission_id), detail=True)


@router.post("/v1/inbox/{submission_id}/replay", response_model=s.HookOut, responses=problem_responses(404, 409))
def replay(submission_id: s.PathId, ctx: ContextDep, caller: Admin) -> s.HookOut:
    """Map the submission again with the form's current mapping (after fixing it, or the
    customer). `outcome` says whether it is now processed or still in the inbox, and why."""

    def write(session: Session) -> s.HookOut:
        received = svc.replay(session, ctx.rulebook, submission_id, actor=caller.actor, now=ctx.clock())
        return _hook_out(session, received)

    return ctx.db.transaction(write)


@router.post("/v1/inbox/{submission_id}/dismiss", response_model=s.SubmissionOut, responses=problem_responses(400, 404, 409, 413))
def dismiss(submission_id: s.PathId, body: s.DismissIn, ctx: ContextDep, caller: Admin) -> s.SubmissionOut:
    """Take a submission out of the inbox without mapping it; the reason is kept."""

    def write(session: Session) -> s.SubmissionOut:
        return _submission(session, svc.dismiss(session, submission_id, body.reason, actor=caller.actor, now=ctx.clock()))

    return ctx.db.transaction(write)
