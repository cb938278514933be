"""Importing events, customers and projects from CSV files (the logic of `rapport import`;
the command itself is in app/cli.py).

A row is validated exactly as the same record sent to the API would be (the API's schemas,
then the services) and stored through the same service functions. Rows go in chunks, one
write transaction each, so a large file never holds SQLite's write lock for long. Importing
a file again changes nothing: events are keyed by source + external_id, customers and
projects by external_ref.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
import re
import signal
import threading
from collections import Counter
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Sequence

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from app.chunks import chunked
from app.api.bodies import read_json, validate_item
from app.api.problems import validation_reason
from app.api.schemas import CustomerPut, EventIn, ProjectPut, Ref
from app.db import models as m
from app.db.engine import Database
from app.domain.rulebook import Rulebook
from app.domain.validation import MAX_ACTOR, actor_problem, number_in_text
from app.errors import AppError, FieldError
from app.services.batch import record_batch
from app.services.customers import put_customer
from app.services.events import NewEvent
from app.services.projects import put_project
from app.services.records import locked_by_ref

ATTR = "attr."  # events: one column per attribute, e.g. attr.reception
LIST_SEPARATOR = "|"  # tags, and enum_list attributes
TRUE = frozenset({"true", "1", "yes", "是"})
FALSE = frozenset({"false", "0", "no", "否"})
# The rejected file's own columns: a rejected file, once fixed, imports as it is.
REPORT_COLUMNS = ("line", "reason")
# What the API's schemas trim from a text (pydantic's strip_whitespace: Unicode White_Space).
# str.strip() trims U+001C–U+001F too, so "\x1cIMP-4\x1f" was imported as the code IMP-4,
# which the API refuses (control characters): a hunt's find.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

EVENT_FIELDS = ("type", "occurred_at", "customer_ref", "customer_id", "project_ref", "project_id", "source", "external_id", "note")
CONTACT = ("contact.person", "contact.phone", "contact.email", "contact.address")
OWNER = ("owner_ref", "owner_id")  # one field, named either way
# The API's rule for a source, so that a bad --source is refused before any row is read.
SOURCE = TypeAdapter(Annotated[str, *EventIn.model_fields["source"].metadata])
REF = TypeAdapter(Ref)


class UnusableInput(Exception):
    """The file cannot be imported at all, so nothing of it is stored: a missing or unknown
    column, text that is not in the encoding, malformed CSV (a cell over the csv module's
    limit of 131,072 characters too), a bad option (a rejected file's folder that is missing
    or not writable too)."""


@dataclass(frozen=True)
class Layout:
    columns: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]  # each: at least one of these columns
    statuses: tuple[str, ...]


LAYOUTS = {
    "events": Layout((*EVENT_FIELDS, "attributes"), (("type",), ("occurred_at",), ("customer_ref", "customer_id", "project_ref", "project_id")), ("created", "duplicate", "rejected")),
    "customers": Layout(("external_ref", "name", "kind", "region", "rep", *CONTACT, "tags"), (("external_ref",),), ("created", "updated", "unchanged", "rejected")),
    "projects": Layout(("external_ref", "name", *OWNER, "region", "amount", "expected_close", "rep", "tags"), (("external_ref",),), ("created", "updated", "unchanged", "rejected")),
}


class CustomerRow(CustomerPut):
    external_ref: Ref


class ProjectRow(ProjectPut):
    external_ref: Ref


@dataclass(frozen=True)
class Row:
    line: int  # the line the row starts on; the header is line 1
    values: tuple[str, ...]  # the cells as written
    cells: dict[str, str]  # column -> trimmed value; empty cells left out
    problems: tuple[FieldError, ...] = ()  # what is wrong with the row's shape


Outcome = tuple[Row, str, list[FieldError]]  # the row, its status, why it was rejected

@dataclass(frozen=True)
class Table:
    """A checked CSV file: its columns are usable and all of it decodes and parses."""

    kind: str
    path: Path
    encoding: str
    header: tuple[str, ...]
    rows: int

    def __iter__(self) -> Iterator[Row]:
        records = _records(self.path, self.encoding)
        next(records)  # the header
        for line, values in records:
            cells = {name: trimmed(v) for name, v in zip(self.header, values) if name and name not in REPORT_COLUMNS and trimmed(v)}
            extra = [v for v in values[len(self.header) :] if trimmed(v)]
            # A row short of the named columns (a file cut inside it) would clear what its
            # missing cells hold: an empty cell clears a value, a missing one must not.
            # A value under a column the header does not name (Excel's trailing comma) was
            # dropped without a word (a hunt's find): the row is rejected, as one with extra cells.
            unnamed = next((i for i, (name, v) in enumerate(zip(self.header, values)) if not name and trimmed(v)), None)
            problems = ()
            if extra:
                problems = (FieldError("", f"has {len(self.header) + len(extra)} cells; the header names {len(self.header)} columns"),)
            elif unnamed is not None:
                problems = (FieldError("", f"has a value in column {unnamed + 1}, which the header does not name"),)
            elif len(values) < self.named:
                problems = (FieldError("", f"has {len(values)} cells; the header names {self.named} columns (was the file cut short?)"),)
            yield Row(line, tuple(values), cells, problems)

    @property
    def named(self) -> int:
        """The columns a row must reach: up to the last the header names (Excel may add
        unnamed ones after it; the rejected file's own line and reason columns may be left
        out of a fixed row)."""
        return max((i + 1 for i, name in enumerate(self.header) if name and name not in REPORT_COLUMNS), default=0)


def open_table(path: Path, kind: str, encoding: str) -> Table:
    """Read the whole file once, so that a bad column, byte or quote stops the import
    before anything is stored."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UnusableInput(f"unknown encoding {encoding!r} (try utf-8-sig or gb18030)") from None
    _check_ascii_compatible(path, encoding)
    _check_not_utf8(path, encoding)
    records = _records(path, encoding)
    first = next(records, None)
    if first is None:
        raise UnusableInput(f"{path.name} is empty: the first line must name the columns")
    header = tuple(trimmed(trimmed(name).lstrip("\ufeff")) for name in first[1])
    _check_header(kind, header)
    return Table(kind, path, encoding, header, sum(1 for _ in records))


