"""`crispml alias history`: who moved an alias, when, to which version and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_history(history: Sequence[Mapping[str, Any]], current: str | None) -> str:
    """The alias history as a table a person reads, newest last, the holder marked."""
    if not history:
        return "(no recorded moves)"
    rows = [("at", "version", "previous", "actor", "reason")]
    for event in history:
        rows.append(
            (
                str(event.get("at", "")),
                str(event.get("version", "")),
                str(event.get("previous") or "-"),
                str(event.get("actor", "")),
                str(event.get("reason", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    lines.append(f"current holder: version {current}" if current else "current holder: none")
    return "\n".join(lines)
