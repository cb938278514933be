"""`rapport import` as an operator uses it: CSV files in, grades out, the bad rows in a
rejected file with their line and reason (SQLite in a temporary folder). The last test runs
the same import on the test database, PostgreSQL when RAPPORT_DATABASE_URL names one."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import StringConstraints, TypeAdapter

import app.imports
from sqlalchemy import text

from app.db.engine import Database, make_engine
from app.domain.rulebook import load_rulebook
from app.errors import RulebookChanged
from app.imports import Options, convert_attribute, open_table, run_import, trimmed
from tests.conftest import empty_tables, query

Rows = list[list[str]]

CUSTOMERS: Rows = [
    ["external_ref", "name", "kind", "region", "rep", "contact.person", "contact.phone", "tags"],
    ["C-1", "上海市第一人民医院", "owner", "上海", "王伟", "李主任", "13800000000", "医院|重点"],
    ["C-2", "上海建工安装有限公司", "installer", "上海", "王伟", "", "", ""],
]
PROJECTS: Rows = [
    ["external_ref", "name", "owner_ref", "region", "amount", "expected_close", "tags"],
    ["P-1", "新门诊楼暖通工程", "C-1", "上海", "1200000", "2027-06-30", "暖通|医院"],
]
EVENT_COLUMNS = ["type", "occurred_at", "customer_ref", "project_ref", "attr.items", "attr.reception", "attr.with_manager", "note"]
# The rulebook's example 1: an owner with the five level-one facts is at level 1.
EXAMPLE_ONE: Rows = [
    ["materials_sent", "2025-09-01T10:00:00+08:00", "C-1", "", "samples|credentials", "", "", "寄了样本和资质"],
    ["company_introduced", "2025-09-02T10:00:00+08:00", "C-1", "", "", "", "", ""],
    ["contact_obtained", "2025-09-03T10:00:00+08:00", "C-1", "", "", "", "", ""],
    ["impression_confirmed", "2025-09-04T10:00:00+08:00", "C-1", "", "", "", "", ""],
    ["visit", "2025-09-10T10:00:00+08:00", "C-1", "", "", "welcoming", "是", "第一次拜访"],
    ["visit", "2025-09-20T10:00:00+08:00", "C-1", "", "", "neutral", "否", ""],
    ["visit", "2025-09-30T10:00:00+08:00", "C-1", "", "", "neutral", "", ""],
]


def write_csv(path: Path, rows: Rows, encoding: str = "utf-8-sig") -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def level_of(folder: Path, ref: str) -> int:
    return query(folder, f"SELECT level FROM customers WHERE external_ref = '{ref}'")[0][0]


def customer(folder: Path, ref: str) -> dict[str, Any]:
    [(name, kind, region, rep, contact, tags)] = query(folder, f"SELECT name, kind, region, rep, contact, tags FROM customers WHERE external_ref = '{ref}'")
    return {"name": name, "kind": kind, "region": region, "rep": rep, "contact": json.loads(contact), "tags": json.loads(tags)}


def stored_events(folder: Path, db: str = "rapport.db") -> list[tuple[Any, ...]]:
    return query(folder, "SELECT type, customer_id, project_id, occurred_at, attributes, source, external_id, note FROM events ORDER BY occurred_at, type", db)


def import_ok(run, kind: str, path: Path, *args: str) -> str:  # noqa: ANN001
    result = run("import", kind, str(path), *args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def customers_and_project(run, tmp_path: Path) -> None:  # noqa: ANN001
    import_ok(run, "customers", write_csv(tmp_path / "customers.csv", CUSTOMERS))
    import_ok(run, "projects", write_csv(tmp_path / "projects.csv", PROJECTS))


def test_customers_then_projects_then_events_grade_the_owner_at_level_one(run, tmp_path: Path) -> None:  # noqa: ANN001
    out = import_ok(run, "customers", write_csv(tmp_path / "customers.csv", CUSTOMERS))
    assert "created 2, updated 0, unchanged 0, rejected 0" in out
    out = import_ok(run, "projects", write_csv(tmp_path / "projects.csv", PROJECTS))
    assert "created 1, updated 0, unchanged 0, rejected 0" in out
    out = import_ok(run, "events", write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE]))
    assert "created 7, duplicate 0, rejected 0" in out and "rows/s" in out

    assert level_of(tmp_path, "C-1") == 1
    assert customer(tmp_path, "C-1") == {
        "name": "上海市第一人民医院", "kind": "owner", "region": "上海", "rep": "王伟", "contact": {"person": "李主任", "phone": "13800000000"}, "tags": ["医院", "重点"]
    }
    assert query(tmp_path, "SELECT p.name, c.external_ref, p.amount, p.expected_close FROM projects p JOIN customers c ON c.id = p.owner_id") == [
        ("新门诊楼暖通工程", "C-1", 1200000, "2027-06-30")
    ]
    assert query(tmp_path, "SELECT DISTINCT source, actor FROM events") == [("import", "import:events.csv")]
    assert not list(tmp_path.glob("*.rejected.csv"))


def test_importing_the_same_events_again_changes_nothing(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])
    import_ok(run, "events", events)
    before = stored_events(tmp_path), query(tmp_path, "SELECT count(*) FROM grade_history"), query(tmp_path, "SELECT version FROM customers")

    out = import_ok(run, "events", events)

    assert "created 0, duplicate 7, rejected 0" in out
    assert (stored_events(tmp_path), query(tmp_path, "SELECT count(*) FROM grade_history"), query(tmp_path, "SELECT version FROM customers")) == before
    assert all(external_id.startswith("row:") and len(external_id) == 36 for *_, external_id, _ in before[0])


def test_bad_rows_go_to_the_rejected_file_with_their_line_and_reason_and_the_rest_are_stored(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    bad_visit = ["visit", "2025-09-15T10:00:00+08:00", "C-9", "", "", "bored", "", ""]
    bad_time = ["contact_obtained", "yesterday", "C-1", "", "", "", "", ""]
    rows = [EVENT_COLUMNS, *EXAMPLE_ONE[:2], bad_visit, *EXAMPLE_ONE[2:5], bad_time, *EXAMPLE_ONE[5:]]

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", rows)))

    assert result.exit_code == 1
    assert "created 7, duplicate 0, rejected 2" in result.stdout
    rejected = tmp_path / "events.rejected.csv"
    assert rejected.read_bytes().startswith(b"\xef\xbb\xbf")  # a BOM, for Excel
    assert read_csv(rejected) == [
        {**dict(zip(EVENT_COLUMNS, bad_visit)), "line": "4", "reason": "customer_ref: no customer with external_ref 'C-9'; attributes.reception: must be one of welcoming, neutral, rejecting"},
        {**dict(zip(EVENT_COLUMNS, bad_time)), "line": "8", "reason": "occurred_at: must be an ISO 8601 date and time with an offset, such as 2026-11-20T14:30:00+08:00"},
    ]
    assert level_of(tmp_path, "C-1") == 1


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["type", "customer_ref", "note"], "missing column: occurred_at"),
        (["type", "occurred_at", "note"], "missing column: customer_ref or customer_id or project_ref or project_id"),
        (["type", "occurred_at", "customer_ref", "colour"], "unknown column 'colour'"),
        (["type", "occurred_at", "customer_ref", "note", "note"], "column 'note' appears twice"),
        (["type", "occurred_at", "customer_ref", "attributes", "attr.reception"], "either as one 'attributes' column (JSON) or as attr.<name> columns"),
    ],
)
def test_a_file_with_unusable_columns_is_refused_before_anything_is_stored(run, tmp_path: Path, customers_and_project: None, header: list[str], message: str) -> None:  # noqa: ANN001
    rows = [header, ["x"] * len(header)]

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", rows)))

    assert result.exit_code == 2
    assert message in result.output and "Nothing was stored." in result.output
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]
    assert not (tmp_path / "events.rejected.csv").exists()


@pytest.mark.parametrize(("encoding", "args"), [("utf-8-sig", []), ("utf-8", []), ("gb18030", ["--encoding", "gb18030"])])
def test_excel_files_with_a_bom_or_in_gb18030_import_alike(run, tmp_path: Path, encoding: str, args: list[str]) -> None:  # noqa: ANN001
    import_ok(run, "customers", write_csv(tmp_path / "customers.csv", CUSTOMERS, encoding), *args)

    assert query(tmp_path, "SELECT external_ref, name, region FROM customers ORDER BY id") == [
        ("C-1", "上海市第一人民医院", "上海"),
        ("C-2", "上海建工安装有限公司", "上海"),
    ]


def test_a_gb18030_file_read_as_utf8_is_refused_with_a_hint(run, tmp_path: Path) -> None:  # noqa: ANN001
    result = run("import", "customers", str(write_csv(tmp_path / "customers.csv", CUSTOMERS, "gb18030")))

    assert result.exit_code == 2
    assert "line 2 is not utf-8-sig text" in result.output and "--encoding gb18030" in result.output
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8"])
def test_a_utf8_file_given_a_gb_encoding_is_refused_not_stored_as_garbage(run, tmp_path: Path, encoding: str) -> None:  # noqa: ANN001
    # 北京协和医院 read as GB18030 is 鍖椾含鍗忓拰鍖婚櫌, and it was stored so (a cron job
    # that kept --encoding gb18030 after the ERP moved to UTF-8).
    result = run("import", "customers", str(write_csv(tmp_path / "customers.csv", CUSTOMERS, encoding)), "--encoding", "gb18030")

    assert result.exit_code == 2, result.output
    assert "is UTF-8 text" in result.output and "without --encoding" in result.output
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


def test_a_utf8_file_of_european_names_given_gb18030_is_refused_not_stored_as_chinese(run, tmp_path: Path) -> None:  # noqa: ANN001
    """A hunt's find: with no Chinese in it, the UTF-8 file passed the check, and Café
    Müller was stored as Caf茅 M眉ller."""
    path = tmp_path / "customers.csv"
    path.write_bytes("external_ref,name,kind,region\nE-1,Café Müller GmbH,installer,Zürich\nE-2,Łódź Instal,installer,\n".encode("utf-8"))

    result = run("import", "customers", str(path), "--encoding", "gb18030")

    assert result.exit_code == 2 and "its accented letters would be stored as Chinese characters" in result.stderr, result.output
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


@pytest.mark.parametrize("name", ["石头", "茅台", "卢露", "毛茂", "莫"])
def test_a_gb18030_file_whose_bytes_are_also_utf8_imports_as_gb18030(run, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    """Each is valid UTF-8 in GB18030 too: 茅台 reads as é with a combining mark, 卢露 as the
    signs ¬¶, 毛茂 as ëï and 莫 as Ī, letters that stand in no word of ASCII letters (a
    review's find: the first version of the check refused 卢露 and 毛茂)."""
    path = tmp_path / "customers.csv"
    path.write_bytes(f"external_ref,name,kind,region\nC-7,{name},installer,\n".encode("gb18030"))
    path.read_bytes().decode("utf-8")  # the case: valid UTF-8 as well

    assert "created 1" in import_ok(run, "customers", path, "--encoding", "gb18030")
    assert query(tmp_path, "SELECT name FROM customers") == [(name,)]


def test_a_gb18030_file_whose_bytes_are_also_utf8_still_imports_as_gb18030(run, tmp_path: Path) -> None:  # noqa: ANN001
    # 石头 in GB18030 is valid UTF-8 too (ʯͷ), but holds no Chinese character read so.
    path = tmp_path / "customers.csv"
    path.write_bytes("external_ref,name,kind,region\nC-7,石头,installer,\nC-8,某小学,owner,魏巍\n".encode("gb18030"))

    assert "created 2" in import_ok(run, "customers", path, "--encoding", "gb18030")
    assert query(tmp_path, "SELECT name FROM customers ORDER BY id") == [("石头",), ("某小学",)]


def test_a_file_cut_inside_a_quoted_cell_is_malformed_and_stores_nothing(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    # The cut row was stored with half its note; the whole file imported later stored that
    # visit again (its content differed), and three visits met O1.4 where two were made.
    whole = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, EXAMPLE_ONE[4], [*EXAMPLE_ONE[5][:7], "第二次拜访\r\n谈了价格"]])
    text = whole.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(text[: text.index("谈了价格".encode())])

    result = run("import", "events", str(cut))

    assert result.exit_code == 2, result.output
    assert "line 3: a quoted cell is still open at the end of the file" in result.output and "Nothing was stored" in result.output
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]
    assert "created 2, duplicate 0" in import_ok(run, "events", whole)


