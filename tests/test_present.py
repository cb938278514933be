"""The presenter builds answers as plain values (`present.Json`), encoded by pydantic without
a model per criterion. Each must be exactly what its schema gives: no field missing or extra,
none of another type, in the schema's order. No database: the rows are built in memory, their
grades evaluated from generated logs as grading stores them."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_core import to_json

from app.api import schemas as s
from app.api.present import Presenter, answer, encode
from app.db import models as m
from app.domain.evaluation import HeatGrade, LevelGrade
from app.domain.rulebook import Rulebook
from app.grading import snapshot
from tests.domain.builders import default_rulebook, edited_rulebook, heat_of, level_of
from tests.domain.test_properties import customers, projects

RULEBOOK = default_rulebook()
PRESENTER = Presenter(RULEBOOK)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
OPTIONAL_TEXT = st.none() | TEXT
# As rows come back from either engine: aware, mostly UTC, with and without microseconds.
INSTANTS = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=8))]))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | TEXT, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


def encoded_as_schema(model: type[BaseModel], presented: Any) -> bytes:
    """The schema's own encoding of the presented values, checked strictly (no coercion may
    hide a value of the wrong type), next to which the presenter's must be byte for byte."""
    return model.model_validate(presented, strict=True).model_dump_json().encode()


def record_fields(draw: st.DrawFn) -> dict[str, Any]:
    """What customers and projects both have (None where a column may be NULL)."""
    return {
        "id": draw(st.integers(1, 2**31)),
        "name": draw(TEXT),
        "external_ref": draw(OPTIONAL_TEXT),
        "region": draw(OPTIONAL_TEXT),
        "rep": draw(OPTIONAL_TEXT),
        "tags": draw(st.none() | st.lists(TEXT, max_size=3)),
        "version": draw(st.integers(1, 10**6)),
        "created_at": draw(INSTANTS),
        "updated_at": draw(INSTANTS),
    }


@st.composite
def customer_rows(draw: st.DrawFn) -> m.Customer:
    facts = draw(customers())
    grade: LevelGrade = level_of(facts)
    return m.Customer(
        **record_fields(draw),
        kind=facts.kind,
        contact=draw(st.none() | st.dictionaries(TEXT, JSON_VALUES, max_size=3)),
        level=grade.level,
        level_since=draw(INSTANTS),
        grade=snapshot(grade),
    )


