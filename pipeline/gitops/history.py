"""`crispml alias history`: who moved an alias, when, to which version and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Events crispml did not make itself are marked, so nobody mistakes them for a promotion.
_KIND_MARKS = {"outside": "[outside] ", "imported": "[imported] "}


def format_history(history: Sequence[Mapping[str, Any]], current: str | None) -> str:
    """The alias history as a table a person reads, newest last, the holder marked.

    The reason goes last and unpadded: it is the one long column. The pipeline that
    moved the alias, when recorded, follows the reason.
    """
    if not history:
        return "(no recorded moves)"
    rows = [("at", "version", "previous", "actor", "commit", "reason")]
    for event in history:
        reason = _KIND_MARKS.get(str(event.get("kind")), "") + str(event.get("reason", ""))
        if event.get("pipeline") and str(event["pipeline"]) not in reason:
            reason += f" [{event['pipeline']}]"
        rows.append(
            (
                str(event.get("at", "")),
                str(event.get("version") or "-"),
                str(event.get("previous") or "-"),
                str(event.get("actor", "")),
                str(event.get("git_commit") or "-")[:12],
                reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
        for r in rows
    ]
    lines.append(f"current holder: version {current}" if current else "current holder: none")
    return "\n".join(lines)