@pytest.mark.parametrize("last", ["\r\n", ""])  # with and without a last line end
def test_quotes_as_people_write_them_still_import(run, tmp_path: Path, last: str) -> None:  # noqa: ANN001
    # A space after a closing quote, text after it: read as they always were (a strict
    # reader, tried against the cut file above, refused such files whole).
    path = tmp_path / "customers.csv"
    path.write_text('external_ref,name,kind,region\r\nC-11,"Smith, Jones" ,owner,East\r\nC-12,"Smith" & Co,owner,"多行\r\n地区"' + last, encoding="utf-8")

    assert "created 2" in import_ok(run, "customers", path)
    assert query(tmp_path, "SELECT name, region FROM customers ORDER BY id") == [("Smith, Jones", "East"), ("Smith & Co", "多行\r\n地区")]


@pytest.mark.parametrize("last", ["\r", ""])  # with and without a last line end
def test_a_file_with_old_mac_line_ends_imports_as_any_other(run, tmp_path: Path, last: str) -> None:  # noqa: ANN001
    # Lines that end with a lone CR ("CSV (Macintosh)" in Excel for Mac): the file was
    # refused with Python's own "new-line character seen in unquoted field - do you need to
    # open the file in universal-newline mode?".
    path = tmp_path / "customers.csv"
    path.write_text('external_ref,name,kind,region\rC-11,"Smith, Jones",owner,East\rC-12,甲公司,owner,"多行\r地区"\rC-13,,owner,' + last, encoding="utf-8")

    result = run("import", "customers", str(path))

    assert result.exit_code == 1, result.output
    assert "created 2, updated 0, unchanged 0, rejected 1" in result.stdout
    assert [(r["line"], r["reason"]) for r in read_csv(tmp_path / "customers.rejected.csv")] == [("5", "name: Field required")]
    assert query(tmp_path, "SELECT name, region FROM customers ORDER BY id") == [("Smith, Jones", "East"), ("甲公司", "多行\r地区")]


