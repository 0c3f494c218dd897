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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import GateFailed
from pipeline.evidence import FAILED, INSUFFICIENT, PASSED, Estimate, Evidence, estimate

# Evidently's quality report over all frames is built on at most this many labelled
# scores, a frame's on at most FRAME_QUALITY_MAX_ROWS, as a seeded uniform sample: its
# cost grows with rows (about 17 s for 1.4 million at 10x the default data), and verify
# has to stay near constant in time as the data grows. On the default data every report
# is whole (each frame holds 8,500 to 32,500 labelled scores, all six together 142,255),
# so the figures a reviewer reads there are every row's; beyond either size
# `report_rows` says the report saw a sample. The gate's PR-AUC and its interval,
# `pr_auc`, `rows` and `positives` always count every labelled score. A frame's cap is a
# third of the overall one: at 10x the default data, six frames of up to 325,000 rows
# would otherwise cost verify ten seconds more.
QUALITY_MAX_ROWS = 150_000
FRAME_QUALITY_MAX_ROWS = 50_000


@dataclass(frozen=True)
class VerifyVerdict:
    """`verdict` is passed, failed or insufficient_evidence; only failed fails the gate.

    Too few labelled positives is not a failure (labels arrive late), but it is said,
    with the count, so a green verify never hides that quality went unjudged.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    verdict: str = "passed"


def evaluate_verify_gate(
    drift_share: float,
    realised: Estimate | None,
    expected_pr_auc: float | None,
    max_drift_share: float,
    max_pr_auc_drop: float,
    *,
    online: Estimate | None = None,
) -> VerifyVerdict:
    """Fail on too many drifted columns, or when realised PR-AUC is surely too low.

    Batch scores (the score stage) and online scores (the service) are judged apart,
    each against the same expectation: the service may see other traffic than the
    frames, and a loss on either is a loss the business took.

    "Surely" means the whole bootstrap interval of the realised PR-AUC lies below the
    test figure minus the allowed drop: on 40 positives a point estimate moves by
    0.1 with a handful of them, and a gate on it fails prod by chance.
    """
    reasons, insufficient = [], False
    if drift_share > max_drift_share:
        reasons.append(f"drift share {drift_share:.3f} is above the maximum {max_drift_share:.3f}")
    for kind, estimate_ in (("realised", realised), ("online realised", online)):
        if estimate_ is None or expected_pr_auc is None:
            continue
        if not estimate_.enough:
            insufficient = insufficient or kind == "realised"
            continue
        floor = expected_pr_auc - max_pr_auc_drop
        if estimate_.high < floor:
            realised_ = estimate_
            reasons.append(
                f"{kind} PR-AUC {realised_.pr_auc:.4f} ({realised_.confidence:.0%} interval "
                f"[{realised_.low:.4f}, {realised_.high:.4f}] on {realised_.positives} "
                f"positives) is below the test PR-AUC {expected_pr_auc:.4f} minus the "
                f"allowed drop {max_pr_auc_drop:.4f}"
            )
    if reasons:
        return VerifyVerdict(passed=False, reasons=reasons, verdict=FAILED)
    if insufficient:
        return VerifyVerdict(
            passed=True,
            reasons=[
                f"not enough evidence for realised quality: {realised.positives} labelled "
                "positives so far (gates.evidence.min_positives); drift alone was judged"
            ],
            verdict=INSUFFICIENT,
        )
    return VerifyVerdict(passed=True, verdict=PASSED)


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


def online_quality(store, env: str, name: str, version: str, evidence: Evidence) -> dict:
    """Realised quality of what the service answered, per UTC day and overall.

    Only the answered scores count here (not a challenger's shadow scores): they are
    what the business acted on. Labels come from `POST /v1/labels` or the label stage.
    """
    joined = store.online_scores_with_labels(env, name, version, shadow=False)
    if joined.empty:
        return {"estimate": None, "summary": {"labelled_scores": 0, "days": {}}}
    scored = _scored_frame(joined)
    overall = estimate(scored["label"].to_numpy(), scored["score"].to_numpy(), evidence)
    days = {}
    for day, rows in scored.groupby(joined["day"].astype(str), sort=True):
        day_estimate = estimate(rows["label"].to_numpy(), rows["score"].to_numpy(), evidence)
        flagged, positives = int(rows["decision"].sum()), int(rows["label"].sum())
        hits = int((rows["decision"] & rows["label"]).sum())
        days[day] = {
            "labelled_scores": len(rows),
            "pr_auc": None if not positives else day_estimate.pr_auc,
            "recall": hits / positives if positives else None,
            "precision": hits / flagged if flagged else None,
            "pr_auc_interval": _interval(day_estimate),
            "labelled_positives": day_estimate.positives,
        }
    return {
        "estimate": overall,
        "summary": {
            "labelled_scores": len(scored),
            "labelled_positives": overall.positives,
            "pr_auc": overall.pr_auc,
            "pr_auc_interval": _interval(overall),
            "days": days,
        },
    }


def staleness(
    created_at: float | None, newest_label: datetime | None, max_model_age_days: float | None
) -> dict:
    """How old the serving model and its newest ground truth are, in days.

    A model can pass every gate and still be months old; this is what says so, and
    what continuous training reads before deciding to refresh it.
    """
    now = datetime.now(UTC)
    model_age = None if created_at is None else (now.timestamp() - created_at) / 86_400
    label_age = None if newest_label is None else (now - newest_label).total_seconds() / 86_400
    return {
        "model_age_days": None if model_age is None else round(model_age, 4),
        "labelled_data_age_days": None if label_age is None else round(label_age, 4),
        "max_model_age_days": max_model_age_days,
        "stale": bool(
            max_model_age_days is not None
            and model_age is not None
            and model_age > max_model_age_days
        ),
    }


def _interval(realised: Estimate | None) -> list[float] | None:
    """[low, high] for the JSON summary; None where there were too few positives."""
    if realised is None or not realised.enough:
        return None
    return [round(realised.low, 6), round(realised.high, 6)]


def _scored_frame(joined: pd.DataFrame) -> pd.DataFrame:
    return joined[["label", "score", "decision"]].astype({"label": "int64", "decision": "int64"})


def sample_positions(rows: int, size: int, seed: int) -> np.ndarray:
    """The row positions, in order, that `frame.sample(n=min(rows, size), random_state=seed)`
    takes from any `rows`-row frame.

    pandas picks them from the length alone, so sampling a range of that length gives
    them without holding the frame: the parts can then be read one at a time.
    """
    return pd.RangeIndex(rows).to_series().sample(n=min(rows, size), random_state=seed).to_numpy()


def sample_parts(sizes: list[int], read, size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of the concatenation of parts, read one part at a time.

    `read(i)` returns part i, of `sizes[i]` rows. The rows are the ones, in the order,
    that sampling the concatenated parts would give (see `sample_positions`), while at
    most one part is held besides the sample: at 10x the default data, the six training
    frames alone held 340 MB for a 5,000-row sample.
    """
    positions = sample_positions(sum(sizes), size, seed)
    pieces, order = [], []
    start = 0
    for i, rows in enumerate(sizes):
        inside = np.flatnonzero((positions >= start) & (positions < start + rows))
        if len(inside):
            pieces.append(read(i).iloc[positions[inside] - start])
            order.append(inside)
        start += rows
    if not pieces:
        return read(0).iloc[:0] if sizes else pd.DataFrame()
    sample = pd.concat(pieces, ignore_index=True)
    return sample.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)


