"""Request bodies that FastAPI does not parse for us (batches, webhooks): their items, and
item-by-item validation into FieldErrors. Their size is limited by app/api/limits.py."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.api.problems import validation_reason
from app.db.types import loads_json
from app.domain.validation import TOO_MANY_DIGITS, too_many_digits
from app.errors import MAX_LISTED, FieldError, Invalid, TooLarge, UnsupportedMediaType

Model = TypeVar("Model", bound=BaseModel)

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def read_json(text: str | bytes) -> Any:
    """What json.loads reads (`loads_json`: orjson where it reads the same; a 500-event batch
    in 0.25 ms against 0.39); nesting deeper than the parser goes is malformed input, not a
    crash: a ValueError, as any other. (The CSV import reads an `attributes` cell with it.)"""
    try:
        return loads_json(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        if too_many_digits(exc):  # Python's own words named sys.set_int_max_str_digits()
            raise ValueError(TOO_MANY_DIGITS) from None
        raise


def json_items(body: bytes, content_type: str, *, max_items: int) -> list[Any | FieldError]:
    """The items of a JSON array or of NDJSON lines. An NDJSON line that is not JSON comes
    back as a FieldError in its place, so the other lines can still be processed."""
    if content_type in NDJSON_TYPES:
        items: list[Any | FieldError] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                items.append(read_json(line))
            except ValueError as exc:
                items.append(FieldError("", f"malformed JSON: {exc}"))
            if len(items) > max_items:
                break
    elif content_type in ("application/json", ""):
        try:
            items = read_json(body)
        except ValueError as exc:
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
        return [FieldError(".".join(str(p) for p in err["loc"]), validation_reason(err)) for err in exc.errors()[:MAX_LISTED]]

