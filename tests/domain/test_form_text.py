"""The texts a form brings in: no NUL (PostgreSQL stores none) and no text longer than an
event keeps reaches a draft, from whichever answer it comes; and a spec holding one is
refused at its place."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.forms import FormSpec, FormSpecError, MappingError, PayloadError, Submission, apply_mapping, parse_form_spec, parse_payload
from app.domain.rulebook import Rulebook, load_rulebook

RECEIVED = datetime(2026, 11, 20, 6, 42, 20, tzinfo=timezone.utc)
SPEC: dict[str, Any] = {
    "tool": "json",
    "customer": {"by": "external_ref", "answer": "c"},
    "occurred_at": {"answer": "at", "format": "iso"},
    "note": {"answer": "n"},
    "actor": {"answer": "a"},
    "events": [
        {"type": "order_placed", "attributes": {"amount": {"answer": "amt"}, "order_ref": {"answer": "o"}}},
        {"type": {"answer": "t", "map": {"拜访": "visit"}}, "when": {"answer": "w", "in": ["是"]},
         "attributes": {"reception": {"answer": "r", "map": {"热情": "welcoming"}}}},
    ],
}
ANSWERS = {"c": "C-1", "at": "2026-11-20T14:42:17+08:00", "n": "约定下周一送样", "a": "S-0217", "amt": 1200, "o": "PO-77", "t": "拜访", "w": "是", "r": "热情"}


@cache
def rulebook() -> Rulebook:
    return load_rulebook(None)


@cache
def spec() -> FormSpec:
    return parse_form_spec(SPEC, rulebook())


def problems(**changes: Any) -> list[tuple[str, str]]:
    with pytest.raises(MappingError) as caught:
        apply_mapping(spec(), Submission("d1", None, {**ANSWERS, **changes}), received_at=RECEIVED)
    return caught.value.problems


def test_the_clean_answers_give_both_events() -> None:
    drafts = apply_mapping(spec(), Submission("d1", None, ANSWERS), received_at=RECEIVED)
    assert [(d.type, d.note, d.actor, d.external_id) for d in drafts] == [
        ("order_placed", "约定下周一送样", "S-0217", "d1#0"),
        ("visit", "约定下周一送样", "S-0217", "d1#1"),
    ]


# --- a NUL in an answer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n", "x\x00y"),  # the note
        ("a", "rep\x00"),  # the actor
        ("o", "\x00"),  # a string attribute
        ("r", "热情\x00"),  # a mapped attribute
        ("t", "拜访\x00"),  # the event type
        ("w", "是\x00"),  # a `when`
        ("c", "C-1\x00"),  # the customer's reference
        ("at", "2026-11-20\x00"),  # the time
        ("n", ["ok", {"deep": "x\x00"}]),  # anywhere in a list or object answer
    ],
    ids=["note", "actor", "attribute", "mapped", "type", "when", "customer", "time", "nested"],
)
def test_a_nul_in_any_answer_read_is_one_problem_naming_the_answer(key: str, value: Any) -> None:
    assert problems(**{key: value}) == [(key, f"answer {key!r} must not contain the NUL character (U+0000)")]


def test_a_nul_in_an_answer_the_mapping_does_not_read_is_no_problem() -> None:
    drafts = apply_mapping(spec(), Submission("d1", None, {**ANSWERS, "comment": "x\x00"}), received_at=RECEIVED)
    assert len(drafts) == 2


def test_a_nul_in_the_delivery_id_refuses_the_body() -> None:
    with pytest.raises(PayloadError, match="delivery id must not contain the NUL character"):
        parse_payload("json", "application/json", json.dumps({"id": "d5\x00", **ANSWERS}).encode())


@settings(max_examples=300, deadline=None)
@given(answers=st.dictionaries(st.sampled_from(["n", "a", "o", "c", "r", "t", "w"]), st.text(alphabet=st.sampled_from("\x00 a热情是拜访"), max_size=4), max_size=7))
def test_no_draft_holds_a_nul_whatever_the_answers(answers: dict[str, str]) -> None:
    try:
        drafts = apply_mapping(spec(), Submission("d1", None, {**ANSWERS, **answers}), received_at=RECEIVED)
    except MappingError as exc:
        assert exc.problems and all("\x00" not in place + reason for place, reason in exc.problems)
    else:
        assert not any("\x00" in text for text in _texts([asdict(d) for d in drafts]))


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _texts(k) + _texts(v)]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    return []


# --- texts over the events' limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "limit"),
    [
        ("n", "🙂" * 2001, "longer than 2000 characters"),
        ("n", "x" * 500_000, "longer than 2000 characters"),
        ("n", 10**2001, "longer than 2000 characters"),  # a number is written out as a note
        ("a", "S" * 101, "longer than 100 characters"),
        ("o", "P" * 501, "at most 500 characters"),
        ("c", "C" * 101, "longer than 100 characters"),
    ],
    ids=["note-emoji", "note-huge", "note-number", "actor", "attribute", "customer"],
)
def test_a_text_over_the_events_limit_is_a_short_problem_naming_the_answer(key: str, value: Any, limit: str) -> None:
    [(place, reason)] = problems(**{key: value})
    assert place == key and limit in reason
    assert len(reason) < 200


def test_texts_at_the_limits_are_drafted_whole() -> None:
    answers = {**ANSWERS, "n": "🙂" * 2000, "a": "S" * 100, "o": "P" * 500, "c": "C" * 100}
    [order, _] = apply_mapping(spec(), Submission("d" * 190, None, answers), received_at=RECEIVED)
    assert (order.note, order.actor, order.attributes["order_ref"], order.customer and order.customer.value) == ("🙂" * 2000, "S" * 100, "P" * 500, "C" * 100)
    assert len(order.external_id) <= 200


@pytest.mark.parametrize(("by", "limit"), [("name", 200), ("phone", 200)])
def test_a_customer_is_looked_up_by_no_longer_a_text_than_the_field_holds(by: str, limit: int) -> None:
    data = {**SPEC, "customer": {"by": by, "answer": "c"}}
    parsed = parse_form_spec(data, rulebook())
    assert apply_mapping(parsed, Submission("d1", None, {**ANSWERS, "c": "1" * limit}), received_at=RECEIVED)
    with pytest.raises(MappingError, match=f"longer than {limit} characters"):
        apply_mapping(parsed, Submission("d1", None, {**ANSWERS, "c": "1" * (limit + 1)}), received_at=RECEIVED)


# --- a NUL or an over-long text in a spec ---------------------------------------------------------


def spec_with(**top: Any) -> dict[str, Any]:
    return json.loads(json.dumps({**SPEC, **top}))


def refused(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(FormSpecError) as caught:
        parse_form_spec(data, rulebook())
    return caught.value.problems


NUL = "must not contain the NUL character (U+0000)"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (spec_with(note={"value": "n\x00"}), ("note.value", NUL)),
        (spec_with(actor={"value": "\x00"}), ("actor.value", NUL)),
        (spec_with(customer={"by": "external_ref", "answer": "c\x00"}), ("customer.answer", NUL)),
        (spec_with(events=[{"type": "visit", "attributes": {"reception": {"answer": "r", "map": {"\x00": "welcoming"}}}}]),
         ("events[0].attributes.reception.map", f"the key '\\x00' {NUL}")),
        (spec_with(events=[{"type": "visit", "when": {"answer": "w", "in": ["是", "\x00"]}}]), ("events[0].when.in[1]", NUL)),
        (spec_with(occurred_at={"answer": "at\x00", "format": "iso"}), ("occurred_at.answer", NUL)),
        (spec_with(note={"value": "n" * 2001}), ("note.value", "at most 2000 characters")),
        (spec_with(actor={"value": "S" * 101}), ("actor.value", "at most 100 characters")),
    ],
    ids=["note", "actor", "customer-answer", "map-key", "when-in", "time-answer", "long-note", "long-actor"],
)
def test_a_nul_or_an_over_long_constant_in_a_spec_is_refused_at_its_place(data: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problem in refused(data)


def test_a_spec_that_cannot_be_stored_is_refused_for_that_alone() -> None:
    # The other problems' places would name the key, which a response cannot even write.
    assert refused({**SPEC, "\ud800": 1, "note": {"value": "n\x00"}, "tool": "x"}) == [
        ("", "the key '\\ud800' must be Unicode: it holds a lone surrogate escape such as \\ud800 (half an emoji)"),
        ("note.value", NUL),
    ]


def test_constants_at_the_limits_are_taken() -> None:
    parsed = parse_form_spec(spec_with(note={"value": "🙂" * 2000}, actor={"value": "S" * 100}), rulebook())
    assert (parsed.note and parsed.note.value, parsed.actor and parsed.actor.value) == ("🙂" * 2000, "S" * 100)


def test_a_nul_deep_in_an_unknown_key_is_found_without_running_out_of_stack() -> None:
    deep: Any = "\x00"
    for _ in range(5000):
        deep = [deep]
    assert ("colour" + "[0]" * 5000, NUL) in refused({**SPEC, "colour": deep})