def quality_sample(scored: pd.DataFrame, seed: int, limit: int | None = None) -> pd.DataFrame:
    """At most `limit` (QUALITY_MAX_ROWS) labelled scores, seeded, for Evidently's report."""
    limit = QUALITY_MAX_ROWS if limit is None else limit
    if len(scored) <= limit:
        return scored
    return scored.sample(n=limit, random_state=seed).sort_index()


def judge_quality(
    scored: pd.DataFrame,
    html_path: Path,
    evidence: Evidence,
    seed: int,
    limit: int | None = None,
) -> dict:
    """Evidently's quality summary (on a sample beyond QUALITY_MAX_ROWS) and the interval.

    The interval and `pr_auc` always use every labelled score: they are what the gate
    judges, and cheap. `rows` stays the number of labelled scores; `report_rows` says
    how many Evidently saw.
    """
    from pipeline.drift_and_quality import quality_summary

    labels, scores = scored["label"].to_numpy(), scored["score"].to_numpy()
    interval = estimate(labels, scores, evidence)
    sample = quality_sample(scored, seed, limit)
    quality = quality_summary(sample, html_path)
    if len(sample) < len(scored):
        from sklearn.metrics import average_precision_score

        # As `quality_summary` computes it, on every row.
        both = len(np.unique(labels)) == 2
        quality.update(
            rows=len(scored),
            positives=int(labels.sum()),
            predicted_positives=int(scored["decision"].sum()),
            pr_auc=float(average_precision_score(labels, scores)) if both else None,
        )
    quality["report_rows"] = len(sample)
    return {"quality": quality, "interval": interval}


