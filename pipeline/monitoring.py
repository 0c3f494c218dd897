"""Evidently monitoring over time: each day's drift and quality snapshots in a workspace.

`crispml replay` and continuous training add, for every day they look at, two
Evidently snapshots dated that day to a local Evidently workspace
(`monitoring.workspace`, default reports/monitoring):

* a drift snapshot: `DriftedColumnsCount` of the day's rows against the serving model's
  training window (both sampled to `verify.drift_max_rows`, as verify does);
* a quality snapshot of the persisted scores against the labels that arrived:
  PR-AUC (`CrispmlPrAuc`, below: Evidently 0.7 has no PR-AUC metric), and Recall and
  Precision of the decisions actually taken.

Each project gets a dashboard of line panels (drift share, PR-AUC, recall per day), so
`evidently ui --workspace reports/monitoring` shows the series. Everything here goes
through Evidently's own Workspace / Project / dashboard API; Evidently is imported
inside the functions because importing it takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import Settings

DRIFT_TAG, QUALITY_TAG = "drift", "quality"
PR_AUC_METRIC = "evidently:metric_v2:CrispmlPrAuc"
# Task names inside the quality DataDefinition (see drift_and_quality.quality_summary).
_DECISION_TASK = "default"


@cache
def pr_auc_metric() -> type:
    """PR-AUC as an Evidently 0.7 metric (average precision of `score` against `label`).

    Built on first use, so importing this module does not import Evidently. Its result is
    Evidently's own SingleValue, so a workspace and `evidently ui` read it like any other.
    """
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
    from sklearn.metrics import average_precision_score

    class CrispmlPrAuc(SingleValueMetric):
        """Average precision (PR-AUC) of a probability column against a 0/1 target."""

        target: str = "label"
        score: str = "score"

    class CrispmlPrAucCalculation(SingleValueCalculation[CrispmlPrAuc]):
        def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
            def value(data: Any) -> float:
                y = data.column(self.metric.target).data.to_numpy().astype(int)
                scores = data.column(self.metric.score).data.to_numpy().astype(float)
                return float(average_precision_score(y, scores)) if 0 < y.sum() < len(y) else 0.0

            current = self.result(value(current_data))
            if reference_data is None:
                return current
            return current, self.result(value(reference_data))

        def display_name(self) -> str:
            return "PR-AUC"

    CrispmlPrAuc.__calculation_type__ = CrispmlPrAucCalculation
    return CrispmlPrAuc


def workspace_path(settings: Settings) -> Path:
    path = Path(settings.monitoring.workspace)
    return path if path.is_absolute() else settings.root / path


def dashboard_panels() -> list[Any]:
    """The series a person watches: drift share, PR-AUC and recall per day."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    return [
        line_plot_panel(
            "Drift share per day",
            [
                PanelMetric(
                    legend="share of drifted columns",
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "share"},
                    tags=[DRIFT_TAG],
                )
            ],
            description="columns drifted against the serving model's training window",
            size="half",
        ),
        line_plot_panel(
            "PR-AUC per day",
            [PanelMetric(legend="PR-AUC", metric=PR_AUC_METRIC, tags=[QUALITY_TAG])],
            description="persisted scores against the labels that arrived",
            size="half",
        ),
        line_plot_panel(
            "Recall per day",
            [PanelMetric(legend="recall", metric="Recall", tags=[QUALITY_TAG])],
            description="share of frauds the decisions actually taken caught",
            size="half",
        ),
    ]


class MonitoringProject:
    """A workspace and one of its projects: what `add_day` writes to."""

    def __init__(self, workspace: Any, project: Any) -> None:
        self.workspace = workspace
        self.project = project

    @property
    def id(self) -> Any:
        return self.project.id

    def runs(self) -> list[Any]:
        """Every snapshot of the project, read back from the workspace, oldest first."""
        snapshots = [
            self.workspace.get_run(self.id, sid) for sid in self.workspace.list_runs(self.id)
        ]
        return sorted((s for s in snapshots if s is not None), key=lambda s: s.timestamp)


def open_project(
    settings: Settings, name: str | None = None, *, fresh: bool = False
) -> MonitoringProject:
    """The named project of the monitoring workspace, created with its dashboard if new.

    `fresh` deletes a project of that name first (a replay restarts its series).
    """
    from evidently.ui.workspace import Workspace

    path = workspace_path(settings)
    path.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(str(path))
    name = name or f"{settings.monitoring.project}-{settings.env}"
    found = list(workspace.search_project(name))
    if fresh:
        for project in found:
            workspace.delete_project(project.id)
        found = []
    if found:
        return MonitoringProject(workspace, found[0])
    project = workspace.create_project(
        name, description=f"CrispML daily drift and quality, environment {settings.env}"
    )
    for panel in dashboard_panels():
        project.dashboard.add_panel(panel)
    return MonitoringProject(workspace, project)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)


