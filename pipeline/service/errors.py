"""Validation errors a client can act on: each names the field, the rule and the value.

Pydantic's raw errors are close, but not quite: their locations carry the tags of
our record/batch union ("body", "batch", 3, "V1"), and their `input` may be NaN or
Infinity (which strict JSON cannot carry, and which made FastAPI's own handler fail
with a 500) or a whole request body. This module turns them into plain entries such
as `{"field": "[3].V1", "rule": "less_than_equal", "msg": "...", "value": 1000.0}`
plus one readable sentence.

Hostile input gets here too: a value (or an unknown field's name) may hold NUL, escape
sequences or a lone UTF-16 surrogate, which no UTF-8 response can carry (rendering it
raised, and the client got a 500). Every string of an entry is therefore made safe
(`safe_text`): such characters are written as `\\uXXXX` escapes, never echoed raw.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.service.contract import BATCH_TAG, RECORD_TAG, UNION_TAGS

_SECTIONS = {"body", "query", "path", "header", "cookie"}
_BODY_TAGS = {RECORD_TAG, BATCH_TAG}
_ITEM_TAGS = UNION_TAGS - _BODY_TAGS
MAX_VALUE_CHARS = 200
# Characters an error never echoes: controls (C0, DEL, C1), lone surrogates (unencodable),
# line and paragraph separators and the bidirectional overrides (they rewrite how a log
# line or a terminal shows the text around them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def safe_text(text: str) -> str:
    """`text` with every unsafe character written as a \\uXXXX escape: always encodable."""
    return _UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def clean_value(value: Any) -> Any:
    """A JSON-safe, short rendering of an offending value (None when it is a structure)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        short = value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
        return safe_text(short)
    return None  # a dict or list: the whole body would be echoed back, and it says nothing


def safe_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One error entry with every string made safe (for entries raised by routes, too)."""
    return {
        "loc": [p if isinstance(p, int) else safe_text(str(p)) for p in entry.get("loc", ())],
        "field": safe_text(str(entry.get("field", ""))),
        "rule": safe_text(str(entry.get("rule", "invalid"))),
        "msg": safe_text(str(entry.get("msg", "invalid"))),
        "value": clean_value(entry.get("value")),
    }


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
        # An unknown field's name is client input too: made safe like any value.
        loc = [p if isinstance(p, int) else safe_text(str(p)) for p in error.get("loc", ())]
        entry: dict[str, Any] = {
            "loc": loc,
            "field": field_path(loc),
            "rule": safe_text(str(error.get("type", "invalid"))),
            "msg": safe_text(str(error.get("msg", "invalid"))),
            "value": clean_value(error.get("input")),
        }
        if entry["rule"] == "missing":
            entry["value"] = None  # the "input" of a missing field is its parent object
        elif entry["rule"] == "json_invalid":
            # FastAPI puts the character position where a field name belongs.
            position = loc[1] if len(loc) > 1 else None
            reason = safe_text(str((error.get("ctx") or {}).get("error", "")))
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