def test_an_old_mac_file_cut_inside_a_quoted_cell_is_malformed_and_stores_nothing(run, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "customers.csv"
    path.write_text('external_ref,name,kind,region\rC-11,"Smith, Jones",owner,East\rC-12,甲公司,owner,"多行\r', encoding="utf-8")

    result = run("import", "customers", str(path))

    assert result.exit_code == 2, result.output
    assert "line 3: a quoted cell is still open at the end of the file" in result.output
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


@pytest.mark.parametrize(("encoding", "args", "said"), [
    ("utf-16", [], "the file is UTF-16 text"),  # with a byte order mark, as Excel's "Unicode Text"
    ("utf-16", ["--encoding", "gb18030"], "the file is UTF-16 text"),
    ("utf-16-le", ["--encoding", "utf-16-le"], "cannot read utf-16-le text"),  # no mark: the option says so
    ("utf-16-le", [], "the header line holds NUL bytes, as UTF-16 text does"),  # no mark, no option: the NULs say so
])
def test_a_utf16_file_is_told_to_be_saved_as_utf8(run, tmp_path: Path, encoding: str, args: list[str], said: str) -> None:  # noqa: ANN001
    # It was told it "wants --encoding gb18030" (or, given utf-16, that it was not CSV).
    result = run("import", "customers", str(write_csv(tmp_path / "customers.csv", CUSTOMERS, encoding)), *args)

    assert result.exit_code == 2, result.output
    assert said in result.output and 'save the file as "CSV UTF-8"' in result.output and "--encoding gb18030" not in result.output
    assert query(tmp_path, "SELECT count(*) FROM customers") == [(0,)]


def test_a_row_with_fewer_cells_than_columns_is_rejected_and_clears_nothing(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    # A file cut inside its last row: the missing cells cleared the stored region, rep,
    # contact and tags, as empty cells do.
    before = customer(tmp_path, "C-1")
    rows = [CUSTOMERS[0], ["C-1", "上海市第一人民医院", "owner", "上"]]

    result = run("import", "customers", str(write_csv(tmp_path / "cut.csv", rows)))

    assert result.exit_code == 1, result.output
    assert read_csv(tmp_path / "cut.rejected.csv")[0]["reason"] == "has 4 cells; the header names 8 columns (was the file cut short?)"
    assert customer(tmp_path, "C-1") == before


def test_a_row_cut_short_stays_short_in_the_rejected_file_until_it_is_filled_in(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    # The rejected file padded it with empty cells, and importing that file as it was
    # cleared the values the padding stood for.
    before = customer(tmp_path, "C-1")
    run("import", "customers", str(write_csv(tmp_path / "cut.csv", [CUSTOMERS[0], ["C-1", "上海市第一人民医院", "owner", "上"]])))
    rejected = tmp_path / "cut.rejected.csv"

    again = run("import", "customers", str(rejected), "--rejected", str(tmp_path / "again.csv"))

    assert again.exit_code == 1, again.output
    assert customer(tmp_path, "C-1") == before
    with rejected.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["line", "reason"] and rows[1][2:] == ["C-1", "上海市第一人民医院", "owner", "上"]
    rows[1][2:] = ["C-1", "上海市第一人民医院", "owner", "上海", "王伟", "李主任", "13800000000", "医院|重点"]
    assert "updated 0, unchanged 1" in import_ok(run, "customers", write_csv(rejected, rows))


def test_cells_are_trimmed_as_the_api_trims_texts(run, tmp_path: Path) -> None:  # noqa: ANN001
    # str.strip() also trims U+001C–U+001F, which the API keeps: this code was imported as
    # IMP-4, which the API refuses, and this name as "name", which the API stores as sent.
    rows = [["external_ref", "name", "kind"], ["\x1cIMP-4\x1f", "甲公司", "owner"], ["IMP-5", "\x1cname\x1f", "owner"], ["\u3000IMP-6\xa0", " 乙公司\u2029", "owner"]]

    result = run("import", "customers", str(write_csv(tmp_path / "customers.csv", rows)))

    assert result.exit_code == 1, result.output
    assert [(r["line"], r["reason"]) for r in read_csv(tmp_path / "customers.rejected.csv")] == [("2", "external_ref: must not contain control characters (a line break, a tab…)")]
    assert query(tmp_path, "SELECT external_ref, name FROM customers ORDER BY id") == [("IMP-5", "\x1cname\x1f"), ("IMP-6", "乙公司")]


def test_trimming_takes_off_what_pydantic_takes_off_and_nothing_else() -> None:
    # Each character of the Basic Multilingual Plane, around an x: pydantic-core trims
    # Unicode's White_Space, all of which is there (the last is U+3000).
    texts = [f"{chr(cp)}x{chr(cp)}" for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    by_api = TypeAdapter(list[Annotated[str, StringConstraints(strip_whitespace=True)]]).validate_python(texts)

    assert [text for text, api in zip(texts, by_api) if trimmed(text) != api] == []


def test_a_value_under_a_column_the_header_does_not_name_rejects_its_row(run, tmp_path: Path) -> None:  # noqa: ANN001
    """A hunt's find: it was dropped without a word, and the row stored without it."""
    rows = [[*CUSTOMERS[0], ""], [*CUSTOMERS[1], "lost value"], [*CUSTOMERS[2], ""]]

    result = run("import", "customers", str(write_csv(tmp_path / "customers.csv", rows)))

    assert result.exit_code == 1 and "created 1, updated 0, unchanged 0, rejected 1" in result.stdout
    [rejected] = read_csv(tmp_path / "customers.rejected.csv")
    assert (rejected["line"], rejected["reason"]) == ("2", "has a value in column 9, which the header does not name")


def test_unnamed_columns_after_the_last_named_one_may_be_missing_from_a_row(run, tmp_path: Path) -> None:  # noqa: ANN001
    rows = [[*CUSTOMERS[0], "", ""], CUSTOMERS[1], [*CUSTOMERS[2], ""]]

    assert "created 2" in import_ok(run, "customers", write_csv(tmp_path / "customers.csv", rows))


@pytest.mark.parametrize(
    ("step", "said"),
    [
        # Storing the rows: it was click's "Aborted!" with exit status 1, which says "rows
        # were rejected".
        ("run_import", ("interrupted after 0 of 7 rows", "importing the file again stores only the rest")),
        # Reading the file, once, before any row is stored (seconds for a large one): still
        # "Aborted!" and 1 after the first fix (the docs hunt's find).
        ("open_table", ("nothing was stored",)),
    ],
)
def test_an_interrupted_import_says_so_with_its_own_exit_status(run, tmp_path: Path, customers_and_project: None, monkeypatch: pytest.MonkeyPatch, step: str, said: tuple[str, ...]) -> None:  # noqa: ANN001
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app.imports, step, interrupted)

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])))

    assert result.exit_code == 130
    assert all(text in result.stderr for text in said), result.stderr
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