def drift_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    timestamp: datetime,
    tags: Mapping[str, str],
    *,
    max_rows: int,
    seed: int,
    categorical: list[str] | tuple[str, ...] = (),
) -> Any:
    """Share of drifted columns of `current` against `reference`, as an Evidently snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount

    columns = list(current.columns)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in categorical],
        categorical_columns=[c for c in columns if c in categorical],
    )
    types = {c: "object" if c in categorical else "float64" for c in columns}
    report = Report([DriftedColumnsCount(columns=columns)])
    return report.run(
        Dataset.from_pandas(
            _sample(current, max_rows, seed).astype(types), data_definition=definition
        ),
        Dataset.from_pandas(
            _sample(reference[columns], max_rows, seed).astype(types), data_definition=definition
        ),
        timestamp=timestamp,
        tags=[DRIFT_TAG, *(f"{k}={v}" for k, v in tags.items())],
        metadata=dict(tags),
    )


def quality_snapshot(scored: pd.DataFrame, timestamp: datetime, tags: Mapping[str, str]) -> Any:
    """PR-AUC, recall and precision of persisted scores (label, score, decision)."""
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import Precision, Recall

    data = pd.DataFrame(
        {
            "label": scored["label"].astype("int64").to_numpy(),
            "score": scored["score"].astype("float64").to_numpy(),
            "decision": scored["decision"].astype("int64").to_numpy(),
        }
    )
    definition = DataDefinition(
        classification=[
            BinaryClassification(
                name=_DECISION_TASK, target="label", prediction_labels="decision", pos_label=1
            )
        ],
        numerical_columns=["score"],
        categorical_columns=["label", "decision"],
    )
    report = Report(
        [
            pr_auc_metric()(),
            Recall(classification_name=_DECISION_TASK),
            Precision(classification_name=_DECISION_TASK),
        ]
    )
    return report.run(
        Dataset.from_pandas(data, data_definition=definition),
        None,
        timestamp=timestamp,
        tags=[QUALITY_TAG, *(f"{k}={v}" for k, v in tags.items())],
        metadata=dict(tags),
    )


def add_day(
    project: MonitoringProject,
    *,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    scored: pd.DataFrame | None,
    timestamp: datetime,
    tags: Mapping[str, str],
    max_rows: int,
    seed: int = 0,
    categorical: list[str] | tuple[str, ...] = (),
) -> list[Any]:
    """Add one day's drift snapshot and, when labels arrived, its quality snapshot.

    Returns the ids of the snapshots added.
    """
    added = [
        project.workspace.add_run(
            project.id,
            drift_snapshot(
                reference,
                current,
                timestamp,
                tags,
                max_rows=max_rows,
                seed=seed,
                categorical=categorical,
            ),
        ).id
    ]
    if scored is not None and len(scored) and scored["label"].nunique() == 2:
        added.append(
            project.workspace.add_run(project.id, quality_snapshot(scored, timestamp, tags)).id
        )
    return added


def record_day(
    settings: Settings,
    *,
    day: int,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    scored: pd.DataFrame | None,
    tags: Mapping[str, str],
    timestamp: datetime | None = None,
) -> list[Any]:
    """Continuous training's entry: add frame `day` to the environment's project, dated now."""
    from datetime import UTC

    contract = settings.contract
    columns = [c for c in contract.features if contract.by_name[c].dtype != "datetime"]
    project = open_project(settings)
    return add_day(
        project,
        reference=reference[columns],
        current=current[columns],
        scored=scored,
        timestamp=timestamp or datetime.now(UTC),
        tags={"day": str(day), **tags},
        max_rows=settings.verify.drift_max_rows,
        seed=settings.verify.seed,
        categorical=[c for c in columns if c in contract.categorical],
    )


def series(project: MonitoringProject) -> list[dict[str, Any]]:
    """The per-day figures read back out of the workspace's snapshots (oldest first)."""
    out = []
    for snapshot in project.runs():
        row: dict[str, Any] = {"timestamp": snapshot.timestamp, "tags": list(snapshot.tags)}
        for result in snapshot.metric_results.values():
            kind = _metric_type(snapshot, result)
            value = getattr(result, "value", None)
            if kind.endswith(":DriftedColumnsCount"):
                row["drift_share"] = float(result.share.value)
            elif kind == PR_AUC_METRIC:
                row["pr_auc"] = float(value)
            elif kind.endswith(":Recall"):
                row["recall"] = float(value)
            elif kind.endswith(":Precision"):
                row["precision"] = float(value)
        out.append(row)
    return out


def _metric_type(snapshot: Any, result: Any) -> str:
    """The metric type a stored result belongs to (from the snapshot's report items)."""
    location = getattr(result, "metric_value_location", None)
    metric = getattr(location, "metric", None)
    params = getattr(metric, "params", None) or {}
    return str(params.get("type", ""))
