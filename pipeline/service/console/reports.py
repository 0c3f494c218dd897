"""What the console reads from the pipeline's reports: verify results, replay days, pages.

Every reader answers None for a file that is absent or unreadable, and the page says
"not available yet": a service runs long before (and independently of) the `verify`
stage or a replay, and a missing report is a state, not an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.layout import Layout

# The only names a report link may have: what `verify` writes (frame_7_drift.html,
# all_quality.html...). Anything else is refused before the folder is even listed.
_PAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.html")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def verify_pages(root: Path) -> dict[str, Path]:
    """The Evidently pages of reports/verify, by file name: regular files only, no links."""
    folder = Layout(root).verify_dir
    try:
        entries = list(folder.iterdir())
    except OSError:
        return {}
    return {
        entry.name: entry
        for entry in entries
        if _PAGE_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink()
    }


def verify_page(root: Path, name: str) -> Path | None:
    """The page called exactly `name` in reports/verify, or None: a name is looked up
    among the folder's own entries, never joined into a path, so `..`, slashes or an
    encoded separator cannot reach anything else."""
    if not _PAGE_NAME.fullmatch(name):
        return None
    return verify_pages(root).get(name)


def verify_results(root: Path) -> dict[str, Any] | None:
    """reports/verify.json as rows per frame (oldest first), plus the overall row and gate."""
    data = _json(Layout(root).verify_summary)
    if data is None:
        return None
    pages = verify_pages(root)

    def row(key: str, values: dict[str, Any]) -> dict[str, Any]:
        stem = "all" if key == "all" else f"frame_{key}"
        interval = values.get("pr_auc_interval")
        return {
            "frame": key,
            "drift_share": _number(values.get("drift_share")),
            "drifted": [str(c) for c in values.get("drifted") or []],
            "labelled_rows": values.get("labeled_rows"),
            "positives": values.get("labelled_positives"),
            "pr_auc": _number(values.get("pr_auc")),
            "pr_auc_interval": interval
            if isinstance(interval, list) and len(interval) == 2
            else None,
            "roc_auc": _number(values.get("roc_auc")),
            "recall": _number(values.get("recall")),
            "pages": [
                (kind, f"{stem}_{kind}.html")
                for kind in ("drift", "quality")
                if f"{stem}_{kind}.html" in pages
            ],
        }

    frames = data.get("frames") if isinstance(data.get("frames"), dict) else {}

    def order(key: str) -> tuple[int, str]:
        return (int(key), "") if key.isdigit() else (10**9, key)

    rows = [
        row(str(k), v)
        for k, v in sorted(frames.items(), key=lambda kv: order(str(kv[0])))
        if isinstance(v, dict)
    ]
    overall = data.get("overall")
    gate = data.get("gate") if isinstance(data.get("gate"), dict) else {}
    online = data.get("online") if isinstance(data.get("online"), dict) else {}
    return {
        "model_name": data.get("model_name"),
        "model_version": data.get("model_version"),
        "frames": rows,
        "overall": row("all", overall) if isinstance(overall, dict) else None,
        "verdict": gate.get("verdict"),
        "reasons": [str(r) for r in gate.get("reasons") or []],
        "online_days": online.get("days") if isinstance(online.get("days"), dict) else {},
        "staleness": data.get("staleness") if isinstance(data.get("staleness"), dict) else None,
    }


def replay_days(root: Path) -> list[dict[str, Any]] | None:
    """reports/replay.json's days: drift and PR-AUC of the static and the CT model."""
    data = _json(Layout(root).reports / "replay.json")
    if data is None or not isinstance(data.get("days"), list):
        return None
    out = []
    for day in data["days"]:
        if not isinstance(day, dict) or not isinstance(day.get("day"), int):
            continue
        gate = day.get("gate") if isinstance(day.get("gate"), dict) else {}
        out.append(
            {
                "day": day["day"],
                "drift_share_static": _number(day.get("drift_share_static")),
                "drift_share_ct": _number(day.get("drift_share")),
                "pr_auc_static": _number(day.get("pr_auc_static")),
                "pr_auc_ct": _number(day.get("pr_auc_ct")),
                "serving_version": day.get("serving_version"),
                "verdict": gate.get("verdict"),
                "retrained": bool(day.get("retrained")),
                "promoted": bool(day.get("promoted")),
            }
        )
    return out


def charts(verify: dict[str, Any] | None, replay: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Plotly traces for drift and PR-AUC over time (days = score frames), as plain data.

    Built here as dicts, not with plotly's Python figures: the page only needs JSON, and
    the Python package's import would cost the service start-up time for nothing.
    """
    drift: list[dict[str, Any]] = []
    pr_auc: list[dict[str, Any]] = []

    def line(name: str, x: list, y: list, **extra: Any) -> dict[str, Any]:
        return {"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": y, **extra}

    if replay:
        days = [d["day"] for d in replay]
        drift.append(line("replay: static model", days, [d["drift_share_static"] for d in replay]))
        drift.append(line("replay: CT model", days, [d["drift_share_ct"] for d in replay]))
        pr_auc.append(line("replay: static model", days, [d["pr_auc_static"] for d in replay]))
        pr_auc.append(line("replay: CT model", days, [d["pr_auc_ct"] for d in replay]))
    frames = [r for r in (verify or {}).get("frames", []) if r["frame"].isdigit()]
    if frames:
        x = [int(r["frame"]) for r in frames]
        drift.append(
            {
                "type": "bar",
                "name": "verify",
                "x": x,
                "y": [r["drift_share"] for r in frames],
                "opacity": 0.35,
            }
        )
        low = [
            None
            if r["pr_auc_interval"] is None or r["pr_auc"] is None
            else r["pr_auc"] - r["pr_auc_interval"][0]
            for r in frames
        ]
        high = [
            None
            if r["pr_auc_interval"] is None or r["pr_auc"] is None
            else r["pr_auc_interval"][1] - r["pr_auc"]
            for r in frames
        ]
        pr_auc.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "verify (95% interval)",
                "x": x,
                "y": [r["pr_auc"] for r in frames],
                "error_y": {"type": "data", "array": high, "arrayminus": low, "visible": True},
            }
        )
    return {"drift": drift, "pr_auc": pr_auc}