def run(settings) -> dict:
    """Entry point: prepared frames + score store -> reports/verify/ and reports/verify.json."""
    from tqdm import tqdm

    from pipeline.drift_and_quality import drift_summary
    from pipeline.io import write_json
    from pipeline.layout import Layout
    from pipeline.registered import Registered
    from pipeline.store import ScoreStore

    layout = Layout(settings.root)
    contract, options = settings.contract, settings.verify
    gate = settings.environment.gates.verify
    registered = Registered.load(layout.registered)
    serving = registered.require_serving()
    name, version = registered.model_name, serving.version
    # Dates are not compared: a later frame has later dates by construction.
    columns = [c for c in contract.features if contract.by_name[c].dtype != "datetime"]
    categorical = [c for c in columns if c in contract.categorical]

    import pyarrow.parquet as pq

    def frame_rows(n: int) -> int:
        return pq.ParquetFile(layout.frame_file(layout.prepared, n)).metadata.num_rows

    def sample(frames: list[int]) -> pd.DataFrame:
        """The drift sample of these frames, read one frame at a time (see sample_parts)."""
        return sample_parts(
            [frame_rows(n) for n in frames],
            lambda i: pd.read_parquet(
                layout.frame_file(layout.prepared, frames[i]), columns=columns
            ),
            options.drift_max_rows,
            rng_seed,
        )

    frames = list(settings.frames.score)
    groups: dict[str, list[int]] = {str(n): [n] for n in frames}
    groups["all"] = frames
    rng_seed = options.seed
    evidence = Evidence.of(settings)
    # One reference sample for every comparison, so frames are judged against the same rows.
    reference = sample(list(settings.frames.train))
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
            current = sample(members)
            if len(current):
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
            # One query per frame, each cut down at once to the three columns judged: a
            # query of all frames held 1.4 million rows of ten columns at 10x the default
            # data. "all" is the frames in ascending order, the order in which the store
            # returns a query of all of them (its index ends with the frame).
            parts = {}
            for number in sorted(frames):
                joined = store.scores_with_labels(
                    settings.env, model_name=name, model_version=version, frames=[number]
                )
                parts[str(number)] = _scored_frame(joined).copy()
                del joined
            parts["all"] = pd.concat(list(parts.values()), ignore_index=True)
            for key in groups:
                if len(parts[key]):
                    per_frame[key].update(
                        judge_quality(
                            parts[key],
                            html(key, "quality"),
                            evidence,
                            rng_seed,
                            None if key == "all" else FRAME_QUALITY_MAX_ROWS,
                        )
                    )
            del parts
            online = online_quality(store, settings.env, name, version, evidence)
            newest_label = store.newest_label_at(
                settings.env, model_name=name, model_version=version
            )
        finally:
            store.dispose()
        for key, future in tqdm(futures.items(), desc="verify drift", unit="report", disable=None):
            per_frame[key]["drift"] = future.result()
    overall = per_frame.pop("all")
    drift_share = overall.get("drift", {}).get("drift_share", 0.0)
    pr_auc = overall.get("quality", {}).get("pr_auc")
    realised = overall.get("interval")
    verdict = evaluate_verify_gate(
        drift_share,
        realised,
        serving.pr_auc,
        gate.max_drift_share,
        gate.max_pr_auc_drop,
        online=online["estimate"],
    )
    summary = {
        "model_name": name,
        "model_version": version,
        "overall": {
            "drift_share": drift_share,
            "drifted_columns": overall.get("drift", {}).get("drifted_columns"),
            "drifted": drifted_names(overall),
            "pr_auc": pr_auc,
            "pr_auc_interval": _interval(realised),
            "labelled_positives": None if realised is None else realised.positives,
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
                "pr_auc_interval": _interval(e.get("interval")),
                "labelled_positives": None if "interval" not in e else e["interval"].positives,
                "roc_auc": e.get("quality", {}).get("roc_auc"),
                "recall": e.get("quality", {}).get("recall"),
                "labeled_rows": e.get("quality", {}).get("rows", 0),
            }
            for frame, e in per_frame.items()
        },
        "gate": {
            "passed": verdict.passed,
            "verdict": verdict.verdict,
            "reasons": verdict.reasons,
            "expected_pr_auc": serving.pr_auc,
            "confidence": evidence.confidence,
            "resamples": evidence.resamples,
            "min_positives": evidence.min_positives,
            "on_failure": gate.on_failure,
            "max_drift_share": gate.max_drift_share,
            "max_pr_auc_drop": gate.max_pr_auc_drop,
        },
        "online": online["summary"],
        "staleness": staleness(
            serving.created_at,
            newest_label,
            settings.continuous_training.max_model_age_days,
        ),
        "html": sorted(str(p.relative_to(settings.root)) for p in layout.verify_dir.glob("*.html")),
    }
    write_json(layout.verify_summary, summary)
    if verdict.verdict == INSUFFICIENT:
        import sys

        print(f"verify gate: {verdict.reasons[0]}", file=sys.stderr)
    if not verdict.passed:
        message = "verify gate failed: " + "; ".join(verdict.reasons)
        if gate.on_failure == "fail":
            raise GateFailed(message)
        import sys

        print(f"warning: {message} (gates.verify.on_failure is 'warn')", file=sys.stderr)
    return summary
