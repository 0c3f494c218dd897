"""Evidently monitoring over time: day snapshots go into a workspace and come back out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from pipeline import monitoring

COLUMNS = ["a", "b", "c", "d"]


@pytest.fixture
def fake_settings(tmp_path: Path):
    return SimpleNamespace(
        root=tmp_path,
        env="dev",
        monitoring=SimpleNamespace(workspace="reports/monitoring", project="crispml"),
    )


def scored_day(rng: np.random.Generator, rows: int = 2000) -> pd.DataFrame:
    y = (rng.uniform(size=rows) < 0.05).astype(int)
    score = np.clip(y * 0.4 + rng.uniform(size=rows) * 0.7, 0, 1)
    return pd.DataFrame({"label": y, "score": score, "decision": (score >= 0.6).astype(int)})


def test_days_are_added_and_read_back_from_the_workspace(fake_settings):
    rng = np.random.default_rng(1)
    reference = pd.DataFrame(rng.normal(size=(3000, 4)), columns=COLUMNS)
    project = monitoring.open_project(fake_settings, fresh=True)
    expected = {}
    for day, shift in ((1, 0.0), (2, 3.0)):
        current = pd.DataFrame(rng.normal(size=(2000, 4)) + shift, columns=COLUMNS)
        scored = scored_day(rng)
        expected[day] = scored
        ids = monitoring.add_day(
            project,
            reference=reference,
            current=current,
            scored=scored,
            timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day),
            tags={"day": str(day)},
            max_rows=1000,
        )
        assert len(ids) == 2
    # A day without labels adds only its drift snapshot.
    only_drift = monitoring.add_day(
        project,
        reference=reference,
        current=reference.head(500),
        scored=None,
        timestamp=datetime(2026, 1, 4, tzinfo=UTC),
        tags={"day": "3"},
        max_rows=1000,
    )
    assert len(only_drift) == 1

    # Read back through a new workspace object: what is on disk, not what is in memory.
    again = monitoring.open_project(fake_settings)
    assert again.id == project.id
    rows = monitoring.series(again)
    assert len(rows) == 5
    drift = {r["tags"][1]: r["drift_share"] for r in rows if "drift" in r["tags"]}
    assert drift["day=1"] == 0.0 and drift["day=2"] == 1.0
    quality = {r["tags"][1]: r for r in rows if "quality" in r["tags"]}
    for day, scored in expected.items():
        got = quality[f"day={day}"]
        assert got["pr_auc"] == pytest.approx(
            average_precision_score(scored["label"], scored["score"])
        )
        caught = ((scored["label"] == 1) & (scored["decision"] == 1)).sum()
        assert got["recall"] == pytest.approx(caught / scored["label"].sum())
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)


def test_the_dashboard_serves_the_series_to_evidently_ui(fake_settings):
    """What `evidently ui` asks its project manager for: one series per panel."""
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.common import NoopAuthManager
    from evidently.ui.service.storage.local import create_local_project_manager
    from evidently.ui.service.type_aliases import ZERO_UUID

    rng = np.random.default_rng(2)
    reference = pd.DataFrame(rng.normal(size=(2000, 4)), columns=COLUMNS)
    project = monitoring.open_project(fake_settings, fresh=True)
    for day in (1, 2, 3):
        monitoring.add_day(
            project,
            reference=reference,
            current=pd.DataFrame(rng.normal(size=(1000, 4)) + day, columns=COLUMNS),
            scored=scored_day(rng),
            timestamp=datetime(2026, 1, day, tzinfo=UTC),
            tags={"day": str(day)},
            max_rows=1000,
        )
    panels = project.project.dashboard.model().panels
    assert [p.title for p in panels] == ["Drift share per day", "PR-AUC per day", "Recall per day"]
    manager = create_local_project_manager(
        str(monitoring.workspace_path(fake_settings)), False, NoopAuthManager()
    )

    async def values(metric) -> list[float]:
        found = await manager.get_data_series(
            ZERO_UUID,
            project.id,
            [
                SeriesFilter(
                    tags=metric.tags,
                    metadata=metric.metadata,
                    metric=metric.metric,
                    metric_labels=metric.metric_labels,
                )
            ],
            None,
            None,
        )
        return [v for s in found.series for v in s.values]

    for panel in panels:
        series = asyncio.run(values(panel.values[0]))
        assert len(series) == 3, panel.title
    assert asyncio.run(values(panels[0].values[0])) == [1.0, 1.0, 1.0]


def test_a_fresh_project_restarts_the_series(fake_settings):
    rng = np.random.default_rng(3)
    reference = pd.DataFrame(rng.normal(size=(500, 4)), columns=COLUMNS)
    project = monitoring.open_project(fake_settings, name="replay", fresh=True)
    monitoring.add_day(
        project,
        reference=reference,
        current=reference,
        scored=None,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        tags={},
        max_rows=500,
    )
    assert len(project.runs()) == 1
    assert monitoring.open_project(fake_settings, name="replay", fresh=True).runs() == []
