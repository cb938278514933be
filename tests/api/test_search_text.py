"""The text filter `q` of GET /v1/customers and GET /v1/projects: a case-insensitive
substring, matched as text (LIKE's wildcards in it are plain characters), with the case of
non-ASCII letters folded too, on SQLite as on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.expectations import all_pages


def customer_names(api: Any, q: str) -> list[str]:
    return [c["name"] for c in all_pages(api, "/v1/customers", q=q)]


def project_names(api: Any, q: str) -> list[str]:
    return [p["name"] for p in all_pages(api, "/v1/projects", q=q)]


# --- wildcards are text ------------------------------------------------------------------


@pytest.mark.parametrize("q", ["%", "_", "\\", "%%", "_%_"])
def test_a_wildcard_alone_finds_only_what_holds_it(api, q: str) -> None:
    api.create_customer("上海建工安装", external_ref="ERP-C-1")
    holder = api.create_customer(f"折扣 {q} 客户", external_ref="ERP-C-2")

    assert customer_names(api, q) == [holder["name"]]


def test_an_erp_code_with_underscores_finds_only_itself(api) -> None:
    api.create_customer("甲", external_ref="ERP_C_1")
    api.create_customer("乙", external_ref="ERPXCX1")
    api.create_customer("丙", external_ref="ERP-C-10")

    assert customer_names(api, "ERP_C_1") == ["甲"]
    assert customer_names(api, "erp_c_") == ["甲"]


def test_percent_and_backslash_in_an_external_ref_are_matched_as_written(api) -> None:
    api.create_customer("百分", external_ref="50%OFF")
    api.create_customer("五十", external_ref="50 OFF")
    api.create_customer("路径", external_ref="A\\B")
    api.create_customer("无", external_ref="AB")

    assert customer_names(api, "50%o") == ["百分"]
    assert customer_names(api, "a\\b") == ["路径"]


def test_project_names_match_wildcards_as_text(api) -> None:
    owner = api.create_customer("业主", kind="owner")
    api.create_project(owner["id"], "暖通工程 一期")
    sale = api.create_project(owner["id"], "暖通工程 100% 完工")
    underscored = api.create_project(owner["id"], "SH_2026_118")

    assert project_names(api, "%") == [sale["name"]]
    assert project_names(api, "_") == [underscored["name"]]
    assert project_names(api, "sh_2026") == [underscored["name"]]


# --- case beyond ASCII ---------------------------------------------------------------------


@pytest.mark.parametrize("q", ["ÄBC", "äbc", "ünïcode äbc", "straße", "ÜNÏCODE"])
def test_upper_case_non_ascii_letters_match_either_case(api, q: str) -> None:
    api.create_customer("Ünïcode ÄBC Straße", external_ref="ERP-U-1")
    api.create_customer("Unicode ABC Strasse", external_ref="ERP-U-2")

    assert customer_names(api, q) == ["Ünïcode ÄBC Straße"]


@pytest.mark.parametrize("q", ["ＡＢＣ", "ａｂｃ", "ａＢｃ全角"])
def test_full_width_letters_match_either_case(api, q: str) -> None:
    api.create_customer("ＡＢＣ全角 owner", kind="owner")
    api.create_customer("ABC半角 owner", kind="owner")

    assert customer_names(api, q) == ["ＡＢＣ全角 owner"]


def test_an_external_ref_with_non_ascii_capitals_is_found_in_lower_case(api) -> None:
    api.create_customer("慕尼黑", external_ref="MÜNCHEN-7")

    assert customer_names(api, "münchen") == ["慕尼黑"]


@pytest.mark.parametrize("q", ["ÄBC", "ＡＢＣ", "ａｂｃ"])
def test_project_names_match_non_ascii_letters_either_case(api, q: str) -> None:
    owner = api.create_customer("业主", kind="owner")
    api.create_project(owner["id"], "ÄBC ＡＢＣ 写字楼")
    api.create_project(owner["id"], "ABC 写字楼")

    assert project_names(api, q) == ["ÄBC ＡＢＣ 写字楼"]


def test_ascii_text_still_matches_names_that_hold_non_ascii_capitals(api) -> None:
    api.create_customer("KAI Ünïcode 上海", external_ref="ERP-K-1")
    api.create_customer("other", external_ref="ERP-K-2")

    assert customer_names(api, "kai") == ["KAI Ünïcode 上海"]
    assert customer_names(api, "code 上") == ["KAI Ünïcode 上海"]
    assert customer_names(api, "上海") == ["KAI Ünïcode 上海"]


def test_the_kelvin_sign_folds_into_k_as_python_folds_it(api) -> None:
    # Python lower-cases K (U+212A) into "k": SQLite's LIKE alone would not see it.
    api.create_customer("\u212aelvin 公司")

    assert customer_names(api, "kelvin") == ["\u212aelvin 公司"]
    assert customer_names(api, "KELVIN") == ["\u212aelvin 公司"]


def test_text_is_matched_as_python_lower_cases_it(api) -> None:
    names = ["Ünïcode ÄBC Straße", "ＡＢＣ全角 owner", "Ωmega ΣΊΣΥΦΟΣ", "中建八局 ERP_C_1", "50% Ärger", "plain ascii Kai"]
    for i, name in enumerate(names):
        api.create_customer(name, external_ref=f"REF-{i}")
    queries = ["ä", "Ä", "ＡＢ", "ｂｃ全", "σίσυ", "ΩMEGA", "_c_", "erp_c_1", "0% ä", "%", "kai", "K", "aß", "中建", "ref-3", "zzz"]

    for q in queries:
        expected = [n for i, n in enumerate(names) if q.lower() in n.lower() or q.lower() in f"ref-{i}"]
        assert customer_names(api, q) == expected, q
