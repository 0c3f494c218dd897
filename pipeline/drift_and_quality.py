"""Data-drift and classification-quality summaries backed by Evidently 0.7.

Both functions return small JSON-serialisable dicts (so callers can log, diff and
gate on them) and optionally write Evidently's HTML report for humans. Every metric
in the returned dict is read back out of Evidently's own result (``snapshot.dict()``)
rather than recomputed, so the numbers always match what the HTML shows. The single
exception is ``pr_auc``, documented on :func:`quality_summary`.

Evidently is imported inside the functions because importing it costs several
seconds; modules that merely import this one (CLIs, tests collecting) stay fast.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Type aliases Evidently registers for the results we read back. Matching on these
# strings (not on Python classes) keeps extraction on the documented dict export.
_DRIFT_COUNT_TYPE = "evidently:metric_v2:DriftedColumnsCount"
_VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"
_QUALITY_TYPES = {
    "evidently:metric_v2:Accuracy": "accuracy",
    "evidently:metric_v2:Precision": "precision",
    "evidently:metric_v2:Recall": "recall",
    "evidently:metric_v2:F1Score": "f1",
    "evidently:metric_v2:RocAuc": "roc_auc",
}
# Evidently classification task names inside one DataDefinition.
_DECISION_TASK = "default"
_PROBA_TASK = "proba"


def drift_summary(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    html_path: str | Path | None,
    *,
    max_rows: int = 10_000,
    seed: int = 0,
    column_threshold: float | None = None,
    categorical: list[str] | tuple[str, ...] = (),
) -> dict:
    """Summarise per-column distribution drift of ``current`` against ``reference``.

    Why sample: DataDriftPreset costs seconds per 10k rows while the drift scores are
    already stable well below that, so each side is cut to ``max_rows`` rows (seeded, so
    reruns give identical numbers; original row order is kept because Evidently plots
    values against the index). Why declare ``columns`` numerical explicitly: Evidently
    otherwise infers types and may treat low-cardinality integers as categorical,
    silently switching the statistical test.

    ``column_threshold`` overrides Evidently's per-test default drift threshold for
    every column (note the default test switches from K-S p-value to normed
    Wasserstein distance, threshold 0.1, above 1000 reference rows).

    Returns ``drift_share``, ``drifted_columns``, ``columns``, ``reference_rows`` and
    ``current_rows`` (rows actually compared, i.e. after sampling), ``method`` (the
    stat test; ``"mixed: ..."`` if Evidently chose different tests per column) and
    ``per_column`` mapping each column to ``score``, ``drifted``, ``method`` and
    ``threshold``. ``drifted`` is Evidently's own per-column verdict (its drift
    test status), not a re-derivation from score and threshold, because whether a
    low or a high score means drift depends on the test.

    ``categorical`` names the members of ``columns`` that are categories (Evidently
    then compares value frequencies); every other column must be numeric.

    Raises ``ValueError`` on empty frames, an empty or duplicated column list, or
    missing or non-numeric columns.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("drift_summary: `columns` is empty; nothing to compare")
    if len(set(columns)) != len(columns):
        raise ValueError(f"drift_summary: `columns` has duplicates: {columns}")
    if max_rows < 1:
        raise ValueError(f"drift_summary: max_rows must be >= 1, got {max_rows}")
    for name, frame in (("reference", reference), ("current", current)):
        if len(frame) == 0:
            raise ValueError(f"drift_summary: {name} has zero rows")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"drift_summary: {name} lacks columns {missing}")
        not_numeric = [
            c
            for c in columns
            if c not in categorical
            and (
                not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
            )
        ]
        if not_numeric:
            raise ValueError(f"drift_summary: {name} columns {not_numeric} are not numeric")

    rng = np.random.default_rng(seed)
    ref = _sample(reference, columns, max_rows, rng, categorical)
    cur = _sample(current, columns, max_rows, rng, categorical)

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in categorical],
        categorical_columns=[c for c in columns if c in categorical],
    )
    # include_tests=True is what exposes Evidently's per-column drift verdict.
    report = Report(
        [DataDriftPreset(columns=columns, threshold=column_threshold)],
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    result = snapshot.dict()

    count: dict[str, Any] | None = None
    per_column: dict[str, dict[str, Any]] = {}
    for metric in result["metrics"]:
        config = metric.get("config", {})
        if config.get("type") == _DRIFT_COUNT_TYPE:
            count = metric["value"]
        elif config.get("type") == _VALUE_DRIFT_TYPE and config["column"] in columns:
            per_column[config["column"]] = {
                "score": _num(metric["value"]),
                "drifted": None,
                "method": config.get("method"),
                "threshold": _num(config.get("threshold")),
            }
    for test in result["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type") == _VALUE_DRIFT_TYPE and params.get("column") in per_column:
            per_column[params["column"]]["drifted"] = test["status"] in ("FAIL", "WARNING")

    incomplete = [c for c in columns if per_column.get(c, {}).get("drifted") is None]
    if count is None or incomplete:
        raise RuntimeError(
            "drift_summary: unexpected Evidently result shape "
            f"(count found: {count is not None}, columns without verdict: {incomplete})"
        )

    methods = sorted({str(v["method"]) for v in per_column.values()})
    method = methods[0] if len(methods) == 1 else "mixed: " + ", ".join(methods)

    if html_path is not None:
        _write_html_atomic(snapshot.get_html_str(as_iframe=False), html_path)

    return {
        "drift_share": float(count["share"]),
        "drifted_columns": int(count["count"]),
        "columns": len(columns),
        "reference_rows": len(ref),
        "current_rows": len(cur),
        "method": method,
        "per_column": {c: per_column[c] for c in columns},
    }


def quality_summary(
    scored: pd.DataFrame,
    html_path: str | Path | None,
    *,
    target: str = "label",
    score: str = "score",
    decision: str = "decision",
    reference: pd.DataFrame | None = None,
) -> dict:
    """Summarise binary-classification quality of scored rows via Evidently.

    Why two Evidently classification tasks: when a task has a probability column,
    Evidently 0.7 ignores the label column and re-thresholds the probabilities at
    0.5, so accuracy/precision/recall/f1 would not describe the decisions actually
    taken. Hence ClassificationPreset runs on ``decision`` (labels only) and a
    second task with probabilities in ``score`` (positive label 1) provides ROC AUC.

    ``pr_auc`` is the one number not from Evidently: it is sklearn's
    ``average_precision_score`` on ``score``, because Evidently 0.7 exposes no
    PR-AUC metric and PR-AUC is the informative ranking metric for rare positives.

    With a single label class, ``roc_auc`` and ``pr_auc`` are ``None`` (undefined,
    not an error). If Evidently cannot build the report at all (it fails when labels
    and decisions together hold one class, or when the reference is single-class),
    the run is retried without the reference, and failing that the Evidently
    metrics and ``html`` are ``None`` and ``reason`` says why.

    Returns ``rows``, ``positives``, ``predicted_positives``, ``accuracy``,
    ``precision``, ``recall``, ``f1``, ``roc_auc``, ``pr_auc``, ``reference_rows``
    (``None`` if no reference was used), ``html`` (path written or ``None``) and
    ``reason`` (``None`` unless something was skipped). Raises ``ValueError`` on
    zero rows, missing columns, NaNs, or labels/decisions outside {0, 1}.
    """
    cur = _clean_scored(scored, "scored", target, score, decision)
    ref = None
    if reference is not None:
        ref = _clean_scored(reference, "reference", target, score, decision)

    y = cur[target].to_numpy()
    both_classes = len(np.unique(y)) == 2
    summary: dict[str, Any] = {
        "rows": len(cur),
        "positives": int(y.sum()),
        "predicted_positives": int(cur[decision].sum()),
        "accuracy": None,
        "precision": None,
        "recall": None,
        "f1": None,
        "roc_auc": None,
        "pr_auc": None,
        "reference_rows": None,
        "html": None,
        "reason": None,
    }
    if both_classes:
        from sklearn.metrics import average_precision_score

        summary["pr_auc"] = _num(average_precision_score(y, cur[score].to_numpy()))

    attempts = [ref, None] if ref is not None else [None]
    errors: list[str] = []
    snapshot = None
    for attempt_ref in attempts:
        try:
            snapshot = _run_quality_report(
                cur, attempt_ref, target, score, decision, roc=both_classes
            )
        except Exception as exc:  # Evidently raises KeyError/ValueError on odd data
            which = "with reference" if attempt_ref is not None else "current only"
            errors.append(f"Evidently failed ({which}): {type(exc).__name__}: {exc}")
            log.warning("quality_summary: %s", errors[-1])
            continue
        summary["reference_rows"] = None if attempt_ref is None else len(attempt_ref)
        break

    if snapshot is None:
        summary["reason"] = "; ".join(errors)
        return summary

    for metric in snapshot.dict()["metrics"]:
        key = _QUALITY_TYPES.get(metric.get("config", {}).get("type"))
        if key is not None:
            summary[key] = _num(metric["value"])

    reasons = list(errors)
    if not both_classes:
        reasons.append("only one label class: roc_auc and pr_auc undefined")
    summary["reason"] = "; ".join(reasons) or None

    if html_path is not None:
        summary["html"] = _write_html_atomic(snapshot.get_html_str(as_iframe=False), html_path)
    return summary


def _run_quality_report(
    cur: pd.DataFrame,
    ref: pd.DataFrame | None,
    target: str,
    score: str,
    decision: str,
    *,
    roc: bool,
):
    """Run the Evidently classification report; separate so it can be retried."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import RocAuc
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(
        classification=[
            BinaryClassification(
                name=_DECISION_TASK,
                target=target,
                prediction_labels=decision,
                pos_label=1,
            ),
            BinaryClassification(
                name=_PROBA_TASK,
                target=target,
                prediction_probas=score,
                pos_label=1,
            ),
        ],
        numerical_columns=[score],
        categorical_columns=[target, decision],
    )
    items: list[Any] = [ClassificationPreset(classification_name=_DECISION_TASK)]
    if roc:
        items.append(RocAuc(classification_name=_PROBA_TASK))
    return Report(items).run(
        Dataset.from_pandas(cur, data_definition=definition),
        None if ref is None else Dataset.from_pandas(ref, data_definition=definition),
    )


def _clean_scored(
    frame: pd.DataFrame, name: str, target: str, score: str, decision: str
) -> pd.DataFrame:
    """Validate and copy the three columns with the dtypes Evidently's checks expect."""
    if len(frame) == 0:
        raise ValueError(f"quality_summary: {name} has zero rows; quality is undefined")
    missing = [c for c in (target, score, decision) if c not in frame.columns]
    if missing:
        raise ValueError(f"quality_summary: {name} lacks columns {missing}")
    sub = frame[[target, score, decision]]
    nan_cols = [c for c in sub.columns if sub[c].isna().any()]
    if nan_cols:
        raise ValueError(f"quality_summary: {name} has NaN in {nan_cols}")
    for col in (target, decision):
        bad = set(pd.unique(sub[col])) - {0, 1}
        if bad:
            raise ValueError(
                f"quality_summary: {name}[{col!r}] must be 0/1, found {sorted(bad)[:5]}"
            )
    out = pd.DataFrame(
        {
            target: sub[target].astype("int64").to_numpy(),
            score: sub[score].astype("float64").to_numpy(),
            decision: sub[decision].astype("int64").to_numpy(),
        }
    )
    if not np.isfinite(out[score].to_numpy()).all():
        raise ValueError(f"quality_summary: {name}[{score!r}] has non-finite values")
    return out


def _sample(
    frame: pd.DataFrame,
    columns: list[str],
    max_rows: int,
    rng: np.random.Generator,
    categorical: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Copy ``columns`` (numbers as float64, categories as text), sampled to ``max_rows``.

    The original row order is kept.
    """
    sub = frame[columns]
    if len(sub) > max_rows:
        positions = np.sort(rng.choice(len(sub), size=max_rows, replace=False))
        sub = sub.iloc[positions]
    types = {c: "object" if c in categorical else "float64" for c in columns}
    return sub.astype(types).reset_index(drop=True)


def _num(value: Any) -> float | None:
    """Plain float for JSON; NaN/inf/None become None (not valid strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _write_html_atomic(html: str, path: str | Path) -> str:
    """Write ``html`` so readers never see a partial file; return the path as str.

    Uses ``snapshot.get_html_str`` output rather than ``snapshot.save_html``, which
    silently writes nothing when handed a ``pathlib.Path``. The temp file is created
    with mode 0o666 (minus umask) so the final report has normal permissions.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(target)
