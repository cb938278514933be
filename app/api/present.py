"""Shaping stored rows into response bodies (labels come from the active rulebook)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response
from pydantic import BaseModel
from pydantic_core import to_json

from app.api import schemas as s
from app.db import models as m
from app.domain.rulebook import Label, Rulebook
from app.services.events import StoredEvent


def _labels(rulebook: Rulebook) -> dict[str, Label]:
    out: dict[str, Label] = {}
    for steps in (*rulebook.levels.values(), rulebook.tiers):
        for step in steps:
            for c in step.criteria:
                out[c.id] = c.label
    return out


Json = dict[str, Any]
"""An answer's JSON object, built as plain values in its schema's field order. Presenting a
grade as pydantic models cost a model per criterion on every read (twenty-odd a grade);
`answer` encodes these as pydantic's own encoder would (`encode`), and tests/test_present.py
checks that each is exactly what its schema (`s.CustomerOut`, `s.ProjectOut`) would give."""


class Presenter:
    def __init__(self, rulebook: Rulebook):
        self.rulebook = rulebook
        self._label_out: dict[Label, Json] = {}
        self.labels = {cid: self.label(label) for cid, label in _labels(rulebook).items()}
        self.unknown = self.label(Label("?", "?"))
        self.steps = {c.id: step.value for steps in (*rulebook.levels.values(), rulebook.tiers) for step in steps for c in step.criteria}

    def label(self, label: Label) -> Json:
        """A rulebook's label as its answer (`s.LabelOut`): one per label (a rulebook has a few
        dozen), shared by every answer that shows it (a grade shows twenty-odd criteria, each
        with its label; an answer is only encoded, never changed)."""
        out = self._label_out.get(label)
        if out is None:
            out = self._label_out[label] = label.as_dict()
        return out

    def _criteria(self, snapshot: dict[str, Any]) -> list[Json]:
        """The stored criteria as `s.CriterionOut`s."""
        return [
            {
                "id": c["id"],
                "label": self.labels.get(c["id"], self.unknown),
                "step": self.steps.get(c["id"], 0),
                "met": c["met"],
                "evidence": c["evidence"],
                "related": [{"subject": r["subject"], "id": r["id"], "level": r.get("level")} for r in c.get("related", ())],
            }
            for c in snapshot.get("criteria", ())
        ]

    def customer(self, c: m.Customer) -> Json:
        """The customer as `s.CustomerOut`."""
        gap = c.grade.get("next")
        return {
            "id": c.id,
            "name": c.name,
            "kind": c.kind,
            "external_ref": c.external_ref,
            "region": c.region,
            "rep": c.rep,
            "contact": c.contact or {},
            "tags": c.tags or [],
            "version": c.version,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "relationship": {
                "level": c.level,
                # A level this process's rulebook does not have: the database switched to a
                # rulebook with more levels while this process still runs the old one (its
                # writes are refused then; its reads go on, README "Switching the rulebook").
                "label": self.label(self.rulebook.level_labels[c.level]) if c.level in self.rulebook.level_labels else self.unknown,
                "criteria": self._criteria(c.grade),
                "next": {"level": gap["target"], "missing": gap["missing"], "need": gap["need"]} if gap else None,
                "since": c.level_since,
                "rulebook_version": self.rulebook.version,
            },
        }

    def heat(self, p: m.Project) -> Json:
        """The project's heat as `s.HeatOut`."""
        gap = p.grade.get("next")
        if p.closed and p.stage in self.rulebook.closed_labels:
            tier, label = p.stage, self.rulebook.closed_labels[p.stage]
        elif p.heat == 0:
            tier, label = "cold", self.rulebook.cold_label
        else:
            tier = str(p.heat)
            label = next((t.label for t in self.rulebook.tiers if t.value == p.heat), self.rulebook.cold_label)
        return {
            "percent": p.heat,
            "tier": tier,
            "label": self.label(label),
            "closed": p.closed,
            "stage": p.stage,
            "criteria": self._criteria(p.grade),
            "next": {"percent": gap["target"], "missing": gap["missing"], "need": gap["need"]} if gap else None,
            "since": p.heat_since,
            "rulebook_version": self.rulebook.version,
        }

    def project(self, p: m.Project, bidders: list[dict[str, Any]], winner: dict[str, Any] | None) -> Json:
        """The project as `s.ProjectOut`, with its bidders and winner (`services.projects.participants`)."""
        return {
            "id": p.id,
            "name": p.name,
            "owner_id": p.owner_id,
            "external_ref": p.external_ref,
            "region": p.region,
            "amount": None if p.amount is None else float(p.amount),
            "expected_close": p.expected_close,
            "rep": p.rep,
            "tags": p.tags or [],
            "version": p.version,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "heat": self.heat(p),
            "bidders": [_participant(b) for b in bidders],
            "winner": _participant(winner) if winner else None,
        }


def _participant(p: dict[str, Any]) -> Json:
    """A bidder or the winner as `s.ParticipantOut` (the winner has no `with_our_product`)."""
    return {"id": p["id"], "name": p["name"], "level": p["level"], "with_our_product": p.get("with_our_product")}


def answer(value: BaseModel | Json, *, status_code: int = 200, headers: dict[str, str] | None = None, exclude_none: bool = False) -> Response:
    """`value` (a model, or a `Json` the presenter built) as the JSON answer, encoded once
    (`exclude_none` is a model's only). A route that returns a Response skips FastAPI's
    re-validation of its return value, which for a plain `def` route is one more hand-off to
    the thread pool per request."""
    body = value.model_dump_json(exclude_none=exclude_none) if isinstance(value, BaseModel) else encode(value)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def encode(value: Json) -> bytes:
    """`value` as pydantic's encoder writes it (`pydantic_core.to_json`), by orjson where it
    can: a customer's answer took 32 µs to encode, 10 by orjson, the same bytes (UTC as
    `Z`, floats shortest, text unescaped; tests/test_present.py compares them). What orjson
    refuses, such as an integer beyond 64 bits (a contact may hold one), pydantic writes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)
    except TypeError:  # orjson.JSONEncodeError is one
        return to_json(value)


def event(e: m.Event, retraction: m.Retraction | None) -> s.EventOut:
    return s.EventOut(**_event_fields(e, retraction))


def recorded_event(e: m.Event | StoredEvent, retraction: m.Retraction | None, effects: list[dict[str, Any]]) -> s.EventRecordedOut:
    """The answer to a write of an event: the event and the grade changes the write caused."""
    return s.EventRecordedOut(**_event_fields(e, retraction), effects=effects)


def _event_fields(e: m.Event | StoredEvent, retraction: m.Retraction | None) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "customer_id": e.customer_id,
        "project_id": e.project_id,
        "occurred_at": e.occurred_at,
        "recorded_at": e.recorded_at,
        "attributes": e.attributes or {},
        "source": e.source,
        "external_id": e.external_id,
        "actor": e.actor,
        "note": e.note,
        "retraction": s.RetractionOut(reason=retraction.reason, actor=retraction.actor, at=retraction.at) if retraction else None,
    }


def history_page(rows: list[m.GradeChange] | tuple, next_cursor: str | None) -> s.HistoryPage:
    return s.HistoryPage(items=[history_item(h) for h in rows], next_cursor=next_cursor)


def history_item(h: m.GradeChange) -> s.HistoryItemOut:
    return s.HistoryItemOut(
        id=h.id,
        metric=h.metric,
        old=h.old,
        new=h.new,
        rulebook_version=h.rulebook_version,
        evidence=h.evidence,
        trigger=h.trigger,
        actor=h.actor,
        at=h.at,
    )
