"""Planted names and raw ids never reach what ingest and prepare write, when the filter says so.

The fast half of the guarantee: the real `ingest` and `prepare` entry points on a CSV
source with a planted name column and marked raw ids, then a scan of every file the
project holds. With the filter off the same scan finds them, so finding nothing proves
something. tests/test_secrets_e2e.py scans a whole `dvc repro` (the DVC cache, MLflow,
the store, the logs) the same way.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import set_param
from tests.secret_scan import declare_name, find_in_files, plant_personal_data

KEY = "personal-data-test-pseudonymisation-key-32+"
SOURCE = "source.csv"


def _planted_project(project: Path, filter_on: bool) -> dict[str, str]:
    from pipeline.config import load_settings
    from pipeline.generator import generate

    params = project / "params.yaml"
    params.write_text(declare_name(params.read_text()))
    overlay = project / "environments" / "dev" / "params.yaml"
    text = overlay.read_text().replace(
        "  source:\n    kind: generator\n", f"  source:\n    kind: file\n    path: {SOURCE}\n"
    )
    for key in ("drop_direct_identifiers", "pseudonymise_ids"):
        text = set_param(text, key, "true" if filter_on else "false")
    overlay.write_text(text)
    settings = load_settings(project)
    raw, markers = plant_personal_data(
        generate(settings.generator, settings.frames.count), uuid.uuid4().hex[:8]
    )
    raw.to_csv(project / SOURCE, index=False)
    return markers


@pytest.mark.parametrize("filter_on", [True, False], ids=["filter-on", "filter-off"])
def test_ingest_and_prepare_write_no_name_and_no_raw_id(
    project: Path, monkeypatch: pytest.MonkeyPatch, filter_on: bool
) -> None:
    from pipeline import ingest, prepare
    from pipeline.config import load_settings

    markers = _planted_project(project, filter_on)
    monkeypatch.setenv("CRISPML_PSEUDONYMISATION_KEY", KEY)
    settings = load_settings(project)
    summary = ingest.run(settings)
    prepare.run(settings)

    planted = find_in_files(project, markers.values())
    assert f"{SOURCE}: {markers['name']}" in planted and f"{SOURCE}: {markers['id']}" in planted
    found = set(find_in_files(project, markers.values(), skip=[SOURCE]))
    if filter_on:
        assert found == set()
        assert summary["privacy"]["dropped_columns"] == ["card_number", "customer_name"]
        return
    # The same scan with the filter off: the ingested frames (what DVC would cache and
    # push) hold both.
    ingested = [f"data/ingested/frame_{n}.parquet: {m}" for n in (1, 12) for m in markers.values()]
    assert set(ingested) <= found, sorted(found)