def _check_ascii_compatible(path: Path, encoding: str) -> None:
    """Lines are found by their bytes (`_lines`), so the file's encoding must write line
    ends, commas and quotes as ASCII does. A UTF-16 file (Excel's "Unicode Text") was told it
    wanted --encoding gb18030 (a hunt's find)."""
    with path.open("rb") as raw:
        start = raw.read(4096)
    if start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise UnusableInput("the file is UTF-16 text (it starts with a UTF-16 byte order mark): save the file as \"CSV UTF-8\" and import that")
    try:
        ascii_like = codecs.decode(b'\r\n,"', encoding) == '\r\n,"'
    except Exception:  # not a text encoding (hex, zlib, rot13…): each fails its own way
        ascii_like = False
    if not ascii_like:
        raise UnusableInput(f"this command cannot read {encoding} text (it reads encodings that write line ends, commas and quotes as ASCII does, such as utf-8-sig and gb18030): save the file as \"CSV UTF-8\" and import that")
    if b"\x00" in start.split(b"\n", 1)[0]:
        # UTF-16 without its mark: every ASCII letter of the header followed by a NUL, which
        # was reported as unknown columns "t\x00y\x00p\x00e\x00" (a docs hunt's find).
        raise UnusableInput("the header line holds NUL bytes, as UTF-16 text does: save the file as \"CSV UTF-8\" and import that")


_GB = {"gb18030", "gbk", "gb2312"}
# Chinese characters (CJK ideographs, their extension A and compatibility forms): what a
# UTF-8 file holds that a GB18030 file read as UTF-8 practically never does. GB18030 bytes
# can be valid UTF-8 (石头 reads as ʯͷ), but not as ideographs, which take three bytes of
# the forms 0xE3–0xE9 followed by two continuation bytes.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


