"""Cutting a sequence into lists of a bounded size: for `IN (…)` lists, batches of
re-grading, and chunks of an import."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# Values per IN (…) list: few round trips, and well under SQLite's bound-parameter limit.
IN_LIST = 500


def chunked(items: Iterable[T], size: int = IN_LIST) -> Iterator[list[T]]:
    remaining = iter(items)
    while chunk := list(islice(remaining, size)):
        yield chunk
