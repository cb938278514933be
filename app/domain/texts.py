"""Texts that no column can keep, and the places in decoded JSON that hold them: what the
rulebook, the API's bodies and a form's payloads all check, kept apart from the rulebook so
that it can check its own texts too."""

from __future__ import annotations

from typing import Any, Iterator


def join_path(place: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{place}[{key}]"
    return f"{place}.{key}" if place else key


NUL_REASON = "must not contain the NUL character (U+0000)"
SURROGATE_REASON = "must be Unicode: it holds a lone surrogate escape such as \\ud800 (half an emoji)"


def unstorable_texts(data: Any, *, nul: bool = True) -> Iterator[tuple[str, str]]:
    """Each place in decoded JSON whose text (a key or a value) no column keeps, with why:
    a NUL, which PostgreSQL refuses in text and JSON (where SQLite kept it), and a lone
    surrogate, which JSON reads from an escape (\\ud800) and no UTF-8 can write (`nul`
    False: those only). A key's problem is reported at the object holding it, so the place
    never holds the bad text (its reason shows the key escaped)."""
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:  # not recursive: decoded JSON may be nested as deep as json reads
        place, value = pending.pop()
        if isinstance(value, str):
            reason = text_problem(value, nul)
            if reason:
                yield place, reason
        elif isinstance(value, dict):
            inner = []
            for key, item in value.items():
                reason = text_problem(key, nul) if isinstance(key, str) else None
                if reason:
                    yield place, f"the key {key!r} {reason}"  # repr: a NUL or a surrogate shows as an escape
                else:
                    inner.append((join_path(place, key), item))
            pending.extend(reversed(inner))
        elif isinstance(value, list):
            pending.extend(reversed([(join_path(place, i), v) for i, v in enumerate(value)]))


def text_problem(text: str, nul: bool) -> str | None:
    if nul and "\x00" in text:
        return NUL_REASON
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_REASON
    return None
