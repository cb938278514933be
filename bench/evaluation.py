"""Microseconds of CPU per `evaluate_level` and per `evaluate_heat` on synthetic facts (a
script that prints figures, not a test).

    PYTHONPATH=. python bench/evaluation.py [--rounds 7] [--repeat 20] [--dump FILE]

No database, no app: facts are built with the domain dataclasses, in the event mix of
`batch_import.make_events` (45 % visits with a `reception`, 15 % materials_sent, 15 %
bid_joined with `with_our_product`, 15 % stage_changed, 10 % order_placed with an
`amount`), and graded with the default rulebook:

- owners and installers with 10, 40 and 150 events of their own; each owner owns 1–3
  projects whose stage and tender events its criteria read;
- projects with 20–60 events, 3–6 bidders (installers with a level and a few events of
  their own on no project), now and then a tender, an owner's stance or a winner.

A fifth of the events are logged to the day (midnight), so equal instants happen as they
do with an ERP import. Each figure is the lowest of `--rounds` rounds, each round grading
every subject `--repeat` times, timed with `time.process_time` (CPU, not wall time: the
machine is shared). `--dump FILE` writes every grade's repr, to compare two versions of
the code on the same facts.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from app.domain import evaluation
from app.domain.evaluation import evaluate_heat, evaluate_level
from app.domain.facts import CustomerFacts, Event, LinkedCustomer, OwnedProject, ProjectFacts
from app.domain.rulebook import Rulebook, load_rulebook

AS_OF = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
SIZES = (10, 40, 150)
SUBJECTS_PER_SIZE = 30
PROJECTS = 100


class _Log:
    """Hands out event ids and instants, as the database would."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.next_id = 1

    def event(self, type_: str, *, customer: int | None = None, project: int | None = None, **attributes: Any) -> Event:
        rnd = self.rnd
        at = AS_OF - timedelta(days=rnd.randrange(0, 300))
        if rnd.random() < 0.8:  # logged to the minute; the rest to the day, so ties happen
            at -= timedelta(minutes=rnd.randrange(0, 1440))
        else:
            at = at.replace(hour=0, minute=0)
        self.next_id += 1
        return Event(self.next_id, type_, at, customer, project, attributes, retracted=rnd.random() < 0.03)


def _mixed_event(log: _Log, customer: int, kind: str, project_ids: list[int]) -> Event:
    """One of a customer's own events in `make_events`'s mix (a bid only for an installer)."""
    rnd = log.rnd
    roll = rnd.random()
    if roll < 0.45:
        return log.event("visit", customer=customer, reception=rnd.choice(["welcoming", "neutral", "rejecting"]))
    if roll < 0.6:
        return log.event("materials_sent", customer=customer, items=["samples"])
    if roll < 0.75 and kind == "installer":
        return log.event("bid_joined", customer=customer, project=rnd.choice(project_ids), with_our_product=rnd.random() < 0.5)
    if roll < 0.9:
        return log.event("info_shared", customer=customer, kind=rnd.choice(["important", "competitors", "bid_projects", "core"]))
    return log.event("order_placed", customer=customer, amount=rnd.randrange(10_000, 900_000))


def _stage_event(log: _Log, project: int) -> Event:
    return log.event("stage_changed", project=project, stage=log.rnd.choice(["lead", "tender_drafting", "bidding"]))


def make_customers(rnd: random.Random, log: _Log) -> dict[str, list[CustomerFacts]]:
    project_ids = list(range(1000, 1000 + PROJECTS))
    out: dict[str, list[CustomerFacts]] = {"owner": [], "installer": []}
    cid = 0
    for kind in ("owner", "installer"):
        for size in SIZES:
            for _ in range(SUBJECTS_PER_SIZE):
                cid += 1
                events = tuple(_mixed_event(log, cid, kind, project_ids) for _ in range(size))
                owned: tuple[OwnedProject, ...] = ()
                if kind == "owner":
                    owned = tuple(
                        OwnedProject(pid, _owned_project_events(log, pid))
                        for pid in rnd.sample(project_ids, rnd.randint(1, 3))
                    )
                out[kind].append(CustomerFacts(cid, kind, events, owned))
    return out