def test_an_import_that_ignores_ctrl_c_goes_on_ignoring_it(run, tmp_path: Path, customers_and_project: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A review's find: a process started with Ctrl-C ignored (a script's background job)
    was stopped by one that came while a chunk was stored."""
    import os
    import signal

    real = app.imports._store_events

    def store_and_press(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(app.imports, "_store_events", store_and_press)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = import_ok(run, "events", write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE]), "--chunk", "2")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "created 7" in out


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_a_chunk_is_stored_lets_it_finish_and_says_exactly_what_is_stored(run, tmp_path: Path, customers_and_project: None, monkeypatch: pytest.MonkeyPatch, presses: int) -> None:  # noqa: ANN001
    """A hunt's find: a Ctrl-C between a chunk's commit and its count said "interrupted after
    N rows" with a chunk more stored. The first press now takes effect once the chunk in
    flight is stored and counted; a second one stops at once, and says the chunk may be stored."""
    import os
    import signal

    real = app.imports._store_events
    chunks: list[int] = []

    def store_and_press(*args: Any, **kwargs: Any) -> Any:
        chunks.append(1)
        if len(chunks) == 2:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(app.imports, "_store_events", store_and_press)
    # As an interactive shell starts a command: a background job (a CI run started with &)
    # inherits Ctrl-C ignored, which the import leaves as it is (the test below).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run("import", "events", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])), "--chunk", "2")
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert result.exit_code == 130, result.output
    if presses == 1:
        assert "interrupted after 4 of 7 rows: the chunks committed before it stay stored;" in result.stderr, result.stderr
        assert query(tmp_path, "SELECT count(*) FROM events") == [(4,)]
    else:
        assert "interrupted after 2 of 7 rows: the chunks committed before it stay stored, and the chunk in flight may have been stored too" in result.stderr, result.stderr
        assert query(tmp_path, "SELECT count(*) FROM events") == [(2,)]
    assert handler_after is signal.default_int_handler  # put back


@pytest.mark.parametrize(("region", "said"), [("上海", "created 0, updated 0, unchanged 2"), ("北京", "created 0, updated 1, unchanged 1")])
def test_a_record_another_writer_created_after_the_row_looked_is_counted_by_what_this_row_changed(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, region: str, said: str) -> None:  # noqa: ANN001
    """Two imports of one new file at once (PostgreSQL): a row found no record, another
    import created it, and this row's PUT found it. It was counted "updated" whatever it
    changed. Here the look finds nothing though the record is there, as in that race."""
    import_ok(run, "customers", write_csv(tmp_path / "customers.csv", CUSTOMERS))
    monkeypatch.setattr(app.imports, "_stored", lambda *args: None)
    rows = [CUSTOMERS[0], [region if cell == "上海" else cell for cell in CUSTOMERS[1]], *CUSTOMERS[2:]]

    out = import_ok(run, "customers", write_csv(tmp_path / "customers.csv", rows))

    assert said in out


def test_an_import_stopped_by_a_rulebook_switch_says_what_it_stored(run, tmp_path: Path, customers_and_project: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A switch mid-import was answered "no grade was changed", exit 2, though the chunks
    before it were stored (an operator-commands hunt: 1,700 events of 3,000)."""
    import app.grading

    checks = 0
    real = app.grading.active_is

    def switched_after_the_first_chunk(session, rulebook, active) -> None:  # noqa: ANN001
        nonlocal checks
        checks += 1
        if checks > 1:
            raise RulebookChanged("switched")
        real(session, rulebook, active)

    monkeypatch.setattr(app.grading, "active_is", switched_after_the_first_chunk)

    result = run("import", "events", "--chunk", "2", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])))

    assert result.exit_code == 2, result.output
    assert "the chunks committed before it stay stored" in result.stderr and "no grade was changed" not in result.stderr
    assert query(tmp_path, "SELECT count(*) FROM events") == [(2,)]


