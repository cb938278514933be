"""Reading request bodies that FastAPI does not parse for us (batches, webhooks): with a
size limit enforced while reading, and item-by-item validation into FieldErrors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.errors import FieldError, Invalid, TooLarge, UnsupportedMediaType

Model = TypeVar("Model", bound=BaseModel)

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit here is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def json_items(body: bytes, content_type: str, *, max_items: int) -> list[Any | FieldError]:
    """The items of a JSON array or of NDJSON lines. An NDJSON line that is not JSON comes
    back as a FieldError in its place, so the other lines can still be processed."""
    if content_type in NDJSON_TYPES:
        items: list[Any | FieldError] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as exc:
                items.append(FieldError("", f"malformed JSON: {exc}"))
            if len(items) > max_items:
                break
    elif content_type in ("application/json", ""):
        try:
            items = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid("the body is not JSON", errors=[FieldError("body", f"malformed JSON: {exc}")]) from None
        if not isinstance(items, list):
            raise Invalid("the body must be a JSON array of events", errors=[FieldError("body", "must be a JSON array")])
    else:
        raise UnsupportedMediaType(f"send application/json (an array) or application/x-ndjson, not {content_type!r}")
    if len(items) > max_items:
        raise TooLarge(f"a batch holds at most {max_items} items", errors=[FieldError("body", f"more than {max_items} items")])
    if not items:
        raise Invalid("the batch is empty", errors=[FieldError("body", "must hold at least one item")])
    return items


def validate_item(model: type[Model], item: Any) -> Model | list[FieldError]:
    """One item validated by a pydantic model, or its problems (field paths as in the body)."""
    if isinstance(item, FieldError):
        return [item]
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        return [FieldError(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]

