"""Form-tool webhooks in: form mappings, submissions, and the inbox of those that could not
be mapped.

A delivery is authenticated first (by the scheme its mapping names) and nothing is stored
for one that fails. An authenticated submission is always kept, as received: mapped into
events (`processed`), or held in the inbox with the reasons (`inbox`) until it is replayed
after the mapping or the customer is fixed, or dismissed. The tool's own submission id
makes a redelivery a no-op, and each drafted event carries `<submission id>#<n>` as its
external id under the source `form:<form_id>`, so nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlencode

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import models as m
from app.domain import forms as domain
from app.domain.rulebook import Rulebook
from app.domain.signatures import SignatureError, live_secrets, new_secret, replaced_secret, secret_problem, verify
from app.domain.validation import FORM_PREFIX
from app.errors import AppError, Conflict, FieldError, Invalid, NotFound
from app.grading import Effect
from app.services.batch import record_batch
from app.services.events import NewEvent
from app.services.paging import page
from app.services.records import Versions, apply_changes, check_version, save_unique

DEFAULT_GRACE = timedelta(hours=24)  # how long a rotated-out secret keeps working

log = logging.getLogger("rapport")


class FormDisabled(AppError):
    status, slug, title = 403, "form-disabled", "This form's hook is disabled"


class NotAuthentic(AppError):
    status, slug, title = 401, "not-authentic", "The delivery is not authentic"


# --- mappings ---------------------------------------------------------------------------------


def check_spec(rulebook: Rulebook, spec: Any) -> domain.FormSpec:
    try:
        return domain.parse_form_spec(spec, rulebook)
    except domain.FormSpecError as exc:
        raise Invalid("the form mapping is not valid", errors=_spec_problems(exc)) from None


def _spec_problems(exc: domain.FormSpecError) -> list[FieldError]:
    return [FieldError(f"spec.{place}" if place else "spec", reason) for place, reason in exc.problems]


def create_form(session: Session, rulebook: Rulebook, fields: dict[str, Any], *, now: datetime) -> m.FormMapping:
    parsed = check_spec(rulebook, fields["spec"])
    secret = _secret(fields["auth_scheme"], fields.get("secret"))
    form = m.FormMapping(
        form_id=fields["form_id"],
        name=fields["name"],
        description=fields.get("description"),
        tool=parsed.tool,
        auth_scheme=fields["auth_scheme"],
        secret=secret,
        spec=fields["spec"],
        enabled=fields.get("enabled", True),
        version=1,
        created_at=now,
        updated_at=now,
    )
    save_unique(session, form, form.form_id, field="form_id")
    return form


def get_form(session: Session, form_id: str, *, lock: bool = False) -> m.FormMapping:
    query = select(m.FormMapping).where(m.FormMapping.form_id == form_id)
    form = session.scalar(query.with_for_update() if lock else query)
    if form is None:
        raise NotFound(f"no form with form_id {form_id!r}")
    return form


def list_forms(session: Session, *, limit: int, cursor: str | None) -> tuple[Sequence[m.FormMapping], str | None]:
    return page(session, select(m.FormMapping), m.FormMapping.id, limit=limit, cursor=cursor)


def update_form(session: Session, rulebook: Rulebook, form_id: str, changes: dict[str, Any], *, if_match: Versions | None = None, now: datetime) -> m.FormMapping:
    """Change the name, description, mapping or whether the hook is enabled. The scheme and
    secret change only by rotate_secret. `if_match`: the versions the caller read (412 if
    the form changed since)."""
    form = get_form(session, form_id, lock=True)
    check_version(form, if_match)
    if "spec" in changes:
        form.tool = check_spec(rulebook, changes["spec"]).tool
    apply_changes(form, changes, now, same=_same_value)
    return form


def _same_value(stored: Any, given: Any) -> bool:
    """Whether a PATCH value is what the form holds. A spec is compared as JSON, keys sorted:
    PostgreSQL gives its keys back in its own order, and Python takes 1 == 1.0 == true, which a
    mapping (`"in": [1]` against `"in": [true]`) tells apart."""
    if isinstance(stored, dict) or isinstance(given, dict):
        return json.dumps(stored, sort_keys=True) == json.dumps(given, sort_keys=True)
    return bool(stored == given)


def rotate_secret(
    session: Session, form_id: str, *, scheme: str | None, secret: str | None, grace: timedelta, now: datetime, if_match: Versions | None = None
) -> m.FormMapping:
    """Give the form a new secret; the old one keeps working for `grace` (0: at once).
    `if_match`: the versions the caller read (412 otherwise)."""
    form = get_form(session, form_id, lock=True)
    check_version(form, if_match)
    scheme = scheme or form.auth_scheme
    new = _secret(scheme, secret)
    # A secret of another scheme cannot verify this one's deliveries: no grace across schemes.
    form.previous_secret, form.previous_secret_until = replaced_secret(form.secret, grace if scheme == form.auth_scheme else timedelta(0), now)
    form.secret, form.auth_scheme = new, scheme
    form.version += 1
    form.updated_at = now
    return form


def _secret(scheme: str, given: str | None) -> str:
    if given is None:
        return new_secret(scheme)
    problem = secret_problem(scheme, given)
    if problem:
        raise Invalid("the secret cannot be used with this scheme", errors=[FieldError("secret", problem)])
    return given


def hook_path(form: m.FormMapping) -> str:
    path = f"/v1/hooks/forms/{form.form_id}"
    # A secret may hold &, +, # or %: unescaped, the tool would send another token (a hunt's
    # "abc&def+ghi#jkl1234" arrived as "abc" and was refused).
    return f"{path}?{urlencode({'token': form.secret}, quote_via=quote)}" if form.auth_scheme == "url_token" else path


# --- receiving --------------------------------------------------------------------------------


_NOT_AUTHENTIC = "the delivery is not authentic (no form with this id, or a bad signature or token); nothing was stored"


@dataclass
class Received:
    submission: m.FormSubmission
    outcome: str  # processed | inbox | duplicate
    effects: list[Effect] = field(default_factory=list)


def authenticate(session: Session, form_id: str, *, headers: Mapping[str, str], query: Mapping[str, str], body: bytes, now: datetime) -> None:
    """Check the delivery's signature or token; 401 if it fails. Runs on the raw body,
    before anything is parsed. An unknown form answers exactly as a bad signature does, so
    the hook does not tell strangers which forms exist; a disabled one says so only to a
    caller that proved it holds the secret."""
    form = session.scalar(select(m.FormMapping).where(m.FormMapping.form_id == form_id))
    if form is None:
        raise NotAuthentic(_NOT_AUTHENTIC)
    secrets = live_secrets(form.secret, form.previous_secret, form.previous_secret_until, now)
    try:
        verify(form.auth_scheme, secrets, headers=headers, query=query, body=body, now=now.timestamp())
    except SignatureError as exc:
        # The reason ("no typeform-signature header") would tell a stranger that the form
        # exists and how it is signed: it goes to the log, for the admin setting a tool up.
        log.info("form %s: a delivery was refused: %s", form.form_id, exc)
        raise NotAuthentic(_NOT_AUTHENTIC) from None
    if not form.enabled:
        raise FormDisabled(f"the form {form.form_id!r} is disabled; nothing was stored")


def receive(
    session: Session, rulebook: Rulebook, form: m.FormMapping, *, content_type: str, headers: Mapping[str, str], body: bytes, now: datetime
) -> Received:
    """Keep an authenticated submission and map it into events (or into the inbox)."""
    try:
        submission_data = domain.parse_payload(form.tool, content_type, body, headers=headers)
        delivery_id = submission_data.delivery_id
    except domain.PayloadError as exc:
        submission_data, delivery_id = None, _body_id(body)
        problems = [FieldError("body", str(exc))]
    twin = _submission(session, form.id, delivery_id)
    if twin is not None:
        return Received(twin, "duplicate")
    row = m.FormSubmission(
        form_mapping_id=form.id,
        delivery_id=delivery_id[:200],
        received_at=now,
        content_type=content_type,
        body=body,
        status="inbox",
        problems=[],
        event_ids=[],
        attempts=1,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        twin = _submission(session, form.id, delivery_id)  # a concurrent redelivery won
        if twin is None:
            raise
        return Received(twin, "duplicate")
    if submission_data is None:
        row.problems = _as_dicts(problems)
        return Received(row, "inbox")
    return _map(session, rulebook, form, row, submission_data, actor=None, now=now)


def replay(session: Session, rulebook: Rulebook, submission_id: int, *, actor: str, now: datetime) -> Received:
    """Map an inbox submission again, with the form's current mapping and the stored data."""
    row = _inbox_row(session, submission_id)
    form = session.get(m.FormMapping, row.form_mapping_id)
    assert form is not None
    row.attempts, row.actor = row.attempts + 1, actor  # who tried it last, whatever comes of it
    try:
        data = domain.parse_payload(form.tool, row.content_type, row.body)
    except domain.PayloadError as exc:
        row.problems = _as_dicts([FieldError("body", str(exc))])
        return Received(row, "inbox")
    if row.delivery_id == _body_id(row.body) and data.delivery_id != row.delivery_id:
        # Kept under its body's digest because it could not be read then; read now, it has
        # the tool's own id, which the tool's redeliveries carry: it is kept under that, or
        # it is one already received under it (a redelivery after the mapping was fixed),
        # and counting it again would count the submission twice.
        twin = _submission(session, form.id, data.delivery_id)
        if twin is None:
            try:
                with session.begin_nested():
                    row.delivery_id = data.delivery_id[:200]
                    session.flush()
            except IntegrityError:  # a redelivery under that id is being received just now
                session.refresh(row)
                twin = _submission(session, form.id, data.delivery_id)
        if twin is not None:
            row.status, row.resolved_at, row.actor = "dismissed", now, actor
            row.resolution = f"the same submission as {twin.id}, received under the tool's id {data.delivery_id!r}"
            return Received(row, "duplicate")
    else:
        # The id it was received under (简道云's once came from a header, which is not kept).
        data = replace(data, delivery_id=row.delivery_id)
    return _map(session, rulebook, form, row, data, actor=actor, now=now)


