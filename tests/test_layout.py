"""dvc.yaml and pipeline/layout.py name the same paths; a rename must change both."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.layout import Layout
from tests.conftest import PROJECT


def _declared(stage: dict) -> set[str]:
    out = set()
    for key in ("outs", "metrics", "plots"):
        for item in stage.get(key, []):
            out.add(item if isinstance(item, str) else next(iter(item)))
    return out


def test_every_stage_output_is_a_layout_path() -> None:
    layout = Layout(Path("."))
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    expected = {
        "ingest": {layout.ingested, layout.ingest_report},
        "prepare": {layout.prepared, layout.privacy_report},
        "curate": {layout.curated, layout.features},
        "train": {layout.model},
        "report": {layout.metrics, layout.slices, layout.plots},
        "register": {layout.registered, layout.gate},
        "verify": {layout.verify_dir, layout.verify_summary},
        # One stage over frames.score writes each frame's file into these folders.
        "score": {layout.scored, layout.reports / "score"},
        "label": {layout.reports / "labels"},
    }
    for name, paths in expected.items():
        assert _declared(stages[name]) == {str(p) for p in paths}, name
    assert layout.frame_file(layout.scored, 7).parent == layout.scored


def test_every_stage_tracks_env_and_its_own_code() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert "env" in body["params"], name
        # The source stage fingerprints what pipeline/sources.py reads.
        module = {"source": "sources"}.get(name, name)
        assert f"pipeline/{module}.py" in body["deps"], name
