"""Secrets never leave the environment: plant one in every variable the pipeline reads.

The whole pipeline runs (`dvc repro`, then `crispml reports`) with real PostgreSQL
behind the source query, the score store and the MLflow backend, each URL carrying its
own planted password, and with a planted pseudonymisation key. Then everything the run
left is searched: every file of the project (reports, data, dvc.lock, the DVC cache,
MLflow artifacts; Parquet decoded), every table of the store and of MLflow (params,
tags, model versions, experiments), and the commands' output. The server trusts local
connections, so a wrong password still connects: the passwords are pure markers.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.conftest import copy_project, postgres_url
from tests.secret_scan import find_in_database, find_in_files

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
    settings = load_settings(root)
    source = sa.create_engine(urls["source"])
    generate(settings.generator, settings.frames.count).to_sql(
        "transactions", source, index=False, chunksize=2000
    )
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
        yield root, secrets, urls, "\n".join(logs)
    finally:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def test_the_run_used_every_planted_secret(planted_run) -> None:
    """Otherwise finding nothing would prove nothing."""
    import json

    root, _, _, logs = planted_run
    ingest = json.loads((root / "reports" / "ingest.json").read_text())
    assert ingest["source"] == f"sql:{SOURCE_VARIABLE}"
    registered = json.loads((root / "reports" / "registered.json").read_text())
    assert registered["alias_moved"] is True
    privacy = json.loads((root / "reports" / "privacy.json").read_text())
    assert privacy["pseudonymised_columns"], "the key was used"
    assert "postgresql+psycopg://" in registered["tracking_uri"]
    assert "MLflow" in logs


def test_no_file_of_the_run_holds_a_secret(planted_run) -> None:
    root, secrets, _, _ = planted_run
    # params.yaml and the overlay name variables, never values; .git is the empty repo.
    assert find_in_files(root, secrets.values(), skip=[".git"]) == []


def test_no_row_of_the_store_or_of_mlflow_holds_a_secret(planted_run) -> None:
    _, secrets, urls, _ = planted_run
    assert find_in_database(urls["store"], secrets.values()) == []
    # params, metrics, tags, runs, experiments (artifact locations), model versions.
    found = find_in_database(urls["mlflow"], secrets.values())
    assert found == []


def test_no_output_of_the_commands_holds_a_secret(planted_run) -> None:
    _, secrets, _, logs = planted_run
    assert [name for name, value in secrets.items() if value in logs] == []
