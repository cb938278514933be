"""A SQLite too old for the statements Rapport runs is refused when the engine is made,
with the versions named, instead of failing requests later."""

from __future__ import annotations

import pytest

from app.db.engine import check_sqlite


@pytest.mark.parametrize("version", [(3, 34, 1), (3, 31, 1), (2, 8, 17)])
def test_a_sqlite_older_than_3_35_is_refused_with_both_versions_named(version: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError) as refused:
        check_sqlite(version)
    assert "SQLite 3.35.0 or later" in str(refused.value) and ".".join(map(str, version)) in str(refused.value)


@pytest.mark.parametrize("version", [(3, 35, 0), (3, 40, 1), (3, 46, 0)])
def test_a_sqlite_from_3_35_with_json_is_accepted(version: tuple[int, int, int]) -> None:
    check_sqlite(version)  # this machine's SQLite has the JSON functions