def participants(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    bidders = [
        {"id": i, "name": draw(TEXT), "level": draw(st.integers(0, 4)), "with_our_product": draw(st.booleans())}
        for i in draw(st.lists(st.integers(1, 10**6), max_size=3, unique=True))
    ]
    # The winner as services.projects.participants gives it: a bidder without with_our_product.
    won = draw(st.none() | st.sampled_from(bidders)) if bidders else None
    return bidders, None if won is None else {k: v for k, v in won.items() if k != "with_our_product"}


@st.composite
def project_rows(draw: st.DrawFn) -> tuple[m.Project, list[dict[str, Any]], dict[str, Any] | None]:
    grade: HeatGrade = heat_of(draw(projects()))
    row = m.Project(
        **record_fields(draw),
        owner_id=draw(st.integers(1, 2**31)),
        # An amount as the engines return it: a float, or an int where SQLite stored a whole number.
        amount=draw(st.none() | st.integers(-(10**13), 10**13) | st.floats(-1e13, 1e13, allow_nan=False)),
        expected_close=draw(st.none() | st.dates(date(1970, 1, 1), date(2100, 1, 1))),
        heat=grade.percent,
        heat_since=draw(INSTANTS),
        stage=grade.stage,
        closed=grade.closed,
        grade=snapshot(grade),
    )
    return (row, *participants(draw))


@settings(max_examples=150, deadline=None)
@given(customer_rows())
def test_a_presented_customer_is_what_its_schema_encodes(row: m.Customer) -> None:
    presented = PRESENTER.customer(row)
    assert to_json(presented) == encoded_as_schema(s.CustomerOut, presented)
    assert answer(presented).body == to_json(presented)  # by orjson: the same bytes


@settings(max_examples=150, deadline=None)
@given(project_rows())
def test_a_presented_project_is_what_its_schema_encodes(drawn: tuple[m.Project, list[dict[str, Any]], dict[str, Any] | None]) -> None:
    presented = PRESENTER.project(*drawn)
    assert encode(presented) == to_json(presented) == encoded_as_schema(s.ProjectOut, presented)


@settings(max_examples=30, deadline=None)
@given(st.lists(customer_rows(), max_size=3), st.lists(project_rows(), max_size=3), st.none() | TEXT)
def test_a_presented_page_is_what_its_schema_encodes(customer_rows_: list[m.Customer], project_rows_: list[Any], cursor: str | None) -> None:
    page = {"items": [PRESENTER.customer(c) for c in customer_rows_], "next_cursor": cursor}
    assert encode(page) == to_json(page) == encoded_as_schema(s.CustomerPage, page)
    page = {"items": [PRESENTER.project(*p) for p in project_rows_], "next_cursor": cursor}
    assert encode(page) == to_json(page) == encoded_as_schema(s.ProjectPage, page)


# Every kind of value an answer holds, and what a contact or an attribute may: integers
# beyond 64 bits, which orjson refuses, text of every plane, UTC and other offsets, dates.
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text() | INSTANTS | st.dates(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.text(max_size=6), ANY_VALUE, max_size=6))
def test_an_answer_is_encoded_as_pydantics_encoder_writes_it(value: dict[str, Any]) -> None:
    assert encode(value) == to_json(value)


def _labels_edited(rulebook: dict[str, Any]) -> None:
    for step in rulebook["levels"]["owner"]:
        for c in step["criteria"]:
            c["label"] = {"zh": c["label"]["zh"] + "（新）", "en": c["label"]["en"] + " (new)"}


@pytest.mark.parametrize(
    ("rulebook", "shown"),
    [
        (RULEBOOK, "Samples, credentials or other materials sent"),
        (edited_rulebook(_labels_edited), "Samples, credentials or other materials sent (new)"),
    ],
)
def test_criteria_are_labelled_by_the_presenters_rulebook(rulebook: Rulebook, shown: str) -> None:
    row = m.Customer(id=1, name="甲方", kind="owner", contact={}, tags=[], version=1, created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     updated_at=datetime(2026, 1, 1, tzinfo=timezone.utc), level=0, level_since=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     grade={"criteria": [{"id": "O1.1", "met": False, "evidence": []}], "next": None})
    presented = Presenter(rulebook).customer(row)
    assert presented["relationship"]["criteria"][0]["label"]["en"] == shown
    assert presented["relationship"]["criteria"][0]["step"] == 1


def test_a_criterion_the_rulebook_does_not_have_is_shown_unlabelled() -> None:
    # Stored by a rulebook with more criteria than this process's (a switch it has not seen yet).
    row = m.Customer(id=1, name="x", kind="owner", contact=None, tags=None, version=1, created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     updated_at=datetime(2026, 1, 1, tzinfo=timezone.utc), level=9, level_since=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     grade={"criteria": [{"id": "O9.9", "met": True, "evidence": [7], "related": [{"subject": "project", "id": 3}]}], "next": None})
    presented = PRESENTER.customer(row)
    relationship = presented["relationship"]
    assert relationship["label"] == {"zh": "?", "en": "?"}
    assert relationship["criteria"] == [
        {"id": "O9.9", "label": {"zh": "?", "en": "?"}, "step": 0, "met": True, "evidence": [7], "related": [{"subject": "project", "id": 3, "level": None}]}
    ]
    assert to_json(presented) == encoded_as_schema(s.CustomerOut, presented)