@pytest.mark.parametrize(
    ("kind", "cell", "value"),
    [
        ("bool", "true", True),
        ("bool", "FALSE", False),
        ("bool", "1", True),
        ("bool", "0", False),
        ("bool", "Yes", True),
        ("bool", "no", False),
        ("bool", "是", True),
        ("bool", "否", False),
        ("bool", "maybe", "maybe"),  # left for the rulebook to refuse
        ("number", "12", 12),
        ("number", "12.5", 12.5),
        ("number", "1e3", 1000.0),
        ("number", "1,200", "1,200"),
        ("number", "1_200", "1_200"),  # Python's int() reads it as 1200; the file did not say so
        ("number", "１２３", "１２３"),  # full-width digits, likewise
        ("number", " 350000 ", 350000),
        ("number", "nan", "nan"),
        ("number", "9" * 5000, "9" * 5000),  # past the 4300 digits Python converts: it raised
        ("enum_list", "samples|credentials", ["samples", "credentials"]),
        ("enum_list", " samples | | other ", ["samples", "other"]),
        ("enum", "welcoming", "welcoming"),
        ("string", "00123", "00123"),
    ],
)
def test_attribute_cells_are_converted_by_the_rulebook_type(kind: str, cell: str, value: Any) -> None:
    assert convert_attribute(kind, cell) == value