def _owned_project_events(log: _Log, project: int) -> tuple[Event, ...]:
    """The events of an owned project that owner criteria read: stages and tenders."""
    events = [_stage_event(log, project) for _ in range(log.rnd.randint(2, 8))]
    if log.rnd.random() < 0.5:
        events.append(log.event("tender_brand", project=project, status=log.rnd.choice(["listed", "sole", "absent"])))
    return tuple(events)


def make_projects(rnd: random.Random, log: _Log) -> list[ProjectFacts]:
    out = []
    for i in range(PROJECTS):
        pid = 1000 + i
        owner = 5000 + i
        bidders = rnd.sample(range(6000, 6300), rnd.randint(3, 6))
        events: list[Event] = []
        for _ in range(rnd.randint(20, 60)):
            roll = rnd.random()
            if roll < 0.45:
                events.append(log.event("bid_joined", customer=rnd.choice(bidders), project=pid, with_our_product=rnd.random() < 0.5))
            elif roll < 0.85:
                events.append(_stage_event(log, pid))
            elif roll < 0.9:
                events.append(log.event("tender_brand", project=pid, status=rnd.choice(["listed", "sole", "absent"])))
            elif roll < 0.95:
                events.append(log.event("owner_stance", project=pid, stance=rnd.choice(["refuses", "accepts", "recommends"])))
            else:
                events.append(log.event("spec_agreed", project=pid))
        if rnd.random() < 0.3:
            events.append(log.event("bid_won", customer=rnd.choice(bidders), project=pid))
            events.append(log.event("contract_signed", customer=rnd.choice(bidders), project=pid, amount=500_000))
        linked = {
            cid: LinkedCustomer(cid, rnd.randint(0, 4), tuple(log.event("advocates", customer=cid) for _ in range(rnd.randint(0, 2))))
            for cid in sorted(bidders)
        }
        out.append(ProjectFacts(pid, LinkedCustomer(owner, rnd.randint(0, 4)), tuple(events), linked))
    return out


def best_us(grade: Callable[[Rulebook, Any, datetime], Any], rulebook: Rulebook, facts: list[Any], rounds: int, repeat: int) -> float:
    """The lowest CPU µs per call over `rounds` rounds."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(repeat):
            for f in facts:
                grade(rulebook, f, AS_OF)
        best = min(best, (time.process_time() - start) / (repeat * len(facts)) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dump", help="write the repr of every grade to this file")
    args = parser.parse_args()

    rulebook = load_rulebook()
    rnd = random.Random(args.seed)
    log = _Log(rnd)
    customers = make_customers(rnd, log)
    projects = make_projects(rnd, log)

    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as out:
            for kind in ("owner", "installer"):
                for f in customers[kind]:
                    out.write(repr(evaluate_level(rulebook, f, AS_OF)) + "\n")
            for p in projects:
                out.write(repr(evaluate_heat(rulebook, p, AS_OF)) + "\n")

    print(f"grading with {evaluation.__file__}")
    figures = []
    for kind in ("owner", "installer"):
        for size in SIZES:
            subset = [f for f in customers[kind] if len(f.events) == size]
            figures.append((f"evaluate_level {kind:9} {size:3} events", best_us(evaluate_level, rulebook, subset, args.rounds, args.repeat)))
        figures.append((f"evaluate_level {kind:9} all       ", best_us(evaluate_level, rulebook, customers[kind], args.rounds, args.repeat)))
    figures.append(("evaluate_heat  project  20-60 events", best_us(evaluate_heat, rulebook, projects, args.rounds, args.repeat)))
    for name, us in figures:
        print(f"{name}: {us:7.1f} µs")


if __name__ == "__main__":
    main()
