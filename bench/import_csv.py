"""How fast `rapport import events` stores a large CSV file (a script that prints figures,
not a test).

    python bench/import_csv.py [--rows 20000] [--chunk 500] [--url URL]

In a temporary folder it writes a customers file (owners and installers), a projects file
and an events file of `--rows` rows of the kinds a sales team logs (visits, materials,
bids, stage changes; a quarter without external_id, so their ids are derived), imports the
three with the `rapport import` command as an operator would (a separate process), and
prints each summary with the wall-clock time and rows per second; then imports the events
file again, which must store nothing. Without --url the database is a SQLite file in the
temporary folder (WAL, synchronous=NORMAL); with --url, a PostgreSQL database you can throw
away.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2025, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
EVENT_COLUMNS = [
    "type", "occurred_at", "customer_ref", "project_ref", "external_id", "note",
    "attr.items", "attr.reception", "attr.with_manager", "attr.kind", "attr.amount", "attr.with_our_product", "attr.stage", "attr.status",
]
OWNER_EVENTS = [
    ("materials_sent", {"attr.items": "samples|credentials"}),
    ("company_introduced", {}),
    ("contact_obtained", {}),
    ("impression_confirmed", {}),
    ("visit", {"attr.reception": "welcoming", "attr.with_manager": "否"}),
    ("visit", {"attr.reception": "neutral", "attr.with_manager": "是"}),
    ("info_shared", {"attr.kind": "bid_projects"}),
    ("order_placed", {"attr.amount": "350000"}),
]
INSTALLER_EVENTS = [
    ("materials_sent", {"attr.items": "price_list"}),
    ("visit", {"attr.reception": "welcoming", "attr.with_manager": "no"}),
    ("bid_joined", {"attr.with_our_product": "yes"}),
]
PROJECT_EVENTS = [
    ("stage_changed", {"attr.stage": "bidding"}),
    ("tender_brand", {"attr.status": "listed"}),
    ("spec_agreed", {}),
]


def write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def files(folder: Path, rows: int) -> tuple[Path, Path, Path]:
    rng = random.Random(20260101)
    owners = [f"O-{i:04d}" for i in range(max(rows // 50, 10))]
    installers = [f"I-{i:04d}" for i in range(max(rows // 100, 5))]
    projects = [(f"P-{i:04d}", rng.choice(owners)) for i in range(max(rows // 60, 5))]
    customers = write(folder / "customers.csv", [
        ["external_ref", "name", "kind", "region", "rep", "tags"],
        *[[ref, f"业主单位{ref}", "owner", "上海", "王伟", "医院"] for ref in owners],
        *[[ref, f"安装公司{ref}", "installer", "江苏", "张敏", ""] for ref in installers],
    ])
    project_file = write(folder / "projects.csv", [
        ["external_ref", "name", "owner_ref", "amount", "expected_close"],
        *[[ref, f"项目{ref}暖通工程", owner, "1200000", "2027-06-30"] for ref, owner in projects],
    ])
    events = [EVENT_COLUMNS]
    for n in range(rows):
        at = (START + timedelta(minutes=37 * n)).isoformat()
        pick = rng.random()
        if pick < 0.6:
            type_, attrs = rng.choice(OWNER_EVENTS)
            customer, project = rng.choice(owners), ""
        elif pick < 0.85:
            type_, attrs = rng.choice(INSTALLER_EVENTS)
            customer, project = rng.choice(installers), rng.choice(projects)[0] if type_ == "bid_joined" else ""
        else:
            type_, attrs = rng.choice(PROJECT_EVENTS)
            customer, project = "", rng.choice(projects)[0]
        external_id = f"E-{n:07d}" if n % 4 else ""
        cells = {"type": type_, "occurred_at": at, "customer_ref": customer, "project_ref": project, "external_id": external_id, "note": "拜访记录" if type_ == "visit" else "", **attrs}
        events.append([cells.get(column, "") for column in EVENT_COLUMNS])
    return customers, project_file, write(folder / "events.csv", events)


def rapport_import(folder: Path, env: dict[str, str], kind: str, path: Path, *args: str) -> None:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app.cli", "import", kind, str(path), *args], cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr.strip()
    print(f"{kind:<9} {path.name:<14} exit {done.returncode}  {elapsed:6.1f} s wall  | {summary}")
    if done.returncode != 0:
        sys.exit(f"the import failed:\n{done.stdout}{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--url", help="a database to import into (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rapport-import-") as tmp:
        folder = Path(tmp)
        url = args.url or f"sqlite:///{folder / 'bench.db'}"
        # The package is imported from this checkout, wherever the script is run from.
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "RAPPORT_DATABASE_URL": url, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        customers, projects, events = files(folder, args.rows)
        print(f"{args.rows} event rows, chunks of {args.chunk}, database {url.split('@')[-1]}")
        rapport_import(folder, env, "customers", customers)
        rapport_import(folder, env, "projects", projects)
        rapport_import(folder, env, "events", events, "--chunk", str(args.chunk))
        rapport_import(folder, env, "events", events, "--chunk", str(args.chunk))  # again: all duplicates


if __name__ == "__main__":
    main()
