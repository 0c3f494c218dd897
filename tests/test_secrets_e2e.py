"""Secrets never leave the environment: plant one in every variable the pipeline reads.

The whole pipeline runs (`dvc repro`, then `crispml reports`) with real PostgreSQL
behind the source query, the score store and the MLflow backend, each URL carrying its
own planted password, and with a planted pseudonymisation key. Then everything the run
left is searched: every file of the project (reports, data, dvc.lock, the DVC cache,
MLflow artifacts; Parquet decoded), every table of the store and of MLflow (params,
tags, model versions, experiments), and the commands' output. The server trusts local
connections, so a wrong password still connects: the passwords are pure markers.

The same run carries planted personal data (issue 9, item 3): the source has a name
column, declared a direct identifier, and raw transaction ids, both marked, and the
environment's privacy filter is fully on. The same search finds neither anywhere; the
source table, where they were planted, shows that the search would.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.conftest import copy_project, postgres_url
from tests.secret_scan import declare_name, find_in_database, find_in_files, plant_personal_data

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        postgres_url() is None,
        reason="CRISPML_TEST_DATABASE_URL is not set: the planted passwords ride on real "
        "PostgreSQL URLs (source, store, MLflow)",
    ),
]

SOURCE_VARIABLE = "CRISPML_TEST_SOURCE_URL"


def _url(schema: str, password: str) -> str:
    """The test server's URL with a password and a search_path of its own."""
    from sqlalchemy.engine import make_url

    base = make_url(postgres_url()).set(password=password)
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory):
    import sqlalchemy as sa

    from pipeline.config import load_settings
    from pipeline.generator import generate

    tag = uuid.uuid4().hex[:10]
    schemas = {name: f"secrets_{name}_{tag}" for name in ("source", "store", "mlflow")}
    secrets = {
        "source": f"planted-source-password-{tag}",
        "store": f"planted-store-password-{tag}",
        "mlflow": f"planted-mlflow-password-{tag}",
        "key": f"planted-pseudonymisation-key-{tag}-0123456789abcdef",
    }
    urls = {name: _url(schemas[name], secrets[name]) for name in schemas}
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        for schema in schemas.values():
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))

    root = copy_project(tmp_path_factory.mktemp("secrets") / "project")
    params = root / "params.yaml"
    # Ground truth arrives with the raw ids too: label must key them to join.
    truth = (
        "label:\n  source:\n    kind: sql\n"
        f"    url_env: {SOURCE_VARIABLE}\n"
        '    query: select transaction_id as id, "Class" as label from transactions\n'
    )
    text = params.read_text().replace("label:\n  source:\n    kind: target", truth, 1)
    params.write_text(declare_name(text.replace(f"{truth}  # target | file | sql\n", truth)))
    settings = load_settings(root)
    source = sa.create_engine(urls["source"])
    planted, markers = plant_personal_data(generate(settings.generator, settings.frames.count), tag)
    planted.to_sql("transactions", source, index=False, chunksize=2000)
    source.dispose()
    overlay = root / "environments" / "dev" / "params.yaml"
    text = overlay.read_text()
    text = text.replace(
        "  source:\n    kind: generator\n",
        f"  source:\n    kind: sql\n    url_env: {SOURCE_VARIABLE}\n"
        "    query: select * from transactions\n",
    ).replace("pseudonymise_ids: false", "pseudonymise_ids: true")
    overlay.write_text(text)

    env = {
        **os.environ,
        SOURCE_VARIABLE: urls["source"],
        "CRISPML_STORE_URL": urls["store"],
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "CRISPML_PSEUDONYMISATION_KEY": secrets["key"],
        "CRISPML_GIT_COMMIT": "5ec2e7" + "0" * 34,
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    logs = []
    try:
        for cmd in (
            ["git", "init", "-q"],
            ["dvc", "init", "-q"],
            ["dvc", "repro"],
            ["crispml", "reports"],
        ):
            done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            logs.append(f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
            assert done.returncode == 0, logs[-1][-4000:]
        yield root, secrets, urls, "\n".join(logs), markers
    finally:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def test_the_run_used_every_planted_secret(planted_run) -> None:
    """Otherwise finding nothing would prove nothing."""
    import json

    root, _, _, logs, _ = planted_run
    ingest = json.loads((root / "reports" / "ingest.json").read_text())
    assert ingest["source"] == f"sql:{SOURCE_VARIABLE}"
    registered = json.loads((root / "reports" / "registered.json").read_text())
    assert registered["alias_moved"] is True
    privacy = json.loads((root / "reports" / "privacy.json").read_text())
    assert privacy["pseudonymised_columns"], "the key was used"
    assert "postgresql+psycopg://" in registered["tracking_uri"]
    assert "MLflow" in logs


def test_no_file_of_the_run_holds_a_secret(planted_run) -> None:
    root, secrets, _, _, _ = planted_run
    # params.yaml and the overlay name variables, never values; .git is the empty repo.
    assert find_in_files(root, secrets.values(), skip=[".git"]) == []


def test_no_row_of_the_store_or_of_mlflow_holds_a_secret(planted_run) -> None:
    _, secrets, urls, _, _ = planted_run
    assert find_in_database(urls["store"], secrets.values()) == []
    # params, metrics, tags, runs, experiments (artifact locations), model versions.
    found = find_in_database(urls["mlflow"], secrets.values())
    assert found == []


def test_no_output_of_the_commands_holds_a_secret(planted_run) -> None:
    _, secrets, _, logs, _ = planted_run
    assert [name for name, value in secrets.items() if value in logs] == []


# --- personal data (issue 9, item 3) ---------------------------------------------------


def test_the_filter_ran_on_the_planted_personal_data(planted_run) -> None:
    """Otherwise finding nothing would prove nothing: the markers are in the source, the
    cache and the store are not empty, ingest itself dropped and keyed, and the ground
    truth, read with raw ids, joined every keyed score."""
    import json

    import sqlalchemy as sa

    from pipeline.store.pseudonymise import looks_pseudonymised

    root, _, urls, _, markers = planted_run
    planted = find_in_database(urls["source"], markers.values())
    assert sorted(planted) == sorted(f"transactions: {m}" for m in markers.values())
    ingest = json.loads((root / "reports" / "ingest.json").read_text())
    assert ingest["privacy"] == {
        "dropped_columns": ["card_number", "customer_name"],
        "pseudonymised_columns": ["transaction_id"],
    }
    assert sum(1 for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()) > 10
    engine = sa.create_engine(urls["store"])
    try:
        with engine.connect() as conn:
            scored = conn.execute(sa.text("select record_id from scores")).scalars().all()
            labelled = conn.execute(sa.text("select count(*) from labels")).scalar_one()
    finally:
        engine.dispose()
    assert scored and all(looks_pseudonymised(r) for r in scored) and labelled == len(scored)
    for frame in range(7, 13):
        imported = json.loads((root / "reports" / "labels" / f"frame_{frame}.json").read_text())
        assert imported["source"] == f"sql:{SOURCE_VARIABLE}"
        assert imported["waiting"] == 0 < imported["labeled"], imported


def test_no_artifact_of_the_run_holds_a_name_or_a_raw_id(planted_run) -> None:
    """data/ingested and data/prepared, the DVC cache, MLflow (database and artifacts),
    the store, reports/ and the commands' output."""
    root, _, urls, logs, markers = planted_run
    assert find_in_files(root, markers.values(), skip=[".git"]) == []
    assert find_in_database(urls["store"], markers.values()) == []
    assert find_in_database(urls["mlflow"], markers.values()) == []
    assert [name for name, value in markers.items() if value in logs] == []
