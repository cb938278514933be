"""Customers: owners (项目甲方) and installers (安装公司)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import models as m
from app.domain.rulebook import Rulebook
from app.grading import in_force, initial_level, record_created
from app.services.paging import containing, page
from app.services.records import NoneMatch, Versions, save_unique, update_record, upsert_by_ref

DESCRIPTIVE = ("name", "external_ref", "region", "rep", "contact", "tags")


def create_customer(session: Session, rulebook: Rulebook, fields: dict[str, Any], *, now: datetime) -> m.Customer:
    customer = m.Customer(**fields, created_at=now, updated_at=now, version=1)
    customer.contact = customer.contact or {}
    customer.tags = customer.tags or []
    grade = initial_level(rulebook, customer, now)
    save_unique(session, customer, fields.get("external_ref"))
    in_force(session, rulebook)  # after the INSERT: a rulebook switch holds it until it commits
    record_created(session, rulebook, customer, grade, now)
    return customer


def put_customer(
    session: Session, rulebook: Rulebook, ref: str, fields: dict[str, Any], *, if_match: Versions | None, now: datetime, if_none_match: NoneMatch | None = None
) -> tuple[m.Customer, bool]:
    """Create or update the customer with this external_ref (the ERP's nightly sync)."""
    kind = fields.pop("kind")
    fields = {**fields, "contact": _stored_contact(fields.get("contact")), "tags": fields.get("tags") or []}
    return upsert_by_ref(
        session,
        m.Customer,
        ref,
        fields,
        fixed={"kind": kind},
        create=lambda: create_customer(session, rulebook, {**fields, "kind": kind, "external_ref": ref}, now=now),
        if_match=if_match,
        now=now,
        if_none_match=if_none_match,
    )


def update_customer(
    session: Session, customer_id: int, changes: dict[str, Any], *, if_match: Versions | None, now: datetime
) -> m.Customer:
    if "contact" in changes:  # as on PUT, so a PATCH that sends the stored contact again changes nothing
        changes = {**changes, "contact": _stored_contact(changes["contact"])}
    return update_record(session, m.Customer, customer_id, changes, if_match=if_match, now=now)


def _stored_contact(contact: dict[str, Any] | None) -> dict[str, Any]:
    """A contact as stored: a member sent as null is no member, and a null contact is an empty one."""
    return {k: v for k, v in (contact or {}).items() if v is not None}


def list_customers(
    session: Session,
    *,
    kind: str | None,
    level: int | None,
    rep: str | None,
    region: str | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[m.Customer], str | None]:
    query = select(m.Customer)
    if kind:
        query = query.where(m.Customer.kind == kind)
    if level is not None:
        query = query.where(m.Customer.level == level)
    if rep:
        query = query.where(m.Customer.rep == rep)
    if region:
        query = query.where(m.Customer.region == region)
    if q:
        query = query.where(containing(session, (m.Customer.name, m.Customer.external_ref), q))
    return page(session, query, m.Customer.id, limit=limit, cursor=cursor)
