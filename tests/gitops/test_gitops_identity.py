"""What a model version is, beyond the commit that built it: lineage, artifact, fallback.

Real parts throughout: git computes the hashes the lineage keys must equal, MLflow (on a
SQLite file) holds real scikit-learn models, and the fallback scores them on real rows
with the paired bootstrap of pipeline.evidence.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ci_harness import copy_project, git

from pipeline import registry
from pipeline.gitops.fallback import choose_fallback
from pipeline.saved_model import artifact_hash

NAME = "crispml-identity"


# --------------------------------------------------------------------------- lineage


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "repo")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "source.json").write_text('{"kind": "generator"}\n')
    git(root, "init", "-q", "-b", "dev")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@x.invalid", "commit", "-qm", "x")
    return root


def test_lineage_keys_are_the_git_hashes_of_the_committed_tree(repo: Path) -> None:
    keys = registry.lineage_keys(repo)
    for path in ("pipeline", "dvc.yaml", "data/source.json"):
        expected = git(repo, "rev-parse", f"HEAD:{path}").stdout.strip()
        assert keys[f"lineage.{path}"] == expected, path
    # params.yaml: the committed blob without its `env:` line, which CI rewrites per job.
    committed = git(repo, "show", "HEAD:params.yaml").stdout
    assert "\nenv: dev\n" in "\n" + committed
    without_env = "".join(
        line for line in committed.splitlines(keepends=True) if not line.startswith("env:")
    )
    hashed = subprocess.run(
        ["git", "hash-object", "--stdin"],
        input=without_env,
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert keys["lineage.params.yaml"] == hashed
    # Python caches are not code.
    (repo / "pipeline" / "__pycache__").mkdir(exist_ok=True)
    (repo / "pipeline" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert registry.lineage_keys(repo) == keys


def test_lineage_ignores_the_env_line_and_nothing_else(repo: Path) -> None:
    before = registry.lineage_keys(repo)
    subprocess.run(["crispml", "env", "use", "prod"], cwd=repo, check=True, capture_output=True)
    assert "env: prod" in (repo / "params.yaml").read_text()
    assert registry.lineage_keys(repo) == before, "CI sets env per environment"
    (repo / "README.md").write_text("docs only\n")
    assert registry.lineage_keys(repo) == before
    with (repo / "pipeline" / "score.py").open("a") as handle:
        handle.write("\n# a code change\n")
    changed = registry.lineage_keys(repo)
    assert changed["lineage.pipeline"] != before["lineage.pipeline"]
    differences = registry.lineage_differences({k: v for k, v in before.items()}, changed)
    assert len(differences) == 1 and differences[0].startswith("pipeline (")
    (repo / "data" / "source.json").write_text('{"kind": "csv", "md5": "1"}\n')
    assert (
        registry.lineage_keys(repo)["lineage.data/source.json"]
        != before["lineage.data/source.json"]
    )


# --------------------------------------------------------------------------- artifacts


def _frame(rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    logit = -4.0 + 2.0 * x1 + 1.0 * x2
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"x1": x1, "x2": x2, "noise": rng.normal(size=rows), "label": y})


def _model(frame: pd.DataFrame, columns: list[str]) -> Any:
    """A fitted model that reads only `columns` of a wider frame, as the project's do."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("columns", ColumnTransformer([("keep", "passthrough", columns)])),
            ("model", LogisticRegression(max_iter=200)),
        ]
    ).fit(frame, frame["label"])