def test_attribute_columns_are_stored_typed_and_an_attributes_column_holds_json(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    typed = [
        ["type", "occurred_at", "customer_ref", "attr.amount", "attr.order_ref", "attr.items", "attr.reception", "attr.with_manager"],
        ["order_placed", "2025-09-01T10:00:00+08:00", "C-1", "350000.5", "00123", "", "", ""],
        ["materials_sent", "2025-09-02T10:00:00+08:00", "C-1", "", "", "price_list|other", "", ""],
        ["visit", "2025-09-03T10:00:00+08:00", "C-1", "", "", "", "rejecting", "YES"],
        ["visit", "2025-09-04T10:00:00+08:00", "C-1", "", "", "", "neutral", "maybe"],
    ]
    as_json = [
        ["type", "occurred_at", "customer_ref", "attributes"],
        ["visit", "2025-09-05T10:00:00+08:00", "C-1", '{"reception": "welcoming"}'],
        ["visit", "2025-09-06T10:00:00+08:00", "C-1", "{reception: welcoming}"],
    ]

    assert run("import", "events", str(write_csv(tmp_path / "typed.csv", typed))).exit_code == 1
    assert run("import", "events", str(write_csv(tmp_path / "json.csv", as_json))).exit_code == 1

    assert [json.loads(attributes) for _, _, _, _, attributes, *_ in stored_events(tmp_path)] == [
        {"amount": 350000.5, "order_ref": "00123"},
        {"items": ["price_list", "other"]},
        {"reception": "rejecting", "with_manager": True},
        {"reception": "welcoming", "with_manager": False},
    ]
    assert read_csv(tmp_path / "typed.rejected.csv")[0]["reason"] == "attributes.with_manager: must be true or false"
    assert read_csv(tmp_path / "json.rejected.csv")[0]["reason"].startswith("attributes: is not JSON (Expecting property name")


@pytest.mark.parametrize(
    ("depth", "reason"),
    [
        (5000, 'attributes: is not JSON (nested too deeply); write an object such as {"reception": "welcoming"}'),  # deeper than json reads
        (300, "attributes: attribute values nest at most 32 deep (no attribute type nests at all)"),  # read, but deeper than pydantic writes
    ],
    ids=["deeper-than-json-reads", "deeper-than-pydantic-writes"],
)
def test_an_attributes_cell_nested_too_deeply_is_a_rejected_row(run, tmp_path: Path, customers_and_project: None, depth: int, reason: str) -> None:  # noqa: ANN001
    # It was a RecursionError (a ValueError at 300) with a traceback: nothing of the chunk
    # stored, no rejected file. The API answers the same value with a 422.
    nested = '{"reception": ' + "[" * depth + "]" * depth + "}"
    rows = [
        ["type", "occurred_at", "customer_ref", "attributes"],
        ["visit", "2025-09-05T10:00:00+08:00", "C-1", '{"reception": "welcoming"}'],
        ["visit", "2025-09-06T10:00:00+08:00", "C-1", nested],
        ["visit", "2025-09-07T10:00:00+08:00", "C-1", '{"reception": "neutral"}'],
    ]

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", rows)))

    assert result.exit_code == 1, result.output
    assert "created 2, duplicate 0, rejected 1" in result.stdout
    assert [(r["line"], r["reason"], r["attributes"]) for r in read_csv(tmp_path / "events.rejected.csv")] == [("3", reason, nested)]
    assert query(tmp_path, "SELECT count(*) FROM events") == [(2,)]


def test_a_number_cell_past_ten_to_the_thirteen_is_rejected_naming_the_bound(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    # A number cell is read as the API reads a number attribute, and bounded alike: a cell of
    # 5000 digits stopped the whole import with a traceback.
    cells = ["10000000000000", "10000000000001", "1e300", "9" * 5000]
    rows = [["type", "occurred_at", "customer_ref", "attr.amount"]] + [["order_placed", f"2025-09-0{i + 1}T10:00:00+08:00", "C-1", cell] for i, cell in enumerate(cells)]

    result = run("import", "events", str(write_csv(tmp_path / "orders.csv", rows)))

    assert result.exit_code == 1, result.output
    assert [json.loads(attributes) for _, _, _, _, attributes, *_ in stored_events(tmp_path)] == [{"amount": 10**13}]
    assert [row["reason"] for row in read_csv(tmp_path / "orders.rejected.csv")] == [
        "attributes.amount: must be ≤ 10000000000000 (10¹³)",
        "attributes.amount: must be ≤ 10000000000000 (10¹³)",
        "attributes.amount: must be a number",
    ]


def test_chunks_of_two_store_the_same_as_one_chunk(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    twin = EXAMPLE_ONE[1]  # alike in every cell: one event
    bad = ["visit", "2025-09-15T10:00:00+08:00", "C-1", "", "", "bored", "", ""]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE[:4], bad, twin, *EXAMPLE_ONE[4:]])
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert run("import", "customers", str(tmp_path / "customers.csv"), env={"RAPPORT_DATABASE_URL": other}).exit_code == 0
    assert run("import", "projects", str(tmp_path / "projects.csv"), env={"RAPPORT_DATABASE_URL": other}).exit_code == 0

    in_one = run("import", "events", str(events), "--chunk", "1000")
    one_rejected = (tmp_path / "events.rejected.csv").read_bytes()
    in_twos = run("import", "events", str(events), "--chunk", "2", env={"RAPPORT_DATABASE_URL": other})

    assert in_one.exit_code == in_twos.exit_code == 1
    assert "created 7, duplicate 1, rejected 1" in in_one.stdout and "created 7, duplicate 1, rejected 1" in in_twos.stdout
    assert (tmp_path / "events.rejected.csv").read_bytes() == one_rejected
    levels = "SELECT external_ref, level FROM customers ORDER BY external_ref"
    assert (stored_events(tmp_path), query(tmp_path, levels)) == (stored_events(tmp_path, "other.db"), query(tmp_path, levels, "other.db"))
    assert query(tmp_path, levels) == [("C-1", 1), ("C-2", 0)]


def test_a_dry_run_reports_every_row_and_stores_nothing(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    bad = ["visit", "2025-09-15T10:00:00+08:00", "C-9", "", "", "neutral", "", ""]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE, EXAMPLE_ONE[0], bad])
    more_customers = write_csv(tmp_path / "more.csv", [CUSTOMERS[0], ["C-3", "苏州工业园区管委会", "owner", "", "", "", "", ""]])

    result = run("import", "events", str(events), "--dry-run")
    customers = run("import", "customers", str(more_customers), "--dry-run")

    assert result.exit_code == 1
    assert "created 7, duplicate 1, rejected 1" in result.stdout and "dry run: nothing was stored" in result.stdout
    assert [r["line"] for r in read_csv(tmp_path / "events.rejected.csv")] == ["10"]
    assert customers.exit_code == 0 and "created 1, updated 0, unchanged 0, rejected 0" in customers.stdout
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]
    assert query(tmp_path, "SELECT external_ref FROM customers ORDER BY id") == [("C-1",), ("C-2",)]
    assert level_of(tmp_path, "C-1") == 0


