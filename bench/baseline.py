"""The same ML work as the default pipeline, written as the one script a person would
otherwise write: the yardstick that `bench/pipeline.py` holds the pipeline's time against.

One process, no DVC, no CLI, no stage processes, no intermediate files, no contract
checks, no lineage hashing and no gates. It does, in order:

1. generate the default data (the project's generator: the same rows);
2. prepare it: drop the direct identifier and exact repeats, cut the time into frames;
3. fit the same features and model (the project's `plan_features` and `fit_model`, which
   are plain scikit-learn) on frames 1-4;
4. pick the cost threshold on frame 5 and measure PR-AUC on frame 6;
5. log the run and the model (skops, signature, input example) to MLflow on SQLite,
   register it and point the `dev` alias at it;
6. score frames 7-12 into SQLite, one transaction per frame, and store their labels;
7. write the same 14 Evidently reports as verify (drift and quality for each scored
   frame and for all of them, each side sampled to `verify.drift_max_rows`), one after
   another.

    python bench/baseline.py                 # the shipped params.yaml
    python bench/baseline.py --root COPY     # a project copy with edited params

Prints one JSON document on stdout: seconds per step and in all, and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This folder holds bench/pipeline.py, which would shadow the `pipeline` package.
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def timed(steps: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    steps[name] = round(time.perf_counter() - started, 2)
    print(f"baseline: {name} {steps[name]} s", file=sys.stderr, flush=True)


def run(root: Path, work: Path) -> dict:
    """Do the work in `work` (MLflow database, artifacts, SQLite store, HTML reports)."""
    started = time.perf_counter()
    steps: dict[str, float] = {}
    with timed(steps, "imports"):
        import mlflow
        import mlflow.sklearn
        import pandas as pd
        from mlflow.models import infer_signature
        from sklearn.metrics import average_precision_score

        from pipeline.config import load_settings
        from pipeline.drift_and_quality import drift_summary, quality_summary
        from pipeline.features import plan_features
        from pipeline.generator import generate
        from pipeline.ingest import assign_frames
        from pipeline.report import choose_threshold
        from pipeline.saved_model import save_options
        from pipeline.train import fit_model, synthetic_example

    settings = load_settings(root)
    contract = settings.contract
    target, time_column = contract.target, contract.time_column
    inputs = settings.model_inputs

    with timed(steps, "generate"):
        data = generate(settings.generator, settings.frames.count)

    with timed(steps, "prepare"):
        data = data.drop(columns=["card_number"])
        content = [c for c in data.columns if c != "transaction_id"]
        data = data[~data.duplicated(subset=content)].dropna().reset_index(drop=True)
        data["frame"] = assign_frames(data, time_column, settings.frames).to_numpy()
        frames = {int(n): part for n, part in data.groupby("frame")}

    def rows_of(numbers: list[int]) -> pd.DataFrame:
        return pd.concat([frames[n] for n in numbers], ignore_index=True)

    split = settings.curate.split
    with timed(steps, "train"):
        train = rows_of(split.train)
        plan = plan_features(settings, train)
        model = fit_model(train, plan, settings)

    with timed(steps, "evaluate"):
        valid, test = rows_of(split.valid), rows_of(split.test)
        valid_scores = model.predict_proba(valid[inputs])[:, 1]
        threshold = choose_threshold(valid[target].to_numpy(), valid_scores, settings.report.cost)
        test_scores = model.predict_proba(test[inputs])[:, 1]
        pr_auc = float(average_precision_score(test[target], test_scores))

    name = settings.registration.model_name
    with timed(steps, "register"):
        uri = f"sqlite:///{work / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.create_experiment(
            "baseline", artifact_location=(work / "mlartifacts").as_uri()
        )
        example = synthetic_example(train[inputs])
        signature = infer_signature(example, model.predict_proba(example))
        with mlflow.start_run(experiment_id=experiment) as active:
            mlflow.log_params({"algorithm": settings.train.algorithm, "rows": len(data)})
            mlflow.log_metrics({"pr_auc": pr_auc, "threshold": threshold})
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                **save_options(model),
            )
        version = mlflow.register_model(f"runs:/{active.info.run_id}/model", name)
        mlflow.MlflowClient().set_registered_model_alias(name, "dev", version.version)

    store = sqlite3.connect(work / "scores.db")
    store.execute("PRAGMA journal_mode=WAL")
    store.execute(
        "CREATE TABLE scores (score_id TEXT PRIMARY KEY, record_id TEXT, frame INTEGER, "
        "score REAL, decision INTEGER, threshold REAL, model_name TEXT, model_version TEXT, "
        "run_id TEXT, scored_at TEXT)"
    )
    store.execute("CREATE TABLE labels (record_id TEXT PRIMARY KEY, label INTEGER)")
    scored: dict[int, pd.DataFrame] = {}
    with timed(steps, "score_and_label"):
        for number in settings.frames.score:
            part = frames[number]
            probability = model.predict_proba(part[inputs])[:, 1]
            decision = (probability >= threshold).astype("int64")
            ids = part["transaction_id"].astype(str).to_numpy()
            now = pd.Timestamp.now(tz="UTC").isoformat()
            with store:
                store.executemany(
                    "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    zip(
                        (os.urandom(16).hex() for _ in range(len(part))),
                        ids,
                        [number] * len(part),
                        probability.tolist(),
                        decision.tolist(),
                        [threshold] * len(part),
                        [name] * len(part),
                        [version.version] * len(part),
                        [active.info.run_id] * len(part),
                        [now] * len(part),
                        strict=True,
                    ),
                )
                store.executemany(
                    "INSERT OR REPLACE INTO labels VALUES (?, ?)",
                    zip(ids, part[target].tolist(), strict=True),
                )
            scored[number] = pd.DataFrame(
                {"label": part[target].to_numpy(), "score": probability, "decision": decision}
            )
    store.close()

    options = settings.verify
    columns = [c for c in contract.features if contract.by_name[c].dtype != "datetime"]
    reports = work / "verify"
    reports.mkdir()
    with timed(steps, "verify_14_reports"):
        reference = rows_of(settings.frames.train)[columns]
        reference = reference.sample(
            n=min(len(reference), options.drift_max_rows), random_state=options.seed
        )
        groups = {str(n): [n] for n in settings.frames.score}
        groups["all"] = list(settings.frames.score)
        for key, members in groups.items():
            current = rows_of(members)[columns]
            current = current.sample(
                n=min(len(current), options.drift_max_rows), random_state=options.seed
            )
            drift_summary(
                reference,
                current,
                columns,
                reports / f"{key}_drift.html",
                max_rows=options.drift_max_rows,
                seed=options.seed,
            )
            quality = pd.concat([scored[n] for n in members], ignore_index=True)
            quality_summary(quality, reports / f"{key}_quality.html")
        written = len(list(reports.glob("*.html")))

    return {
        "algorithm": settings.train.algorithm,
        "rows": len(data),
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
        "pr_auc": round(pr_auc, 4),
        "threshold": threshold,
        "reports": written,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="project whose params to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crispml-baseline-") as folder:
        result = run(args.root.resolve(), Path(folder))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