def dismiss(session: Session, submission_id: int, reason: str, *, actor: str, now: datetime) -> m.FormSubmission:
    row = _inbox_row(session, submission_id)
    row.status, row.resolution, row.resolved_at, row.actor = "dismissed", reason, now, actor
    return row


def list_submissions(
    session: Session, *, status: str | None, form_id: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[m.FormSubmission], str | None]:
    query = select(m.FormSubmission)
    if status:
        query = query.where(m.FormSubmission.status == status)
    if form_id:
        query = query.join(m.FormMapping, m.FormMapping.id == m.FormSubmission.form_mapping_id).where(m.FormMapping.form_id == form_id)
    return page(session, query, m.FormSubmission.id, limit=limit, cursor=cursor, descending=True)


def get_submission(session: Session, submission_id: int) -> m.FormSubmission:
    row = session.get(m.FormSubmission, submission_id)
    if row is None:
        raise NotFound(f"no submission with id {submission_id}")
    return row


def _inbox_row(session: Session, submission_id: int) -> m.FormSubmission:
    row = session.scalar(select(m.FormSubmission).where(m.FormSubmission.id == submission_id).with_for_update().execution_options(populate_existing=True))
    if row is None:
        raise NotFound(f"no submission with id {submission_id}")
    if row.status != "inbox":
        raise Conflict(f"submission {submission_id} is {row.status}, not in the inbox")
    return row