# The letters of Latin-1 and Latin Extended-A, what a European name or place in UTF-8 reads
# as (Café Müller, Zürich, Łódź). 92 GB2312 characters are such a letter too, read as UTF-8
# (茅 é, 毛 ë, 莫 Ī), so a GB18030 file is taken for European names only where it holds no
# other character beyond ASCII (`_NOT_LATIN_LETTER`: 卢露 reads as the signs ¬¶, 石头 as ʯͷ)
# and a letter stands within a word of ASCII letters (`_IN_A_WORD`: Café, Müller), where a
# Chinese name in a cell stands between commas or other characters.
_LATIN_LETTER = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017f"
_NOT_LATIN_LETTER = re.compile(f"[^\\x00-\\x7f{_LATIN_LETTER}]")
_IN_A_WORD = re.compile(f"[A-Za-z][{_LATIN_LETTER}]|[{_LATIN_LETTER}][A-Za-z]")


def _check_not_utf8(path: Path, encoding: str) -> None:
    """A UTF-8 file given a GB encoding decodes, as garbage: 北京协和医院 as 鍖椾含鍗忓拰鍖婚櫌
    (a cron job kept --encoding gb18030 after the ERP moved to UTF-8). Such a file is
    refused where it is UTF-8 through and through and its UTF-8 reading holds Chinese
    characters, which a GB18030 file practically never gives (`_HAN`), or holds only
    European letters beyond ASCII, one of them within a word (Café Müller was stored as
    Caf茅 M眉ller, a hunt's find; a review's 卢露 and 毛茂 must still import)."""
    if codecs.lookup(encoding).name not in _GB:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    chinese = other = in_a_word = False
    with path.open("rb") as raw:
        if raw.read(3) == codecs.BOM_UTF8:
            raise UnusableInput(f"the file starts with a UTF-8 byte order mark: it is UTF-8 text, not {encoding}; import it without --encoding")
        raw.seek(0)
        try:
            for block in iter(lambda: raw.read(1 << 16), b""):
                text = decoder.decode(block)
                chinese = chinese or _HAN.search(text) is not None
                other = other or _NOT_LATIN_LETTER.search(text) is not None
                in_a_word = in_a_word or _IN_A_WORD.search(text) is not None
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return
    if chinese:
        raise UnusableInput(f"the file is UTF-8 text, not {encoding}: import it without --encoding (read as {encoding}, its Chinese would be stored as garbage)")
    if in_a_word and not other:  # a letter within a word is beyond ASCII already
        raise UnusableInput(f"the file is UTF-8 text, not {encoding}: import it without --encoding (read as {encoding}, its accented letters would be stored as Chinese characters)")


