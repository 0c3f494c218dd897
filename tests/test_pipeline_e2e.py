"""The real thing: `dvc repro` over all nine stages on a tiny copy of the project."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import copy_project

    root = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "CRISPML_STORE_URL")}
    os.environ["CRISPML_GIT_COMMIT"] = "e2e0" * 10
    try:
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro"]):
            run(cmd, root)
        yield root
    finally:
        os.environ.pop("CRISPML_GIT_COMMIT", None)
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value


def _store(root: Path):
    from pipeline.config import load_settings
    from pipeline.store import ScoreStore

    return ScoreStore(load_settings(root).store_url)


def test_every_stage_left_its_outputs(reproduced: Path) -> None:
    metrics = json.loads((reproduced / "reports" / "metrics.json").read_text())
    assert 0 < metrics["pr_auc"] <= 1 and 0 < metrics["threshold"] < 1
    for name in ("precision_recall.csv", "roc.csv", "confusion.csv", "calibration.csv"):
        assert (reproduced / "reports" / "plots" / name).stat().st_size > 0
    verify = json.loads((reproduced / "reports" / "verify.json").read_text())
    assert sorted(verify["frames"], key=int) == [str(n) for n in range(7, 13)]
    for frame in range(7, 13):
        assert verify["frames"][str(frame)]["labeled_rows"] > 0
        for kind in ("drift", "quality"):
            html = (reproduced / "reports" / "verify" / f"frame_{frame}_{kind}.html").read_text()
            assert "<html" in html.lower()
    # The generator drifts these columns from frame 10 on; verify must flag every one of
    # them there. (Tiny night frames can flag noise, so no claim is made about 7-9.)
    drifted = {"V1", "V2", "V3", "V5", "V6", "V8", "Amount"}
    for frame in (10, 11, 12):
        assert drifted <= set(verify["frames"][str(frame)]["drifted"]), frame
    assert drifted <= set(verify["overall"]["drifted"])
    privacy = json.loads((reproduced / "reports" / "privacy.json").read_text())
    assert privacy["k_anonymity"] >= 5 and privacy["dropped_columns"] == ["card_number"]


def test_every_scored_row_is_stored_once_with_lineage(reproduced: Path) -> None:
    import pandas as pd

    receipts = sum(
        len(pd.read_parquet(p)) for p in (reproduced / "data" / "scored").glob("*.parquet")
    )
    store = _store(reproduced)
    try:
        assert store.count_scores(environment="dev", channel="batch") == receipts > 0
        registered = json.loads((reproduced / "reports" / "registered.json").read_text())
        joined = store.scores_with_labels("dev", labeled_only=True)
        assert len(joined) == receipts
        assert set(joined["model_version"]) == {registered["serving"]["version"]}
        row = store.get_score(joined["score_id"].iloc[0])
        assert row["git_commit"] == "e2e0" * 10 and row["environment"] == "dev"
        assert row["run_id"] == registered["serving"]["run_id"]
        # Scoring a frame again adds nothing.
        run(["crispml", "score", "--frame", "7"], reproduced)
        run(["crispml", "label", "--frame", "7"], reproduced)
        assert store.count_scores(environment="dev") == receipts
    finally:
        store.dispose()


def test_the_registry_alias_names_environment_and_commit(reproduced: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{reproduced / 'mlflow.db'}"
    # The registry URI too: without it MLflow falls back to MLFLOW_REGISTRY_URI, which
    # any in-process set_registry_uri of an earlier test may have exported.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("crispml-fraud", "dev")
    assert version.tags["environment"] == "dev"
    assert version.tags["git_commit"] == "e2e0" * 10
    assert version.tags["gate.dev"] == "passed"
    run_data = client.get_run(version.run_id).data
    assert "pr_auc" in run_data.metrics and "perf_train_wall_seconds" in run_data.metrics
    assert run_data.tags["environment"] == "dev"
    assert any(key.startswith("dvc.data/") for key in run_data.tags)


def test_a_fresh_clone_with_committed_receipts_fills_its_own_store(reproduced: Path) -> None:
    """Committed receipts must not stand in for a store that has never seen a row.

    A fresh clone keeps what git tracks (dvc.lock, the uncached receipts) and lacks the
    rest: the DVC outputs, the MLflow database and the score store.
    """
    import shutil

    for path in (
        "data/ingested",
        "data/prepared",
        "data/curated",
        "data/models",
        "data/scored",
        "data/store",
        "mlflow.db",
        "mlartifacts",
        ".dvc/cache",
    ):
        target = reproduced / path
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    run(["dvc", "repro"], reproduced)
    store = _store(reproduced)
    try:
        labelled = store.scores_with_labels("dev", labeled_only=True)
        assert len(labelled) == store.count_scores(environment="dev") > 0
    finally:
        store.dispose()
    verify = json.loads((reproduced / "reports" / "verify.json").read_text())
    assert verify["overall"]["labeled_rows"] == len(labelled)


def test_second_repro_is_a_no_op_and_plots_render(reproduced: Path) -> None:
    fingerprint = (reproduced / "data" / "source.json").read_bytes()
    result = run(["dvc", "repro"], reproduced)
    # The source stage fingerprints the data on every repro (it is always_changed, see
    # dvc.yaml); it must find nothing new, and no other stage may run.
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'source':"], ran
    assert (reproduced / "data" / "source.json").read_bytes() == fingerprint
    status = run(["dvc", "status"], reproduced).stdout
    assert [line.strip() for line in status.splitlines() if line.strip()] == [
        "source:",
        "always changed",
    ], status
    out = reproduced / "plots_out"
    run(["dvc", "plots", "show", "-o", str(out)], reproduced)
    page = (out / "index.html").read_text()
    for title in ("Precision-recall curve", "ROC curve", "Confusion matrix", "Calibration"):
        assert title in page


def _file_digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_registered_model_is_the_artifact_train_wrote(reproduced: Path, tmp_path) -> None:
    """Byte for byte, MLmodel included: register logs train's folder, never a re-save.

    Downloaded by MLflow's own CLI in a process of its own: this process's MLflow keeps
    a store per URI, and an earlier test replaced the database file under it.
    """
    import sys

    from pipeline.registry import ARTIFACT_TAG
    from pipeline.saved_model import artifact_hash

    uri = f"sqlite:///{reproduced / 'mlflow.db'}"
    script = (
        "import json, sys, mlflow; from mlflow import MlflowClient\n"
        "client = MlflowClient()\n"
        "version = client.get_model_version_by_alias('crispml-fraud', 'dev')\n"
        "path = mlflow.artifacts.download_artifacts("
        "artifact_uri='models:/crispml-fraud@dev', dst_path=sys.argv[1])\n"
        "print(json.dumps({'path': path, 'tags': version.tags}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "registered")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    trained = _file_digests(reproduced / "data" / "models" / "model")
    registered = _file_digests(Path(answer["path"]))
    # MLflow adds one file of its own when it downloads a registered version.
    registered.pop("registered_model_meta", None)
    assert trained and registered == trained
    # The receipt and the version's tag name the same artifact.
    receipt = json.loads((reproduced / "reports" / "registered.json").read_text())
    assert receipt["artifact_sha256"] == artifact_hash(reproduced / "data" / "models" / "model")
    assert answer["tags"][ARTIFACT_TAG] == receipt["artifact_sha256"]


def test_mlflow_serves_the_registered_model_without_crispml(reproduced: Path, tmp_path) -> None:
    """`mlflow models serve -m models:/<name>@dev` from a fresh venv that has no crispml.

    The venv gets the locked third-party packages only (pip's cache makes that quick
    after the project's own install); the server runs outside the project folder, so
    `pipeline` cannot be imported from the working directory either.
    """
    import socket
    import sys
    import time
    import urllib.request

    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(lock),
        ],
        tmp_path,
    )
    probe = subprocess.run(
        [str(python), "-c", "import pipeline"], cwd=tmp_path, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'pipeline'" in probe.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"sqlite:///{reproduced / 'mlflow.db'}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}",
    }
    command = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", "models:/crispml-fraud@dev"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        example = json.loads(
            (reproduced / "data" / "models" / "model" / "serving_input_example.json").read_text()
        )
        body = json.dumps(example).encode()
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
                    break
            except OSError:
                time.sleep(1)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
        predictions = answer["predictions"]
        assert len(predictions) == 5 and all(len(row) == 2 for row in predictions)
        assert all(abs(sum(row) - 1.0) < 1e-6 for row in predictions)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
