"""Validation errors a client can act on: each names the field, the rule and the value.

Pydantic's raw errors are close, but not quite: their locations carry the tags of
our record/batch union ("body", "batch", 3, "V1"), and their `input` may be NaN or
Infinity (which strict JSON cannot carry, and which made FastAPI's own handler fail
with a 500) or a whole request body. This module turns them into plain entries such
as `{"field": "[3].V1", "rule": "less_than_equal", "msg": "...", "value": 1000.0}`
plus one readable sentence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.service.contract import BATCH_TAG, RECORD_TAG, UNION_TAGS

_SECTIONS = {"body", "query", "path", "header", "cookie"}
_BODY_TAGS = {RECORD_TAG, BATCH_TAG}
_ITEM_TAGS = UNION_TAGS - _BODY_TAGS
MAX_VALUE_CHARS = 200


def clean_value(value: Any) -> Any:
    """A JSON-safe, short rendering of an offending value (None when it is a structure)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    return None  # a dict or list: the whole body would be echoed back, and it says nothing


def field_path(loc: Sequence[str | int]) -> str:
    """('body', 'batch', 3, 'V1') -> '[3].V1'; ('query', 'from') -> 'from'; ('body',) -> 'body'.

    Union tags are dropped: they name our model's branch, not anything the client sent.
    """
    parts = list(loc)
    if parts and parts[0] in _SECTIONS:
        section = parts.pop(0)
        if section == "body" and parts and parts[0] in _BODY_TAGS:
            parts.pop(0)
        if not parts:
            return str(section)
    out = ""
    for index, part in enumerate(parts):
        if part in _ITEM_TAGS and index > 0 and isinstance(parts[index - 1], int):
            continue  # the union tag of a list item (labels[0].by_score_id.label)
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error dicts -> entries with loc, field, rule, msg and value."""
    out = []
    for error in errors:
        loc = [p if isinstance(p, int) else str(p) for p in error.get("loc", ())]
        entry: dict[str, Any] = {
            "loc": loc,
            "field": field_path(loc),
            "rule": str(error.get("type", "invalid")),
            "msg": str(error.get("msg", "invalid")),
            "value": clean_value(error.get("input")),
        }
        if entry["rule"] == "missing":
            entry["value"] = None  # the "input" of a missing field is its parent object
        elif entry["rule"] == "json_invalid":
            # FastAPI puts the character position where a field name belongs.
            position = loc[1] if len(loc) > 1 else None
            reason = (error.get("ctx") or {}).get("error", "")
            entry.update(
                field="body",
                value=None,
                msg=f"JSON decode error at character {position}: {reason}".rstrip(": "),
            )
        out.append(entry)
    return out


def summary(entries: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """One sentence for people and logs: 'V1: Input should be ... (rule less_than_equal, ...)'."""
    parts = []
    for entry in entries[:limit]:
        shown = "" if entry.get("value") is None else f", value {entry['value']!r}"
        parts.append(f"{entry['field']}: {entry['msg']} (rule {entry['rule']}{shown})")
    more = len(entries) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"
