"""A grade's digest (`grade_hash`) never changes for the same grade: every stored row carries
one, and a write that computed another for an unchanged grade would count a new version of
it. The values below were computed before the digest's head text was kept between calls."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.db.types import encode_grade, grade_digest

GRADE = {"criteria": [{"id": "L1.1", "met": True, "evidence": [3, 7]}], "next": {"target": 2, "missing": ["L2.1"], "need": 1}}


@pytest.mark.parametrize(
    ("head", "digest"),
    [
        ((1,), 2704669806514692643),
        ((True,), 15193514547568188),  # equal to (1,) as a key, not as a head
        ((50, "bidding", False), 7831960499669064688),
        ((50, "投标", True), -7801492021272437242),
        ((0, None, False), -6239079125843955062),
    ],
)
def test_a_grade_keeps_its_digest(head: tuple[object, ...], digest: int) -> None:
    encoded = encode_grade(GRADE)
    assert grade_digest(head, encoded) == digest
    assert grade_digest(head, encoded) == digest  # and again, once its head's text is kept


def by_definition(head: tuple[object, ...], encoded: bytes) -> int:
    text = json.dumps(list(head)).encode() + b"\n" + encoded
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


HEADS = st.tuples(st.integers(0, 4)) | st.tuples(st.integers(0, 4)).map(lambda h: (bool(h[0]),)) | st.tuples(st.sampled_from([0, 30, 50, 70, 90, 100]), st.none() | st.text(max_size=4), st.booleans())


@given(st.lists(HEADS, min_size=1, max_size=8), st.binary(max_size=20))
def test_heads_in_any_order_give_the_digest_of_their_definition(heads: list[tuple[object, ...]], encoded: bytes) -> None:
    for head in heads:
        assert grade_digest(head, encoded) == by_definition(head, encoded)