def _records(path: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """The CSV records that are not blank, with the line each starts on."""
    with path.open("rb") as raw:
        # A quote still open at the end of the file (a file cut in a quoted note) was read as
        # a cell ending there, and the cut row stored; importing the whole file later stored
        # that event a second time, under another content (a hunt's find). The reader's
        # strict mode would say so, but it also refuses what Excel and people write and
        # this reader always took (`"Smith, Jones" ,`): instead a line of its own follows
        # the file, which arrives as a record of its own unless a quote is still open.
        reader = csv.reader(itertools.chain(_decoded(_lines(raw), encoding), ("\n", f"{_END}\n")))
        start = 1
        try:
            for values in reader:
                if values == [_END]:
                    return
                if any(_END in v for v in values):
                    raise UnusableInput(f"line {start}: a quoted cell is still open at the end of the file (was the file cut short?)")
                if any(trimmed(v) for v in values):
                    yield start, values
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            hint = "; a file saved by Excel on Chinese Windows wants --encoding gb18030" if encoding.lower().startswith("utf") else ""
            raise UnusableInput(f"line {reader.line_num + 1} is not {encoding} text ({exc.reason}){hint}") from None
        except csv.Error as exc:
            raise UnusableInput(f"line {reader.line_num}: not readable as CSV ({exc})") from None


_END = "\ue000rapport: end of file\ue000"  # a private-use mark no file holds
# A lone CR ends a line too, as in an old Mac file ("CSV (Macintosh)" in Excel for Mac): the
# csv module reads it so from a file opened with newline="", but a binary file's lines end at
# LF only, and the reader refused the file ("new-line character seen in unquoted field").
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _lines(raw: Iterator[bytes]) -> Iterator[bytes]:
    """The file's lines, each with its end: LF, CR LF, or a lone CR. Split as bytes, so that a
    decoding error is still reported on its own line; a line end inside a quoted cell is
    kept as it is, the reader joining the lines. (A file of CR-only lines is one LF-line:
    it is split in memory, a few MB for 20,000 rows.)"""
    for block in raw:
        yield from filter(None, _LONE_CR.split(block))


def _decoded(raw: Iterator[bytes], encoding: str) -> Iterator[str]:
    # Line by line, so that a decoding error is reported on the line where it is.
    decoder = codecs.getincrementaldecoder(encoding)()
    for chunk in raw:
        yield decoder.decode(chunk)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _check_header(kind: str, header: tuple[str, ...]) -> None:
    layout = LAYOUTS[kind]
    named = [name for name in header if name]
    problems = [f"column {name!r} appears twice" for name in sorted({n for n in named if named.count(n) > 1})]
    problems += [f"missing column: {' or '.join(group)}" for group in layout.required if not any(c in header for c in group)]
    known = (*layout.columns, *REPORT_COLUMNS)
    unknown = [n for n in named if n not in known and not (kind == "events" and n.startswith(ATTR) and n != ATTR)]
    if unknown:
        extra = f" and {ATTR}<attribute>" if kind == "events" else ""
        problems.append(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} ({'an' if kind[0] in 'aeiou' else 'a'} {kind} file has {', '.join(layout.columns)}{extra})")
    if "attributes" in header and any(n.startswith(ATTR) for n in header):
        problems.append(f"give attributes either as one 'attributes' column (JSON) or as {ATTR}<name> columns, not both")
    if problems:
        raise UnusableInput("; ".join(problems))


def trimmed(text: str) -> str:
    """A cell's text as the API would take it: without the white space around it."""
    return text.strip(WHITE_SPACE)


def convert_attribute(kind: str, text: str) -> Any:
    """A cell's text as a value of a rulebook attribute type. Text that does not convert is
    passed on as it is, for the rulebook to refuse with its own reason."""
    if kind == "bool":
        low = text.lower()
        return True if low in TRUE else False if low in FALSE else text
    if kind == "number":
        number = number_in_text(trimmed(text))
        return text if number is None else number
    if kind == "enum_list":
        return _list(text)
    return text


def derived_external_id(event: EventIn) -> str:
    """A stable external_id for a row that has none: the same content gives the same id,
    so importing a file again stores nothing twice."""
    values = event.model_dump(mode="json", exclude={"external_id", "source"})
    values["occurred_at"] = event.occurred_at.astimezone(timezone.utc).isoformat()
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "row:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def default_actor(file: Path) -> str:
    """`import:<file name>`, the name cut to what an actor holds; a byte of the name that is
    not UTF-8 written as its escape (`\\xff`): as the OS gave it, it could not be stored."""
    name = file.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f"import:{name}"[:MAX_ACTOR]


@dataclass(frozen=True)
class Options:
    chunk: int
    actor: str
    source: str = "import"  # events: for rows whose source cell is empty
    dry_run: bool = False

    def __post_init__(self) -> None:
        try:
            SOURCE.validate_python(self.source)
        except ValidationError as exc:
            raise UnusableInput(f"source {self.source!r}: {validation_reason(exc.errors()[0])}") from None
        # As X-Actor is checked: a long one failed at the first chunk on PostgreSQL as "the
        # database failed" (SQLite kept it), and `system` or `key:…` passed the rows off as
        # the service's or a key's (a hunt's find).
        problem = actor_problem(self.actor)
        if problem:
            raise UnusableInput(f"actor {self.actor[:120]!r}: {problem}")


@dataclass
class Report:
    statuses: tuple[str, ...]
    counts: Counter[str] = field(default_factory=Counter)
    rejected_file: Path | None = None  # written by this run
    removed_stale: bool = False  # a rejected file of an earlier run was removed

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{status} {self.counts[status]}" for status in self.statuses)


def run_import(
    db: Database,
    rulebook: Rulebook,
    table: Table,
    *,
    rejected_path: Path,
    options: Options,
    clock: Callable[[], datetime],
    progress: Callable[[int], None] = lambda rows: None,
) -> Report:
    """Store the table's rows chunk by chunk; write the rejected ones to `rejected_path`.
    With `dry_run`, everything runs in one transaction that is rolled back."""
    store = _store_events if table.kind == "events" else _store_records
    report = Report(LAYOUTS[table.kind].statuses)
    first_lines: dict[str, int] = {}  # customers, projects: the line of each code's first row
    with _RejectedFile(rejected_path, table.header) as rejected, _transactions(db, options.dry_run) as transaction:
        report.removed_stale = rejected.removed_stale
        for chunk in chunked(table, options.chunk):
            chunk, repeats = (chunk, []) if table.kind == "events" else _repeated_codes(chunk, first_lines)
            with interrupts_between_chunks():
                with transaction() as session:
                    outcomes = list(store(session, rulebook, table, chunk, options, clock()))
                outcomes = sorted(outcomes + repeats, key=lambda outcome: outcome[0].line)
                for row, status, errors in outcomes:
                    report.counts[status] += 1
                    if errors:
                        rejected.add(row, errors)
                progress(len(chunk) + len(repeats))
        report.rejected_file = rejected.path if rejected.written else None
    return report


class Forced(KeyboardInterrupt):
    """A second Ctrl-C while a chunk is stored: raised at once, so the chunk may have
    committed without being counted."""


@contextmanager
def interrupts_between_chunks() -> Iterator[None]:
    """Ctrl-C while a chunk is stored, counted and reported takes effect once it has been,
    so "interrupted after N rows" says exactly what is stored: one that came between a
    chunk's commit and its count said a chunk fewer (a hunt's find, 1 run in 5). A second
    Ctrl-C stops at once (`Forced`), for a chunk that waits long on a lock. Only the main
    thread receives signals; elsewhere nothing changes, nor where Ctrl-C does not stop the
    process as Python's own handler does (ignored, as in a background job of a script: it
    then stopped the import, a review's find)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed: list[int] = []

    def on_interrupt(signum: int, _frame: Any) -> None:
        if pressed:
            raise Forced()
        pressed.append(signum)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt()


def _repeated_codes(rows: Sequence[Row], first_lines: dict[str, int]) -> tuple[list[Row], list[Outcome]]:
    """The rows whose code no earlier row of the file had, and the others, rejected. Two rows
    of one code would both be applied, the second over the first, on every run: the record's
    version moved each night though the file never changed (an ERP export that lists a
    customer twice). (Events are told apart by their own ids: `record_batch`.)"""
    fresh: list[Row] = []
    repeats: list[Outcome] = []
    for row in rows:
        code = row.cells.get("external_ref")
        first = first_lines.setdefault(code, row.line) if code else row.line
        if first == row.line:
            fresh.append(row)
        else:
            repeats.append((row, "rejected", [FieldError("external_ref", f"line {first} has this code already: one row per code")]))
    return fresh, repeats


def _store_events(session: Session, rulebook: Rulebook, table: Table, rows: Sequence[Row], options: Options, now: datetime) -> Iterator[Outcome]:
    items = [_event_item(row, rulebook, options.source) for row in rows]
    outcome = record_batch(session, rulebook, items, atomic=False, actor=options.actor, now=now)
    for result in outcome.results:
        yield rows[result.index], result.status, result.errors


def _event_item(row: Row, rulebook: Rulebook, source: str) -> NewEvent | list[FieldError]:
    if row.problems:
        return list(row.problems)
    cells = row.cells
    body: dict[str, Any] = {name: cells[name] for name in EVENT_FIELDS if name in cells}
    body.setdefault("source", source)
    problems: list[FieldError] = []
    if "attributes" in cells:
        try:
            # As the API reads a body: a cell nested deeper than json reads is a rejected
            # row, not a RecursionError that stopped the import with a traceback.
            body["attributes"] = read_json(cells["attributes"])
        except ValueError as exc:
            problems.append(FieldError("attributes", f"is not JSON ({exc}); write an object such as {{\"reception\": \"welcoming\"}}"))
    else:
        event_type = rulebook.event_types.get(cells.get("type", ""))
        specs = event_type.attributes if event_type else {}
        named = {column[len(ATTR) :]: text for column, text in cells.items() if column.startswith(ATTR)}
        body["attributes"] = {name: convert_attribute(specs[name].type, text) if name in specs else text for name, text in named.items()}
    event = validate_item(EventIn, body)
    if isinstance(event, list) or problems:
        return problems + (event if isinstance(event, list) else [])
    # (A value nested deeper than pydantic writes, 255, is refused by EventIn already.)
    return NewEvent(**{**event.model_dump(), "external_id": event.external_id or derived_external_id(event)})


RECORDS: dict[str, tuple[type[m.Customer] | type[m.Project], type[BaseModel], Callable[..., tuple[Any, bool]]]] = {
    "customers": (m.Customer, CustomerRow, put_customer),
    "projects": (m.Project, ProjectRow, put_project),
}


def _store_records(session: Session, rulebook: Rulebook, table: Table, rows: Sequence[Row], options: Options, now: datetime) -> Iterator[Outcome]:
    for row in rows:
        status, errors = _put_record(session, rulebook, table, row, now)
        yield row, status, errors


def _put_record(session: Session, rulebook: Rulebook, table: Table, row: Row, now: datetime) -> tuple[str, list[FieldError]]:
    if row.problems:
        return "rejected", list(row.problems)
    model, schema, put = RECORDS[table.kind]
    try:
        # Checked before it is looked up: the database must not see a NUL or 10,000 characters.
        ref = REF.validate_python(row.cells.get("external_ref", ""))
    except ValidationError as exc:
        return "rejected", [FieldError("external_ref", validation_reason(exc.errors()[0]))]
    stored = _stored(session, model, ref)
    item = validate_item(schema, _record_body(table, row, stored))
    if isinstance(item, list):
        return "rejected", item
    version = stored.version if stored is not None else None
    try:
        # A savepoint: a row refused here leaves the chunk's other rows stored.
        with session.begin_nested():
            record, created = put(session, rulebook, item.external_ref, item.model_dump(exclude={"external_ref"}), if_match=None, now=now)
    except AppError as exc:
        return "rejected", exc.errors or [FieldError("", exc.detail)]
    if created:
        return "created", []
    if version is None:
        # Created by another writer after this row looked (two imports of one new file at
        # once): its version says nothing of this row, which moved it only if it stamped it
        # now. It was counted "updated" though nothing changed (a hunt's find).
        return ("updated" if record.updated_at == now else "unchanged"), []
    return ("unchanged" if record.version == version else "updated"), []


def _stored(session: Session, model: type[m.Customer] | type[m.Project], ref: str) -> Any:
    # Locked, as the PUT will lock it: read without the lock, a column the file does not
    # have was written back as it stood before another transaction's committed change to
    # it (PostgreSQL; a hunt's find: a region changed by hand during an import came back).
    return locked_by_ref(session, model, ref)


def _record_body(table: Table, row: Row, stored: m.Customer | m.Project | None) -> dict[str, Any]:
    """The record as the API's PUT body. A column the file does not have keeps the stored
    value (a file of names and reps must not clear every region); an empty cell clears it."""
    kept = _columns_of(stored) if stored is not None else {}
    body: dict[str, Any] = {}
    for column in LAYOUTS[table.kind].columns:
        in_file = any(c in table.header for c in OWNER) if column in OWNER else column in table.header
        value = row.cells.get(column) if in_file else kept.get(column)
        if value is None:
            continue
        if column == "tags" and isinstance(value, str):
            value = _list(value)
        if column == "amount" and isinstance(value, str):
            value = convert_attribute("number", value)  # a number as an event's number cell is read
        if column.startswith("contact."):
            body.setdefault("contact", {})[column.removeprefix("contact.")] = value
        else:
            body[column] = value
    return body


def _columns_of(record: m.Customer | m.Project) -> dict[str, Any]:
    values = {"name": record.name, "region": record.region, "rep": record.rep, "tags": record.tags}
    if isinstance(record, m.Customer):
        return {**values, "kind": record.kind, **{f"contact.{k}": v for k, v in record.contact.items()}}
    return {**values, "owner_id": record.owner_id, "amount": record.amount, "expected_close": record.expected_close}


def _list(text: str) -> list[str]:
    return [trimmed(part) for part in text.split(LIST_SEPARATOR) if trimmed(part)]


class _DryRun(Exception):
    """Raised to roll back a dry run's transaction."""


@contextmanager
def _transactions(db: Database, dry_run: bool) -> Iterator[Callable[[], AbstractContextManager[Session]]]:
    """A factory of per-chunk transactions; for a dry run, one transaction for the whole
    file (so its rows see each other, as they would) that is rolled back at the end."""
    if not dry_run:
        yield lambda: db.session(write=True)
        return
    try:
        with db.session(write=True) as session:
            yield lambda: nullcontext(session)
            raise _DryRun
    except _DryRun:
        pass


class _RejectedFile:
    """The rejected rows as they were written, plus their line and the reason; UTF-8 with a
    BOM so that Excel reads it. Created at the first rejected row; a file left at the path
    by an earlier run is removed first, so what is there always belongs to the last run."""

    def __init__(self, path: Path, header: tuple[str, ...]):
        self.path = path
        self._width = len(header)
        self._kept = [i for i, name in enumerate(header) if name not in REPORT_COLUMNS]
        # The line and the reason first: a row cut short keeps its cells as they were, and
        # stays short if the file is imported again unfixed (padded with empty cells, as it
        # was, it cleared the values those cells stood for: a hunt's find).
        self._header = [*REPORT_COLUMNS, *(header[i] for i in self._kept)]
        self._file: Any = None
        self._writer: Any = None
        self.removed_stale = False

    @property
    def written(self) -> bool:
        return self._file is not None

    def __enter__(self) -> "_RejectedFile":
        # Checked before any row is stored: rows stored and then a crash for want of a
        # place to report the others would leave the rejected rows unreported.
        folder = self.path.parent
        if not folder.is_dir():
            raise UnusableInput(f"the rejected file's folder {str(folder)!r} does not exist (--rejected names where the rejected rows go)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UnusableInput(f"the rejected file's folder {str(folder)!r} is not writable (--rejected names where the rejected rows go)")
        if self.path.exists() or self.path.is_symlink():
            # Only a rejected file: any file at the path was removed and reported "left by an
            # earlier import", a customers' master file given by mistake included (a hunt's find).
            if not self._is_rejected_file():
                raise UnusableInput(f"{str(self.path)!r} exists and is not a rejected file of an earlier import: name another path with --rejected, or move that file")
            self.path.unlink()
            self.removed_stale = True
        return self

    def _is_rejected_file(self) -> bool:
        """Whether the file at the path is one this class wrote: a file whose first line is
        the rejected file's first columns."""
        if self.path.is_symlink() or not self.path.is_file():
            return False
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as file:
                first = file.readline(4096)
        except (OSError, UnicodeDecodeError):
            return False
        return first.rstrip("\r\n").split(",")[: len(REPORT_COLUMNS)] == list(REPORT_COLUMNS)

    def add(self, row: Row, errors: list[FieldError]) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8-sig", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(self._header)
        cells = [row.values[i] for i in self._kept if i < len(row.values)]
        reason = "; ".join(f"{e.field}: {e.reason}" if e.field else e.reason for e in errors)
        # Cells beyond the header (the reason says so) go last, under no column name.
        self._writer.writerow([row.line, reason, *cells, *row.values[self._width :]])

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