def test_customers_are_updated_by_external_ref_and_columns_the_file_lacks_are_kept(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    reps = write_csv(tmp_path / "reps.csv", [["external_ref", "rep", "contact.phone"], ["C-1", "张敏", "021-55550000"], ["C-2", "王伟", ""]])
    cleared = write_csv(tmp_path / "cleared.csv", [["external_ref", "region", "tags"], ["C-1", "", ""]])
    kinds = write_csv(tmp_path / "kinds.csv", [["external_ref", "kind"], ["C-1", "installer"], ["C-4", "owner"], ["", "owner"]])

    assert "created 0, updated 1, unchanged 1, rejected 0" in import_ok(run, "customers", reps)
    assert customer(tmp_path, "C-1") == {
        "name": "上海市第一人民医院", "kind": "owner", "region": "上海", "rep": "张敏", "contact": {"person": "李主任", "phone": "021-55550000"}, "tags": ["医院", "重点"]
    }
    assert "created 0, updated 1, unchanged 0, rejected 0" in import_ok(run, "customers", cleared)
    assert customer(tmp_path, "C-1")["region"] is None and customer(tmp_path, "C-1")["tags"] == []

    result = run("import", "customers", str(kinds))
    assert result.exit_code == 1 and "created 0, updated 0, unchanged 0, rejected 3" in result.stdout
    assert [(r["line"], r["reason"]) for r in read_csv(tmp_path / "kinds.rejected.csv")] == [
        ("2", "kind: is 'owner' on the stored record and cannot change"),
        ("3", "name: Field required"),
        ("4", "external_ref: String should have at least 1 character"),
    ]


def test_a_code_on_two_rows_is_stored_from_the_first_and_a_rerun_changes_nothing(run, tmp_path: Path) -> None:  # noqa: ANN001
    # An ERP export that lists a customer twice: applying both rows moved the version on
    # every run, though the file never changed (import.md: a second import changes nothing).
    twice = write_csv(tmp_path / "twice.csv", [["external_ref", "name", "kind", "rep"], ["DUP-1", "甲公司", "owner", "张三"], ["DUP-1", "甲公司", "owner", "李四"]])

    first = run("import", "customers", "--chunk", "1", str(twice))
    again = run("import", "customers", str(twice))

    assert first.exit_code == again.exit_code == 1
    assert "created 1, updated 0, unchanged 0, rejected 1" in first.stdout
    assert "created 0, updated 0, unchanged 1, rejected 1" in again.stdout
    assert [(r["line"], r["reason"]) for r in read_csv(tmp_path / "twice.rejected.csv")] == [("3", "external_ref: line 2 has this code already: one row per code")]
    assert query(tmp_path, "SELECT rep, version FROM customers WHERE external_ref = 'DUP-1'") == [("张三", 1)]


def test_project_rows_name_an_owner_that_exists_and_is_an_owner(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    rows = [
        ["external_ref", "name", "owner_ref", "owner_id", "amount"],
        ["P-2", "苏州中心商场空调", "C-9", "", ""],
        ["P-3", "园区厂房", "C-2", "", ""],
        ["P-4", "园区厂房二期", "C-1", "", "-5"],
        ["P-5", "无主项目", "", "", ""],
        ["P-6", "园区厂房三期", "C-1", "", "1_200_000"],  # read as the API reads numbers: ASCII digits
        ["P-1", "新门诊楼暖通工程(二期)", "", "1", "1200000"],
    ]

    result = run("import", "projects", str(write_csv(tmp_path / "more-projects.csv", rows)))

    assert result.exit_code == 1 and "created 0, updated 1, unchanged 0, rejected 5" in result.stdout
    assert [r["reason"] for r in read_csv(tmp_path / "more-projects.rejected.csv")] == [
        "owner_ref: no customer with external_ref 'C-9'",
        "owner_id: customer 2 is an installer; a project's owner must be an owner",
        "amount: Input should be greater than or equal to 0",
        "give exactly one of owner_id and owner_ref",
        "amount: Input should be a valid number",
    ]
    assert query(tmp_path, "SELECT name, region FROM projects") == [("新门诊楼暖通工程(二期)", "上海")]


def test_a_fixed_rejected_file_imports_as_it_is_and_a_stale_one_is_removed(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    for_c3 = ["visit", "2025-09-15T10:00:00+08:00", "C-3", "", "", "welcoming", "", ""]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE, for_c3])
    assert run("import", "events", str(events)).exit_code == 1
    rejected = tmp_path / "events.rejected.csv"
    import_ok(run, "customers", write_csv(tmp_path / "c3.csv", [["external_ref", "name", "kind"], ["C-3", "苏州工业园区管委会", "owner"]]))

    assert "created 1, duplicate 0, rejected 0" in import_ok(run, "events", rejected)  # its line and reason columns are ignored
    out = import_ok(run, "events", events)

    assert "created 0, duplicate 8, rejected 0" in out
    assert "removed" in out and not rejected.exists()


def test_a_row_with_more_cells_than_columns_is_rejected(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    rows = [EVENT_COLUMNS, EXAMPLE_ONE[0], [*EXAMPLE_ONE[1], "extra", ""], EXAMPLE_ONE[2]]

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", rows)))

    assert result.exit_code == 1 and "created 2, duplicate 0, rejected 1" in result.stdout
    assert read_csv(tmp_path / "events.rejected.csv")[0]["reason"] == "has 9 cells; the header names 8 columns"


def test_a_bad_source_is_refused_before_anything_is_stored(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    result = run("import", "events", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])), "--source", "ERP Export")

    assert result.exit_code == 2 and "source 'ERP Export'" in result.output
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.parametrize(("actor", "said"), [
    ("system", "actors Rapport records itself"),
    ("key:bootstrap", "actors Rapport records itself"),
    ("x" * 101, "at most 100 characters"),
    ("王伟\x07", "control characters"),
    ("王\udcff", "lone surrogate"),  # bytes that were not UTF-8, as the OS hands them over
])
def test_an_actor_that_x_actor_would_refuse_is_refused_before_anything_is_stored(run, tmp_path: Path, customers_and_project: None, actor: str, said: str) -> None:  # noqa: ANN001
    """A hunt's find: a long --actor failed at the first chunk on PostgreSQL as "the database
    failed" (SQLite kept it), and system or key:… passed the rows off as another's."""
    result = run("import", "events", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])), "--actor", actor)

    assert result.exit_code == 2 and said in result.output, result.output
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