def _map(
    session: Session, rulebook: Rulebook, form: m.FormMapping, row: m.FormSubmission, data: domain.Submission, *, actor: str | None, now: datetime
) -> Received:
    problems: list[FieldError] = []
    try:
        spec = domain.parse_form_spec(form.spec, rulebook)
        drafts = domain.apply_mapping(spec, data, received_at=row.received_at)
    except domain.FormSpecError as exc:  # the rulebook changed under the mapping
        problems = _spec_problems(exc)
    except domain.MappingError as exc:
        problems = [FieldError(place, reason) for place, reason in exc.problems]
    if problems:
        row.problems = _as_dicts(problems)
        return Received(row, "inbox")

    items: list[NewEvent] = []
    for i, draft in enumerate(drafts):
        customer_id = _resolve(session, m.Customer, draft.customer, f"events[{i}].customer", problems)
        project_id = _resolve(session, m.Project, draft.project, f"events[{i}].project", problems)
        items.append(
            NewEvent(
                type=draft.type,
                occurred_at=draft.occurred_at,
                customer_id=customer_id,
                project_id=project_id,
                attributes=draft.attributes,
                source=FORM_PREFIX + form.form_id,
                external_id=draft.external_id,
                note=draft.note,
            )
        )
    if problems:
        row.problems = _as_dicts(problems)
        return Received(row, "inbox")
    event_actor = next((d.actor for d in drafts if d.actor), None) or FORM_PREFIX + form.form_id
    try:
        with session.begin_nested():
            outcome = record_batch(session, rulebook, items, atomic=True, actor=event_actor, now=now)
    except Invalid as exc:
        row.problems = _as_dicts([FieldError(f"events{e.field}" if e.field.startswith("[") else e.field, e.reason) for e in exc.errors])
        return Received(row, "inbox")
    row.status, row.problems = "processed", []
    row.event_ids = [r.event_id for r in outcome.results if r.event_id is not None]
    if actor is not None:
        row.resolved_at, row.actor = now, actor
    return Received(row, "processed", outcome.effects)