def test_artifact_hash_sees_the_model_not_the_save(tmp_path: Path) -> None:
    import mlflow.sklearn

    frame = _frame()
    good = _model(frame, ["x1", "x2"])
    mlflow.sklearn.save_model(
        good, tmp_path / "a", serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    mlflow.sklearn.save_model(
        good, tmp_path / "b", serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    assert (tmp_path / "a" / "MLmodel").read_text() != (tmp_path / "b" / "MLmodel").read_text()
    assert artifact_hash(tmp_path / "a") == artifact_hash(tmp_path / "b")
    other = _model(frame, ["x1"])
    mlflow.sklearn.save_model(
        other, tmp_path / "c", serialization_format="pickle", pip_requirements=["scikit-learn"]
    )
    assert artifact_hash(tmp_path / "c") != artifact_hash(tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        artifact_hash(tmp_path / "missing")


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    import mlflow
    from mlflow import MlflowClient

    from pipeline.tracking import pointed_at

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    # MLflow's process-wide URIs (and the variables it exports) are put back afterwards.
    with pointed_at(uri):
        mlflow.create_experiment("identity", artifact_location=(base / "artifacts").as_uri())
        mlflow.set_experiment("identity")
        yield uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def _register(client: Any, model: Any, tags: dict[str, str]) -> str:
    import mlflow
    import mlflow.sklearn

    from pipeline.saved_model import save_options

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=NAME,
            # Saved as the pipeline saves models: the loader refuses anything else.
            **save_options(model),
        )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(NAME, version, key, value)
    return version


def test_versions_are_found_by_their_tags(tracking: tuple[str, Any]) -> None:
    _, client = tracking
    frame = _frame()
    model = _model(frame, ["x1", "x2"])
    first = _register(client, model, {"artifact.sha256": "f" * 64, "environment": "dev"})
    second = _register(client, model, {"artifact.sha256": "f" * 64, "environment": "qa"})
    _register(client, model, {"artifact.sha256": "e" * 64, "environment": "dev"})
    found = registry.versions_tagged(client, NAME, **{"artifact.sha256": "f" * 64})
    assert [str(v.version) for v in found] == [second, first]
    dev = registry.versions_tagged(
        client, NAME, **{"artifact.sha256": "f" * 64, "environment": "dev"}
    )
    assert [str(v.version) for v in dev] == [first]
    assert registry.versions_tagged(client, NAME, **{"artifact.sha256": "0" * 64}) == []
    with pytest.raises(ValueError, match="unsafe"):
        registry.versions_tagged(client, NAME, environment="x' or '1'='1")


# --------------------------------------------------------------------------- fallback


def _settings(margin: float = 0.03, min_positives: int = 30) -> Any:
    return SimpleNamespace(
        env="prod",
        registration=SimpleNamespace(model_name=NAME),
        contract=SimpleNamespace(target="label"),
        model_inputs=["x1", "x2", "noise"],
        environment=SimpleNamespace(
            gates=SimpleNamespace(
                registration=SimpleNamespace(max_pr_auc_drop=margin),
                evidence=SimpleNamespace(
                    confidence=0.95, resamples=300, min_positives=min_positives, seed=0
                ),
            )
        ),
    )


@pytest.fixture
def fallback_world(tracking: tuple[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """@prod serves a good model; candidates for @qa: as good, much worse, other lineage.

    The alias history is kept in a store of the test's own.
    """
    from pipeline.registry import move_alias
    from pipeline.store import ScoreStore

    _, client = tracking
    store = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    store.migrate()
    train, test = _frame(seed=1), _frame(seed=2)
    lineage = {"lineage.pipeline": "a" * 40, "lineage.params.yaml": "b" * 40}
    good = _model(train, ["x1", "x2"])
    also_good = _model(_frame(seed=3), ["x1", "x2"])
    bad = _model(train, ["noise"])
    champion = _register(client, good, lineage)
    move_alias(client, store, NAME, "prod", champion, reason="gate passed in prod")
    yield {
        "client": client,
        "store": store,
        "test": test,
        "lineage": lineage,
        "champion": champion,
        "as_good": _register(client, also_good, lineage),
        "worse": _register(client, bad, lineage),
        "other": _register(client, also_good, {**lineage, "lineage.pipeline": "c" * 40}),
    }
    store.dispose()


def test_fallback_needs_the_same_lineage(fallback_world: dict[str, Any]) -> None:
    from pipeline.registry import move_alias

    w = fallback_world
    move_alias(w["client"], w["store"], NAME, "qa", w["other"], reason="gate passed in qa")
    decided = choose_fallback(w["client"], _settings(), "prod", "qa", w["lineage"], w["test"])
    assert decided.used is False
    assert "differs in pipeline (cccccccccccc vs aaaaaaaaaaaa)" in decided.reason
    w["client"].delete_registered_model_alias(NAME, "qa")
    none = choose_fallback(w["client"], _settings(), "prod", "qa", w["lineage"], w["test"])
    assert none.used is False and "@qa holds no version" in none.reason


def test_fallback_is_scored_against_the_champion(fallback_world: dict[str, Any]) -> None:
    from pipeline.registry import move_alias

    w = fallback_world
    move_alias(w["client"], w["store"], NAME, "qa", w["as_good"], reason="gate passed in qa")
    taken = choose_fallback(w["client"], _settings(), "prod", "qa", w["lineage"], w["test"])
    assert taken.used is True and taken.version == w["as_good"]
    assert taken.comparison["verdict"] == "passed" and taken.comparison["positives"] >= 30
    assert f"@qa version {w['as_good']} PR-AUC" in taken.reason
    assert f"vs @prod version {w['champion']}" in taken.reason
    assert taken.lineage == w["lineage"]

    move_alias(w["client"], w["store"], NAME, "qa", w["worse"], reason="gate passed in qa")
    refused = choose_fallback(w["client"], _settings(), "prod", "qa", w["lineage"], w["test"])
    assert refused.used is False and refused.comparison["verdict"] == "failed"
    assert refused.reason.startswith(
        f"the fallback is refused, @prod stays on version {w['champion']}"
    )
    assert "worse beyond the margin 0.0300" in refused.reason

    # Too few positives to tell is not a pass.
    few = choose_fallback(
        w["client"], _settings(min_positives=10_000), "prod", "qa", w["lineage"], w["test"]
    )
    assert few.used is False and few.comparison["verdict"] == "insufficient_evidence"


def test_fallback_without_a_champion_has_nothing_to_compare(
    fallback_world: dict[str, Any],
) -> None:
    from pipeline.registry import move_alias

    w = fallback_world
    move_alias(w["client"], w["store"], NAME, "qa", w["as_good"], reason="gate passed in qa")
    w["client"].delete_registered_model_alias(NAME, "prod")
    taken = choose_fallback(w["client"], _settings(), "prod", "qa", w["lineage"], w["test"])
    assert taken.used is True and taken.comparison is None
    assert "@prod holds no version" in taken.reason


def test_register_falls_back_and_keeps_the_evidence_in_the_history(
    fallback_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """register's fall_back: moves the alias (when not deferred) and says why, twice:
    in the job log and in the alias history."""
    from pipeline.register import fall_back
    from pipeline.registry import alias_history, move_alias

    w = fallback_world
    settings = _settings()
    settings.alias = "prod"
    settings.environment.registry = SimpleNamespace(fallback_alias="qa")
    settings.store_url = w["store"].url
    move_alias(w["client"], w["store"], NAME, "qa", w["worse"], reason="gate passed in qa")
    refused = fall_back(w["client"], settings, w["test"], w["lineage"])
    assert refused["used"] is False
    assert str(w["client"].get_model_version_by_alias(NAME, "prod").version) == w["champion"]
    assert "no fallback to @qa: the fallback is refused" in capsys.readouterr().err

    move_alias(w["client"], w["store"], NAME, "qa", w["as_good"], reason="gate passed in qa")
    deferred = fall_back(w["client"], settings, w["test"], w["lineage"], move=False)
    assert deferred["used"] is True and deferred["event"] is None
    assert str(w["client"].get_model_version_by_alias(NAME, "prod").version) == w["champion"]
    used = fall_back(w["client"], settings, w["test"], w["lineage"])
    assert used["used"] is True and used["version"] == w["as_good"]
    assert str(w["client"].get_model_version_by_alias(NAME, "prod").version) == w["as_good"]
    err = capsys.readouterr().err
    assert f"FALLBACK: @prod now serves version {w['as_good']}" in err
    event = alias_history(w["client"], w["store"], NAME, "prod")[-1]
    assert event["reason"].startswith("fallback: own model failed its gate")
    assert f"@qa version {w['as_good']} PR-AUC" in event["reason"]
