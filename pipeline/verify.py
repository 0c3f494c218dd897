"""Verify (CRISP-DM: evaluation and monitoring): drift and realised quality, per frame and overall.

Drift compares the scored frames with the training frames. Quality joins the scores
that were persisted with the labels that arrived later, so what is judged is what the
business actually received, not a fresh prediction. The gate turns both into a
verdict CI can act on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.errors import GateFailed


@dataclass(frozen=True)
class VerifyVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def evaluate_verify_gate(
    drift_share: float,
    pr_auc: float | None,
    expected_pr_auc: float | None,
    max_drift_share: float,
    max_pr_auc_drop: float,
) -> VerifyVerdict:
    """Fail on too many drifted columns, or on realised PR-AUC too far below the test figure."""
    reasons = []
    if drift_share > max_drift_share:
        reasons.append(f"drift share {drift_share:.3f} is above the maximum {max_drift_share:.3f}")
    if pr_auc is not None and expected_pr_auc is not None:
        drop = expected_pr_auc - pr_auc
        if drop > max_pr_auc_drop:
            reasons.append(
                f"realised PR-AUC {pr_auc:.4f} is {drop:.4f} below the test PR-AUC "
                f"{expected_pr_auc:.4f}; the allowed drop is {max_pr_auc_drop:.4f}"
            )
    return VerifyVerdict(passed=not reasons, reasons=reasons)


@contextlib.contextmanager
def drift_pool(workers: int) -> Iterator[Executor]:
    """Drift reports are independent and CPU-bound: run them side by side.

    Evidently is imported before the workers fork, so each worker does not pay the
    multi-second import again. One worker means in-process, which is easier to debug.
    """
    import evidently  # noqa: F401

    if workers <= 1:
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield pool
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        yield pool


def drifted_names(entry: dict) -> list[str]:
    """Which columns drifted: the first thing a person asks after "how many"."""
    columns = entry.get("drift", {}).get("per_column", {})
    return sorted(name for name, result in columns.items() if result.get("drifted"))


def _scored_frame(joined: pd.DataFrame) -> pd.DataFrame:
    return joined[["label", "score", "decision"]].astype({"label": "int64", "decision": "int64"})


def run(settings) -> dict:
    """Entry point: prepared frames + score store -> reports/verify/ and reports/verify.json."""
    from tqdm import tqdm

    from pipeline.drift_and_quality import drift_summary, quality_summary
    from pipeline.io import read_json, write_json
    from pipeline.layout import Layout
    from pipeline.store import ScoreStore

    layout = Layout(settings.root)
    contract, options = settings.contract, settings.verify
    gate = settings.environment.gates.verify
    registered = read_json(layout.registered)
    serving = registered.get("serving") or {}
    name, version = registered["model_name"], str(serving.get("version"))
    # Dates are not compared: a later frame has later dates by construction.
    columns = [c for c in contract.features if contract.by_name[c].dtype != "datetime"]
    categorical = [c for c in columns if c in contract.categorical]

    def load(frames: list[int]) -> pd.DataFrame:
        return pd.concat(
            [
                pd.read_parquet(layout.frame_file(layout.prepared, n), columns=columns)
                for n in frames
            ],
            ignore_index=True,
        )

    frames = list(settings.frames.score)
    groups: dict[str, list[int]] = {str(n): [n] for n in frames}
    groups["all"] = frames
    rng_seed = options.seed
    # One reference sample for every comparison, so frames are judged against the same rows.
    reference = load(settings.frames.train)
    reference = reference.sample(
        n=min(len(reference), options.drift_max_rows), random_state=rng_seed
    )
    layout.verify_dir.mkdir(parents=True, exist_ok=True)

    def html(key: str, kind: str) -> Path:
        return (
            layout.verify_dir
            / f"{'all' if key == 'all' else layout.frame_name(int(key))}_{kind}.html"
        )

    per_frame: dict[str, dict] = {key: {} for key in groups}
    with drift_pool(options.workers) as pool:
        futures = {}
        for key, members in groups.items():
            current = load(members)
            if len(current):
                current = current.sample(
                    n=min(len(current), options.drift_max_rows), random_state=rng_seed
                )
                futures[key] = pool.submit(
                    drift_summary,
                    reference,
                    current,
                    columns,
                    html(key, "drift"),
                    max_rows=options.drift_max_rows,
                    seed=rng_seed,
                    categorical=categorical,
                )
        store = ScoreStore(settings.store_url)
        try:
            for key, members in groups.items():
                joined = store.scores_with_labels(
                    settings.env, model_name=name, model_version=version, frames=members
                )
                if len(joined):
                    per_frame[key]["quality"] = quality_summary(
                        _scored_frame(joined), html(key, "quality")
                    )
        finally:
            store.dispose()
        for key, future in tqdm(futures.items(), desc="verify drift", unit="report", disable=None):
            per_frame[key]["drift"] = future.result()
    overall = per_frame.pop("all")
    drift_share = overall.get("drift", {}).get("drift_share", 0.0)
    pr_auc = overall.get("quality", {}).get("pr_auc")
    verdict = evaluate_verify_gate(
        drift_share, pr_auc, serving.get("pr_auc"), gate.max_drift_share, gate.max_pr_auc_drop
    )
    summary = {
        "model_name": name,
        "model_version": version,
        "overall": {
            "drift_share": drift_share,
            "drifted_columns": overall.get("drift", {}).get("drifted_columns"),
            "drifted": drifted_names(overall),
            "pr_auc": pr_auc,
            "roc_auc": overall.get("quality", {}).get("roc_auc"),
            "recall": overall.get("quality", {}).get("recall"),
            "precision": overall.get("quality", {}).get("precision"),
            "labeled_rows": overall.get("quality", {}).get("rows", 0),
        },
        "frames": {
            frame: {
                "drift_share": e.get("drift", {}).get("drift_share"),
                "drifted_columns": e.get("drift", {}).get("drifted_columns"),
                "drifted": drifted_names(e),
                "pr_auc": e.get("quality", {}).get("pr_auc"),
                "roc_auc": e.get("quality", {}).get("roc_auc"),
                "recall": e.get("quality", {}).get("recall"),
                "labeled_rows": e.get("quality", {}).get("rows", 0),
            }
            for frame, e in per_frame.items()
        },
        "gate": {
            "passed": verdict.passed,
            "reasons": verdict.reasons,
            "on_failure": gate.on_failure,
            "max_drift_share": gate.max_drift_share,
            "max_pr_auc_drop": gate.max_pr_auc_drop,
        },
        "html": sorted(str(p.relative_to(settings.root)) for p in layout.verify_dir.glob("*.html")),
    }
    write_json(layout.verify_summary, summary)
    if not verdict.passed:
        message = "verify gate failed: " + "; ".join(verdict.reasons)
        if gate.on_failure == "fail":
            raise GateFailed(message)
        import sys

        print(f"warning: {message} (gates.verify.on_failure is 'warn')", file=sys.stderr)
    return summary
