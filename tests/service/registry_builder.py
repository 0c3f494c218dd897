"""Build a real MLflow registry with two versions of a small model, for the service tests.

Run as a script in its own process (`python registry_builder.py <folder>`), so that
MLflow's global state (tracking URI, active runs) never leaks into the pytest process.

It uses the project's own pieces - the generator, the contract, the feature plan
and transformer (`pipeline.features`), `fit_model`-style Pipelines, skops trusted
types, `move_alias` - and
registers the versions with the tags `crispml register` sets (threshold, git_commit,
run_id, pr_auc). Version 1 holds the aliases; version 2 waits for a promotion test.
It writes `registry.json` (what was built) and `records.json` (records to score, with
their true labels) into the folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAIN_ROOT = Path(__file__).resolve().parents[2]
# One alias per kind of test that moves it, so that moving one never disturbs another.
ALIASES = ("dev", "reload", "admin")
# Different thresholds make the serving version visible in every answer.
VERSIONS = ({"C": 0.5, "threshold": 0.5}, {"C": 0.05, "threshold": 0.3})


def build(folder: Path) -> dict:
    """The registry in `folder`; MLflow's process-wide URIs are put back afterwards."""
    from pipeline.tracking import pointed_at

    with pointed_at(f"sqlite:///{folder / 'mlflow.db'}"):
        return _build(folder)


def _build(folder: Path) -> dict:
    import mlflow
    import mlflow.sklearn
    from sklearn.metrics import average_precision_score
    from sklearn.pipeline import Pipeline

    from pipeline import registry
    from pipeline.config import Generator, load_settings
    from pipeline.features import build_features, plan_features
    from pipeline.generator import generate
    from pipeline.saved_model import save_options
    from pipeline.train import make_estimator

    settings = load_settings(MAIN_ROOT)
    contract = settings.contract
    inputs = settings.model_inputs
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = mlflow.create_experiment(
        "service-tests", artifact_location=(folder / "mlartifacts").as_uri()
    )
    data = generate(Generator(rows=4000, fraud_rate=0.05, seed=3), settings.frames.count)
    train = data.iloc[:3000]
    later = data.iloc[3000:]
    name = settings.registration.model_name
    versions = []
    for spec in VERSIONS:
        plan = plan_features(settings, train)
        features = build_features(plan, "logistic_regression").fit(train[inputs])
        estimator = make_estimator("logistic_regression", {"C": spec["C"], "max_iter": 500}, 0)
        estimator.fit(features.transform(train[inputs]), train[contract.target])
        model = Pipeline([("features", features), ("model", estimator)])
        pr_auc = float(
            average_precision_score(
                later[contract.target], model.predict_proba(later[inputs])[:, 1]
            )
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=name,
                input_example=train[inputs].head(2),
                **save_options(model),
            )
        version = str(info.registered_model_version)
        tags = {
            "threshold": repr(spec["threshold"]),
            "git_commit": f"commit-v{version}",
            "run_id": run.info.run_id,
            "pr_auc": repr(pr_auc),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        versions.append({"version": version, "run_id": run.info.run_id, **spec})
    from pipeline.store import ScoreStore

    # The alias history's store: the one Registry.history_url (conftest.py) names.
    history = ScoreStore(f"sqlite:///{folder / 'aliases.db'}")
    history.migrate()
    for alias in ALIASES:
        registry.move_alias(
            client, history, name, alias, versions[0]["version"], reason="service tests"
        )
    history.dispose()
    id_column = contract.id_column
    columns = [id_column, *inputs]
    records = [
        {
            "record": {k: (str(v) if k == id_column else float(v)) for k, v in row.items()},
            "label": int(label),
        }
        for row, label in zip(
            later[columns].to_dict("records"), later[contract.target], strict=True
        )
    ]
    (folder / "records.json").write_text(json.dumps(records))
    built = {
        "tracking_uri": uri,
        "model_name": name,
        "aliases": list(ALIASES),
        "versions": versions,
    }
    (folder / "registry.json").write_text(json.dumps(built, indent=2))
    return built


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