def _resolve(session: Session, model: type[m.Customer] | type[m.Project], ref: domain.SubjectRef | None, place: str, problems: list[FieldError]) -> int | None:
    """The id of the one customer or project `ref` names; a problem if none or several."""
    if ref is None:
        return None
    name = model.__tablename__[:-1]
    if ref.by == "phone" and model is m.Customer:
        ids = _by_phone(session, ref.value)
    elif ref.by in ("external_ref", "name"):
        ids = list(session.scalars(select(model.id).where(getattr(model, ref.by) == ref.value).limit(2)))
    else:
        problems.append(FieldError(place, f"a {name} cannot be found by {ref.by}"))
        return None
    if not ids:
        problems.append(FieldError(place, f"no {name} with {ref.by} {ref.value!r}"))
        return None
    if len(ids) > 1:
        problems.append(FieldError(place, f"more than one {name} has {ref.by} {ref.value!r}; map by external_ref instead"))
        return None
    return ids[0]


def phone_digits(text: str) -> str:
    """A phone number as digits, without China's +86 / 0086 prefix: tools send
    +8613912345678, 13912345678 or 139-1234-5678 for the same phone."""
    digits = re.sub(r"\D", "", text)
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) - len(prefix) >= 10:
            return digits[len(prefix) :]
    return digits


def _by_phone(session: Session, phone: str) -> list[int]:
    digits = phone_digits(phone)
    if len(digits) < 5:
        return []
    # Narrow in SQL to the numbers with the last four digits in that order (whatever stands
    # between or after them: "139-1234-56 78", "139 1234 5678（王伟）"), then compare digits.
    rows = session.execute(select(m.Customer.id, m.Customer.contact).where(m.Customer.contact["phone"].as_string().like("%" + "%".join(digits[-4:]) + "%")))
    return [cid for cid, contact in rows if phone_digits(str(contact.get("phone", ""))) == digits][:2]


def _submission(session: Session, form_pk: int, delivery_id: str) -> m.FormSubmission | None:
    return session.scalar(select(m.FormSubmission).where(m.FormSubmission.form_mapping_id == form_pk, m.FormSubmission.delivery_id == delivery_id[:200]))


def _body_id(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _as_dicts(problems: list[FieldError]) -> list[dict[str, str]]:
    return [{"field": p.field, "reason": p.reason} for p in problems]

