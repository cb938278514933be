"""check_event: an event is checked against the catalogue before anything is stored; every
problem names the request field a client has to fix."""

from __future__ import annotations

import math
from typing import Any

import pytest

from app.domain.rulebook import parse_rulebook
from app.domain.validation import EventRejected, FieldProblem, check_event, number_in_text

from .builders import default_rulebook, default_rulebook_data


def accepted(event_type: str, attributes: dict[str, Any], *, customer_kind: str | None = "owner", customer: bool = True, project: bool = False) -> dict[str, Any]:
    return check_event(default_rulebook(), event_type, attributes, customer_kind=customer_kind, has_customer=customer, has_project=project)


def rejected(event_type: str, attributes: dict[str, Any], *, customer_kind: str | None = "owner", customer: bool = True, project: bool = False) -> list[tuple[str, str]]:
    with pytest.raises(EventRejected) as refused:
        accepted(event_type, attributes, customer_kind=customer_kind, customer=customer, project=project)
    return [(p.field, p.reason) for p in refused.value.problems]


# --- Type and scope ------------------------------------------------------------------------------


def test_unknown_event_type_is_rejected_and_points_at_the_catalogue() -> None:
    assert rejected("gift_sent", {}) == [("type", "unknown event type 'gift_sent'; see GET /v1/rulebook")]


def test_customer_event_without_a_customer_is_rejected() -> None:
    assert rejected("contact_obtained", {}, customer=False, customer_kind=None) == [("customer_id", "required for a contact_obtained event")]


def test_project_event_without_a_project_is_rejected() -> None:
    assert rejected("stage_changed", {"stage": "lead"}, customer=False, customer_kind=None) == [("project_id", "required for a stage_changed event")]


def test_customer_on_a_project_only_event_is_rejected() -> None:
    assert rejected("tender_brand", {"status": "sole"}, customer=True, project=True) == [
        ("customer_id", "a tender_brand event is about a project only; remove customer_id")
    ]


def test_project_on_a_customer_only_event_is_rejected() -> None:
    assert rejected("company_introduced", {}, project=True) == [
        ("project_id", "a company_introduced event is about a customer only; remove project_id")
    ]


@pytest.mark.parametrize("event_type", ["bid_joined", "bid_won", "product_accepted", "contract_signed", "switched_to_us"])
def test_customer_and_project_event_with_an_owner_is_rejected(event_type: str) -> None:
    assert rejected(event_type, {}, customer_kind="owner", project=True) == [
        ("customer_id", f"a {event_type} event needs an installer, and this customer is an owner")
    ]


def test_customer_and_project_event_with_an_installer_is_accepted() -> None:
    assert accepted("bid_won", {}, customer_kind="installer", project=True) == {}


def test_customer_kind_is_left_to_the_caller_when_the_customer_was_not_found() -> None:
    assert accepted("bid_won", {}, customer_kind=None, project=True) == {}


def test_visit_may_carry_a_project() -> None:
    assert accepted("visit", {"reception": "welcoming"}, project=True) == {"reception": "welcoming", "with_manager": False}


# --- Attributes ----------------------------------------------------------------------------------


def test_visit_without_manager_flag_defaults_to_false() -> None:
    assert accepted("visit", {"reception": "neutral"}) == {"reception": "neutral", "with_manager": False}


def test_easy_access_fills_both_flags_with_false() -> None:
    assert accepted("easy_access", {}) == {"includes_manager": False, "critical_period": False}


def test_given_values_are_kept_as_given() -> None:
    assert accepted("easy_access", {"critical_period": True}) == {"critical_period": True, "includes_manager": False}
    assert accepted("order_placed", {"amount": 0, "order_ref": "PO-1"}) == {"amount": 0, "order_ref": "PO-1"}


def test_optional_attribute_without_default_is_left_out() -> None:
    assert accepted("order_placed", {"amount": 12.5}) == {"amount": 12.5}
    assert accepted("contract_signed", {}, customer_kind="installer", project=True) == {}


