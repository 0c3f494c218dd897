"""Report (CRISP-DM: evaluation): metrics, cost-based threshold, slices and DVC plots.

The threshold is chosen on the validation frames and judged on the test frame, so
the reported cost is what the chosen threshold would have cost on unseen data.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pipeline.config import FRAME, Cost, Slice

MAX_CURVE_POINTS = 400


def expected_cost(y: np.ndarray, decision: np.ndarray, cost: Cost) -> float:
    """Each missed positive costs `false_negative`; each flagged negative `false_positive`.

    Flagged positives cost nothing extra here: the review that catches them is the
    point of flagging, and it is cheap next to a miss.
    """
    missed = int(((y == 1) & (decision == 0)).sum())
    false_alarms = int(((y == 0) & (decision == 1)).sum())
    return missed * cost.false_negative + false_alarms * cost.false_positive


def choose_threshold(y: np.ndarray, score: np.ndarray, cost: Cost) -> float:
    """The score cut-off with the lowest expected cost on (y, score)."""
    candidates = np.unique(np.concatenate([np.quantile(score, np.linspace(0, 1, 501)), [1.0]]))
    order = np.argsort(-score)
    sorted_scores, sorted_y = score[order], y[order]
    positives = int(y.sum())
    best, best_cost = 1.0, float("inf")
    for threshold in candidates:
        flagged = int(np.searchsorted(-sorted_scores, -threshold, side="right"))
        caught = int(sorted_y[:flagged].sum())
        total = (positives - caught) * cost.false_negative + (
            flagged - caught
        ) * cost.false_positive
        if total < best_cost:
            best, best_cost = float(threshold), total
    return best


def recall_at_precision(y: np.ndarray, score: np.ndarray, target: float) -> float:
    precision, recall, _ = precision_recall_curve(y, score)
    reachable = recall[precision >= target]
    return float(reachable.max()) if reachable.size else 0.0


def classification_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float, cost: Cost, precision_target: float
) -> dict[str, float]:
    decision = (score >= threshold).astype(int)
    tp = int(((y == 1) & (decision == 1)).sum())
    fp = int(((y == 0) & (decision == 1)).sum())
    fn = int(((y == 1) & (decision == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    two_classes = len(np.unique(y)) == 2
    total_cost = expected_cost(y, decision, cost)
    return {
        "rows": len(y),
        "positives": int(y.sum()),
        "pr_auc": float(average_precision_score(y, score)) if two_classes else float("nan"),
        "roc_auc": float(roc_auc_score(y, score)) if two_classes else float("nan"),
        # Key without the target in it: DVC flattens keys on dots.
        "recall_at_precision": recall_at_precision(y, score, precision_target)
        if two_classes
        else 0.0,
        "precision_target": precision_target,
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "expected_cost": total_cost,
        "expected_cost_per_1000": 1000 * total_cost / len(y) if len(y) else 0.0,
        "flagged": int(decision.sum()),
    }


def band_labels(edges: list[float]) -> list[str]:
    bounds = [*edges, float("inf")]
    return [
        f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+" for lo, hi in itertools.pairwise(bounds)
    ]


def _band_metrics(y: np.ndarray, score: np.ndarray, threshold: float, cost: Cost) -> dict:
    decision = (score >= threshold).astype(int)
    positives = int(y.sum())
    tp = int(((y == 1) & (decision == 1)).sum())
    return {
        "rows": len(y),
        "positives": positives,
        "recall": tp / positives if positives else None,
        "flagged": int(decision.sum()),
        "pr_auc": float(average_precision_score(y, score)) if 0 < positives < len(y) else None,
        "expected_cost": expected_cost(y, decision, cost),
    }


def slice_metrics(
    frame: pd.DataFrame,
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    slices: list[Slice],
    cost: Cost,
) -> dict[str, dict]:
    """Metrics per band of a number or per value of a category.

    A model good on average can fail on one segment (large amounts, one region).
    """
    out: dict[str, dict] = {}
    for item in slices:
        column = frame[item.column]
        groups: dict[str, np.ndarray] = {}
        if item.edges is not None:
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
            bins = np.digitize(values, item.edges[1:], right=False)
            for index, label in enumerate(band_labels(item.edges)):
                groups[label] = (bins == index) & ~np.isnan(values)
        else:
            text = column.astype(object).where(column.notna(), "(missing)").astype(str)
            for value in sorted(text.unique()):
                groups[value] = (text == value).to_numpy()
        out[item.column] = {
            label: _band_metrics(y[mask], score[mask], threshold, cost)
            for label, mask in groups.items()
            if mask.any()
        }
    return out


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) <= MAX_CURVE_POINTS:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, MAX_CURVE_POINTS).round().astype(int))
    return frame.iloc[keep].reset_index(drop=True)


def plot_tables(
    y: np.ndarray, score: np.ndarray, threshold: float, bins: int
) -> dict[str, pd.DataFrame]:
    """The data behind each DVC plot, one table per plot."""
    precision, recall, _ = precision_recall_curve(y, score)
    fpr, tpr, _ = roc_curve(y, score)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    calibration = [
        {
            "mean_predicted": float(score[which == b].mean()),
            "fraction_positive": float(y[which == b].mean()),
            "rows": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]
    return {
        "precision_recall.csv": _thin(pd.DataFrame({"recall": recall, "precision": precision})),
        "roc.csv": _thin(pd.DataFrame({"fpr": fpr, "tpr": tpr})),
        "confusion.csv": pd.DataFrame(
            {"actual": y.astype(int), "predicted": (score >= threshold).astype(int)}
        ),
        "calibration.csv": pd.DataFrame(calibration),
    }


def run(settings) -> dict:
    """Entry point: model + valid/test splits -> reports/metrics.json, slices.json, plots/."""
    from pipeline.io import atomic_dir, write_json
    from pipeline.layout import Layout
    from pipeline.saved_model import load_model
    from pipeline.train import predict_proba

    layout = Layout(settings.root)
    contract, options = settings.contract, settings.report
    model = load_model(layout.model)
    valid = pd.read_parquet(layout.curated / "valid.parquet")
    test = pd.read_parquet(layout.curated / "test.parquet")
    y_valid = valid[contract.target].to_numpy()
    inputs = settings.model_inputs
    s_valid = predict_proba(model, valid, inputs)
    threshold = choose_threshold(y_valid, s_valid, options.cost)
    y_test = test[contract.target].to_numpy()
    s_test = predict_proba(model, test, inputs)
    metrics = classification_metrics(
        y_test, s_test, threshold, options.cost, options.precision_target
    )
    metrics["valid"] = classification_metrics(
        y_valid, s_valid, threshold, options.cost, options.precision_target
    )
    metrics["valid"]["frames"] = sorted(int(n) for n in valid[FRAME].unique())
    metrics["valid"]["positives"] = int(y_valid.sum())
    metrics["algorithm"] = settings.train.algorithm
    # Every figure is about this class of the target (scores are its probability).
    metrics["positive_class"] = str(contract.target_spec.positive_class)
    write_json(layout.metrics, metrics)
    write_json(
        layout.slices,
        slice_metrics(test, y_test, s_test, threshold, options.slices, options.cost),
    )
    with atomic_dir(layout.plots) as tmp:
        for name, table in plot_tables(y_test, s_test, threshold, options.calibration_bins).items():
            table.to_csv(tmp / name, index=False)
    return metrics