def test_a_blank_actor_is_none_and_a_file_name_that_is_not_utf8_is_written_escaped(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    """A review's finds: a blank --actor was stored blank (a blank X-Actor is none), and a
    file name with a byte that is not UTF-8 ended in a UnicodeEncodeError, exit 1."""
    name = "ev\udcff.csv"  # the byte 0xff, as Python hands a file name over
    import_ok(run, "events", write_csv(tmp_path / name, [EVENT_COLUMNS, *EXAMPLE_ONE]), "--actor", "  ")

    assert query(tmp_path, "SELECT DISTINCT actor FROM events") == [("import:ev\\xff.csv",)]


def test_the_default_actor_of_a_long_file_name_is_cut_to_what_an_actor_holds(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    name = "import_from_the_erp_nightly_export_" + "x" * 80 + ".csv"
    import_ok(run, "events", write_csv(tmp_path / name, [EVENT_COLUMNS, *EXAMPLE_ONE]))

    assert query(tmp_path, "SELECT DISTINCT actor FROM events") == [(f"import:{name}"[:100],)]


def test_a_file_at_the_rejected_path_that_is_no_rejected_file_is_kept_and_the_import_refused(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    """A hunt's find: any file at the --rejected path was deleted, and reported "left by an
    earlier import" (a customers' master file, given by mistake)."""
    master = write_csv(tmp_path / "my_customers_master.csv", CUSTOMERS)
    before = master.read_bytes()

    result = run("import", "events", str(write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE])), "--rejected", str(master))

    assert result.exit_code == 2 and "is not a rejected file of an earlier import" in result.stderr, result.output
    assert master.read_bytes() == before
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


def test_a_rejected_file_of_an_earlier_run_is_removed_when_nothing_is_rejected(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    bad = ["visit", "2025-09-15T10:00:00+08:00", "C-9", "", "", "neutral", "", ""]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE, bad])
    assert run("import", "events", str(events)).exit_code == 1
    rejected = tmp_path / "events.rejected.csv"
    assert rejected.exists()

    out = import_ok(run, "events", write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE]))

    assert f"removed {rejected}, left by an earlier import" in out and not rejected.exists()


def test_a_rejected_file_in_a_folder_that_does_not_exist_is_refused_before_anything_is_stored(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    bad = ["visit", "2025-09-15T10:00:00+08:00", "C-9", "", "", "neutral", "", ""]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, *EXAMPLE_ONE, bad])

    result = run("import", "events", str(events), "--rejected", str(tmp_path / "no-such-folder" / "x.csv"))

    assert result.exit_code == 2, result.output
    assert "no-such-folder' does not exist" in result.stderr and "Nothing was stored." in result.stderr
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


def test_a_cell_longer_than_the_csv_field_limit_refuses_the_whole_file(run, tmp_path: Path, customers_and_project: None) -> None:  # noqa: ANN001
    long_note = [*EXAMPLE_ONE[1][:-1], "备" * 131_073]
    events = write_csv(tmp_path / "events.csv", [EVENT_COLUMNS, EXAMPLE_ONE[0], long_note])

    result = run("import", "events", str(events))

    assert result.exit_code == 2, result.output
    assert "field larger than field limit (131072)" in result.stderr and "Nothing was stored." in result.stderr
    assert query(tmp_path, "SELECT count(*) FROM events") == [(0,)]


def test_the_import_grades_alike_on_the_test_database(migrated: str, tmp_path: Path) -> None:
    """The import's transactions, savepoints and locks on the configured database."""
    db = Database(make_engine(migrated))
    empty_tables(db.engine)
    rulebook = load_rulebook()
    now = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    files = [("customers", CUSTOMERS + [["C-2", "改成甲方", "owner", "", "", "", "", ""]]), ("projects", PROJECTS), ("events", [EVENT_COLUMNS, *EXAMPLE_ONE])]
    try:
        reports = [
            run_import(db, rulebook, open_table(write_csv(tmp_path / f"{kind}.csv", rows), kind, "utf-8-sig"), rejected_path=tmp_path / f"{kind}.rejected.csv", options=Options(chunk=3, actor="test"), clock=lambda: now)
            for kind, rows in files
        ]
        with db.session(write=False) as session:
            levels = session.execute(text("SELECT external_ref, level FROM customers ORDER BY external_ref")).all()
    finally:
        db.dispose()

    assert [r.summary() for r in reports] == [
        "created 2, updated 0, unchanged 0, rejected 1",
        "created 1, updated 0, unchanged 0, rejected 0",
        "created 7, duplicate 0, rejected 0",
    ]
    assert [tuple(r) for r in levels] == [("C-1", 1), ("C-2", 0)]
    assert read_csv(tmp_path / "customers.rejected.csv")[0]["reason"] == "external_ref: line 3 has this code already: one row per code"


def test_a_column_the_file_lacks_keeps_a_change_committed_while_the_import_waited(migrated: str, tmp_path: Path) -> None:
    """The stored record is read under the lock the PUT takes: read before it, a column the
    file does not have was written back as it stood before another transaction's change,
    committed while the import waited for the row (a hunt's find: a region changed by hand
    came back)."""
    if migrated.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time: the import cannot read before another write commits")
    import threading
    import time

    db = Database(make_engine(migrated))
    empty_tables(db.engine)
    rulebook = load_rulebook()
    now = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)

    def imported(kind: str, rows: Rows) -> None:
        run_import(db, rulebook, open_table(write_csv(tmp_path / f"{kind}.csv", rows), kind, "utf-8-sig"), rejected_path=tmp_path / f"{kind}.rejected.csv", options=Options(chunk=3, actor="test"), clock=lambda: now)

    try:
        imported("customers", CUSTOMERS)
        with db.engine.connect() as holder:
            holder.execute(text("UPDATE customers SET region = '区域-新', version = version + 1 WHERE external_ref = 'C-1'"))
            importer = threading.Thread(target=imported, args=("customers", [["external_ref", "rep"], ["C-1", "销售2"]]))
            importer.start()
            time.sleep(1)  # the import reads, then waits for the row
            holder.commit()
        importer.join(30)
        with db.session(write=False) as session:
            stored = session.execute(text("SELECT region, rep FROM customers WHERE external_ref = 'C-1'")).one()
    finally:
        db.dispose()

    assert tuple(stored) == ("区域-新", "销售2")