def test_required_attribute_missing_is_rejected() -> None:
    assert rejected("visit", {}) == [("attributes.reception", "required for a visit event")]
    assert rejected("materials_sent", {}) == [("attributes.items", "required for a materials_sent event")]


def test_unknown_attribute_is_rejected_with_the_known_ones() -> None:
    assert rejected("visit", {"reception": "neutral", "colour": "red"}) == [
        ("attributes.colour", "unknown attribute for visit (known: reception, with_manager)")
    ]
    assert rejected("company_introduced", {"note": "x"}) == [("attributes.note", "unknown attribute for company_introduced (known: none)")]


@pytest.mark.parametrize(
    ("event_type", "attributes", "problem"),
    [
        pytest.param("visit", {"reception": "hostile"}, ("attributes.reception", "must be one of welcoming, neutral, rejecting"), id="enum value"),
        pytest.param("visit", {"reception": 1}, ("attributes.reception", "must be one of welcoming, neutral, rejecting"), id="enum as number"),
        pytest.param("visit", {"reception": "neutral", "with_manager": "yes"}, ("attributes.with_manager", "must be true or false"), id="bool as string"),
        pytest.param("visit", {"reception": "neutral", "with_manager": 1}, ("attributes.with_manager", "must be true or false"), id="bool as 1"),
        pytest.param("visit", {"reception": "neutral", "with_manager": None}, ("attributes.with_manager", "must be true or false"), id="bool as null"),
        pytest.param("order_placed", {"amount": -1}, ("attributes.amount", "must be ≥ 0"), id="number below min"),
        pytest.param("order_placed", {"amount": "10"}, ("attributes.amount", "must be a number"), id="number as string"),
        pytest.param("order_placed", {"amount": True}, ("attributes.amount", "must be a number"), id="number as bool"),
        pytest.param("order_placed", {"amount": float("nan")}, ("attributes.amount", "must be a number"), id="number NaN"),
        pytest.param("order_placed", {"amount": float("inf")}, ("attributes.amount", "must be a number"), id="number infinite"),
        pytest.param("order_placed", {"amount": 1, "order_ref": 42}, ("attributes.order_ref", "must be a string"), id="string as number"),
        pytest.param("order_placed", {"amount": 1, "order_ref": "x" * 501}, ("attributes.order_ref", "at most 500 characters"), id="string too long"),
        pytest.param("materials_sent", {"items": ["samples", "samples"]}, ("attributes.items", "lists each item once"), id="enum_list duplicate"),
        pytest.param("materials_sent", {"items": []}, ("attributes.items", "must be a non-empty list of samples, credentials, price_list, other"), id="enum_list empty"),
        pytest.param("materials_sent", {"items": "samples"}, ("attributes.items", "must be a non-empty list of samples, credentials, price_list, other"), id="enum_list as string"),
        pytest.param("materials_sent", {"items": ["samples", "gifts"]}, ("attributes.items", "'gifts' is not one of samples, credentials, price_list, other"), id="enum_list value"),
    ],
)
def test_attribute_of_the_wrong_type_or_value_is_rejected(event_type: str, attributes: dict[str, Any], problem: tuple[str, str]) -> None:
    assert rejected(event_type, attributes) == [problem]


def test_boundary_values_are_accepted() -> None:
    assert accepted("order_placed", {"amount": 0, "order_ref": "x" * 500}) == {"amount": 0, "order_ref": "x" * 500}
    assert accepted("materials_sent", {"items": ["samples", "credentials", "price_list", "other"]})["items"] == [
        "samples", "credentials", "price_list", "other",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        pytest.param(10**13 + 1, "must be ≤ 10000000000000 (10¹³)", id="just past the bound"),
        pytest.param(1e16, "must be ≤ 10000000000000 (10¹³)", id="a float PostgreSQL reads back as an integer"),
        pytest.param(1e300, "must be ≤ 10000000000000 (10¹³)", id="1e300"),
        pytest.param(10**4299, "must be ≤ 10000000000000 (10¹³)", id="4300 digits"),
    ],
)
def test_a_number_attribute_beyond_ten_to_the_thirteen_is_rejected_naming_the_bound(amount: int | float, reason: str) -> None:
    # Unbounded, 1e16 came back from PostgreSQL's jsonb as 10000000000000000 and from
    # SQLite as 1e+16: the same event read differently on the two databases.
    assert rejected("order_placed", {"amount": amount}) == [("attributes.amount", reason)]


def test_a_number_attribute_without_a_minimum_is_bounded_below_too() -> None:
    data = default_rulebook_data()
    del data["event_types"]["order_placed"]["attributes"]["amount"]["min"]
    rulebook = parse_rulebook(data)

    with pytest.raises(EventRejected) as refused:
        check_event(rulebook, "order_placed", {"amount": -1e14}, customer_kind="owner", has_customer=True, has_project=False)

    assert refused.value.problems == [FieldProblem("attributes.amount", "must be ≥ -10000000000000 (-10¹³)")]
    assert check_event(rulebook, "order_placed", {"amount": -(10**13)}, customer_kind="owner", has_customer=True, has_project=False) == {"amount": -(10**13)}


@pytest.mark.parametrize("amount", [10**13, 1e13, 9999999999999.998, 0.1, 5e-324])
def test_a_number_attribute_up_to_ten_to_the_thirteen_is_kept_as_given(amount: int | float) -> None:
    kept = accepted("order_placed", {"amount": amount})["amount"]
    assert (type(kept), kept) == (type(amount), amount)


def test_a_negative_zero_is_kept_as_zero() -> None:
    # PostgreSQL's jsonb has no -0: SQLite gave back -0.0 and PostgreSQL 0.0.
    kept = accepted("order_placed", {"amount": -0.0})["amount"]
    assert (kept, math.copysign(1, kept)) == (0.0, 1.0)


def test_every_problem_is_reported_at_once() -> None:
    problems = rejected("visit", {"reception": "hostile", "with_manager": "yes", "colour": "red"}, customer=False, customer_kind=None, project=True)

    assert problems == [
        ("customer_id", "required for a visit event"),
        ("attributes.reception", "must be one of welcoming, neutral, rejecting"),
        ("attributes.with_manager", "must be true or false"),
        ("attributes.colour", "unknown attribute for visit (known: reception, with_manager)"),
    ]


def test_rejection_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"^attributes\.reception: required for a visit event$") as refused:
        accepted("visit", {})

    assert refused.value.problems == [FieldProblem("attributes.reception", "required for a visit event")]


def test_every_catalogue_type_accepts_a_minimal_valid_event() -> None:
    """A smoke check of the whole catalogue: the required attributes, in scope, are enough."""
    minimal = {"materials_sent": {"items": ["other"]}, "visit": {"reception": "neutral"}, "info_shared": {"kind": "core"},
               "order_placed": {"amount": 1}, "stage_changed": {"stage": "lead"}, "tender_brand": {"status": "absent"},
               "owner_stance": {"stance": "accepts"}}  # fmt: skip
    for name, et in default_rulebook().event_types.items():
        accepted(
            name,
            minimal.get(name, {}),
            customer_kind=et.customer_kind or "owner",
            customer=et.customer != "forbidden",
            project=et.project == "required",
        )


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("12", 12), ("-3", -3), ("+7", 7), ("12.5", 12.5), (".5", 0.5), ("12.", 12), ("12.0", 12), ("1e3", 1000), ("2.5E-1", 0.25),
        ("12345678901234567890", 12345678901234567890),  # exact, as written
        ("1_000", None), ("１２３", None), ("٣", None), ("1,000", None), (" 12", None), ("", None), ("+", None), (".", None),
        ("nan", None), ("inf", None), ("-Infinity", None), ("1e999", None), ("0x10", None),
        ("9" * 5000, None),  # past the 4300 digits Python converts: it raised, and an import stopped
    ],
)
def test_a_number_in_text_is_ascii_digits_as_a_file_or_form_writes_it(text: str, number: int | float | None) -> None:
    found = number_in_text(text)
    assert found == number and type(found) is type(number)
