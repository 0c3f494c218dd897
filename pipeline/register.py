"""Register (CRISP-DM: deployment): MLflow run, model version, quality gate, alias.

The gate is a pure function of numbers, so it is tested without MLflow. The alias of
the environment moves only when the gate passes; otherwise the current holder keeps
serving and the rejected version carries the verdict as tags, for the audit trail.

With CRISPML_DEFER_ALIAS=1 (CI sets it) the stage records its decision instead of moving
the alias: the promote job of an environment branch's pipeline moves it (`crispml alias
promote`), and a merge request pipeline never does.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

DEFER_ALIAS_ENV = "CRISPML_DEFER_ALIAS"


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate_pr_auc: float | None = None
    champion_pr_auc: float | None = None
    champion_version: str | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": "passed" if self.passed else "failed"}


def evaluate_gate(
    candidate_pr_auc: float,
    min_pr_auc: float | None,
    max_pr_auc_drop: float,
    champion_pr_auc: float | None = None,
    champion_version: str | None = None,
    *,
    candidate_roc_auc: float | None = None,
    min_roc_auc: float | None = None,
    other_lineage: str | None = None,
) -> GateVerdict:
    """Pass when the candidate clears every floor and is no worse than the champion allows.

    `other_lineage` says the alias holder was trained on another contract: comparing
    PR-AUCs across datasets means nothing, so the gate refuses and says why.
    """
    reasons = []
    if other_lineage:
        reasons.append(other_lineage)
    if min_pr_auc is not None and not candidate_pr_auc >= min_pr_auc:  # also catches NaN
        reasons.append(f"PR-AUC {candidate_pr_auc:.4f} is below the minimum {min_pr_auc:.4f}")
    if min_roc_auc is not None and not (candidate_roc_auc or float("nan")) >= min_roc_auc:
        reasons.append(f"ROC-AUC {candidate_roc_auc:.4f} is below the minimum {min_roc_auc:.4f}")
    if champion_pr_auc is not None and not other_lineage:
        drop = champion_pr_auc - candidate_pr_auc
        if drop > max_pr_auc_drop:
            reasons.append(
                f"PR-AUC {candidate_pr_auc:.4f} is {drop:.4f} below version {champion_version} "
                f"({champion_pr_auc:.4f}); the allowed drop is {max_pr_auc_drop:.4f}"
            )
    return GateVerdict(
        passed=not reasons,
        reasons=reasons,
        candidate_pr_auc=candidate_pr_auc,
        champion_pr_auc=None if other_lineage else champion_pr_auc,
        champion_version=champion_version,
    )


def input_schema(signature) -> list[dict]:
    """A model's input columns and types, from its MLflow signature."""
    return [] if signature is None or signature.inputs is None else signature.inputs.to_dict()


def lineage_mismatch(
    candidate: list[dict], champion: list[dict], name: str, version: str
) -> str | None:
    """One line saying why the champion belongs to another dataset, or None when it does not."""
    if candidate == champion:
        return None
    have = {c.get("name"): c.get("type") for c in champion}
    want = {c.get("name"): c.get("type") for c in candidate}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    retyped = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    differences = (
        "; ".join(
            part
            for part in (
                f"it lacks {missing[:5]}" if missing else "",
                f"it has {extra[:5]} instead" if extra else "",
                f"other types for {retyped[:5]}" if retyped else "",
            )
            if part
        )
        or "another column order"
    )
    return (
        f"version {version} of {name!r} was trained on another contract ({differences}): "
        "PR-AUCs of different datasets are not compared; give this dataset its own "
        "register.model_name in params.yaml"
    )


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """Only finite numbers go to MLflow; it rejects NaN on some stores."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):
            out[key] = float(value)
    return out


def _champion_pr_auc(client, settings, champion, test) -> float | None:
    """Re-score the test frame with the champion, so both models are judged on the same rows.

    A stored metric from the champion's own run may come from other data; it is the
    fallback only when the champion cannot score the current inputs (a changed contract).
    """
    import mlflow.sklearn
    from sklearn.metrics import average_precision_score

    from pipeline.train import predict_proba

    contract = settings.contract
    try:
        model = mlflow.sklearn.load_model(
            f"models:/{settings.registration.model_name}/{champion.version}"
        )
        scores = predict_proba(model, test, settings.model_inputs)
        return float(average_precision_score(test[contract.target].to_numpy(), scores))
    except Exception:
        recorded = champion.tags.get("pr_auc")
        return float(recorded) if recorded else None


def fall_back(
    client, name: str, alias: str, fallback_alias: str, commit: str, move: bool = True
) -> dict:
    """Point `alias` at the version `fallback_alias` validated for this same commit, if any.

    Only the same commit qualifies: a model validated for other code would put untested
    code paths into production under a passing label.
    """
    import sys

    from pipeline import registry

    holder = registry.alias_holder(client, name, fallback_alias)
    if holder is None or holder.tags.get("git_commit") != commit:
        found = None if holder is None else holder.tags.get("git_commit")
        message = (
            f"@{alias}: own model failed its gate and @{fallback_alias} holds no model for commit "
            f"{commit[:12]} (it holds {found and found[:12]}); @{alias} stays where it was"
        )
        print(f"warning: {message}", file=sys.stderr)
        return {"used": False, "reason": message}
    event = None
    if move:
        event = registry.move_alias(
            client,
            name,
            alias,
            str(holder.version),
            reason=(
                f"fallback: own model failed its gate; serving the @{fallback_alias} model "
                "of this commit"
            ),
        )
    print(
        f"FALLBACK: @{alias} {'now serves' if move else 'is to serve'} version {holder.version}, "
        f"validated in @{fallback_alias} for commit {commit[:12]}, because this environment's "
        "own model failed its gate" + ("" if move else " (the promote job moves the alias)"),
        file=sys.stderr,
    )
    return {
        "used": True,
        "version": str(holder.version),
        "from_alias": fallback_alias,
        "event": event,
    }


def _log_params(params: dict[str, str]) -> None:
    import mlflow

    items = sorted(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
        mlflow.log_params({k: v[:6000] for k, v in items[start : start + 100]})


def run(settings) -> dict:
    """Entry point: log the run, register the version, apply the gate, maybe move the alias."""
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import Model

    from pipeline import registry, tracking
    from pipeline.io import read_json, write_json
    from pipeline.layout import Layout
    from pipeline.perf import read_perf
    from pipeline.train import pip_requirements, trusted_types

    layout = Layout(settings.root)
    client = tracking.configure(settings)
    experiment_id = tracking.ensure_experiment(settings)
    name, alias, env = settings.registration.model_name, settings.alias, settings.env
    metrics = read_json(layout.metrics)
    commit = tracking.git_commit(settings.root)
    gate_params = settings.environment.gates.registration

    test = pd.read_parquet(layout.curated / "test.parquet")
    saved = Model.load(str(layout.model))
    champion = registry.alias_holder(client, name, alias)
    other_lineage = None
    if champion is not None:
        from mlflow.models import get_model_info

        champion_signature = get_model_info(f"models:/{name}/{champion.version}").signature
        other_lineage = lineage_mismatch(
            input_schema(saved.signature),
            input_schema(champion_signature),
            name,
            str(champion.version),
        )
    champion_pr_auc = (
        _champion_pr_auc(client, settings, champion, test)
        if champion is not None and other_lineage is None
        else None
    )
    verdict = evaluate_gate(
        metrics["pr_auc"],
        gate_params.min_pr_auc,
        gate_params.max_pr_auc_drop,
        champion_pr_auc,
        str(champion.version) if champion else None,
        candidate_roc_auc=metrics.get("roc_auc"),
        min_roc_auc=gate_params.min_roc_auc,
        other_lineage=other_lineage,
    )
    if other_lineage:
        import sys

        print(f"register gate: {other_lineage}", file=sys.stderr)

    model = mlflow.sklearn.load_model(str(layout.model))
    example = saved.load_input_example(str(layout.model))
    tags = {
        "git_commit": commit,
        "git_dirty": str(tracking.git_dirty(settings.root)),
        "environment": env,
        "algorithm": settings.train.algorithm,
        **{f"dvc.{path}": md5 for path, md5 in tracking.dvc_hashes(settings.root).items()},
        **{f"runtime.{k}": v for k, v in tracking.runtime_facts().items()},
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{env}-{settings.train.algorithm}-{commit[:8]}"
    ) as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        _log_params(settings.flat_params())
        mlflow.log_metrics(numeric_metrics(metrics))
        mlflow.log_metrics({f"valid_{k}": v for k, v in numeric_metrics(metrics["valid"]).items()})
        for stage, figures in read_perf(layout.perf).items():
            mlflow.log_metrics(
                {f"perf_{stage}_{k}": v for k, v in numeric_metrics(figures).items()}
            )
        for path in (layout.metrics, layout.slices, layout.privacy_report, layout.ingest_report):
            if path.is_file():
                mlflow.log_artifact(str(path), "reports")
        if layout.plots.is_dir():
            mlflow.log_artifacts(str(layout.plots), "reports/plots")
        mlflow.log_dict(verdict.as_dict(), "reports/gate.json")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=saved.signature,
            input_example=example,
            registered_model_name=name,
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=trusted_types(model),
            pip_requirements=pip_requirements(),
        )
        version = str(info.registered_model_version)

    version_tags = {
        "environment": env,
        "git_commit": commit,
        "run_id": run_id,
        "threshold": repr(float(metrics["threshold"])),
        "pr_auc": repr(float(metrics["pr_auc"])),
        "algorithm": settings.train.algorithm,
        f"gate.{env}": verdict.as_dict()["verdict"],
        f"gate.{env}.reasons": "; ".join(verdict.reasons) or "none",
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    defer = os.environ.get(DEFER_ALIAS_ENV) == "1"
    moved, fallback, decided = None, None, None
    if verdict.passed:
        decided = version
        if not defer:
            reason = f"gate passed in {env}"
            moved = registry.move_alias(client, name, alias, version, reason=reason)
    elif settings.environment.registry.fallback_alias and not other_lineage:
        fallback_alias = settings.environment.registry.fallback_alias
        fallback = fall_back(client, name, alias, fallback_alias, commit, move=not defer)
        moved = fallback.get("event")
        if fallback.get("used"):
            decided = str(fallback["version"])
    # Deferred, `serving` is what the alias will hold once promoted, so that score and
    # verify judge the model this environment is about to serve.
    if defer and decided is not None:
        serving = client.get_model_version(name, decided)
    elif other_lineage and not verdict.passed:
        # The holder cannot score this contract's records: nothing serves this data.
        serving = None
    else:
        serving = registry.alias_holder(client, name, alias)
    result = {
        "model_name": name,
        "candidate_version": version,
        "candidate_run_id": run_id,
        "alias": alias,
        "alias_moved": moved is not None,
        "alias_deferred": defer,
        "gate": verdict.as_dict(),
        "fallback": fallback,
        "serving": None
        if serving is None
        else {
            "version": str(serving.version),
            "run_id": serving.run_id,
            "threshold": float(serving.tags.get("threshold", metrics["threshold"])),
            "pr_auc": float(serving.tags["pr_auc"]) if "pr_auc" in serving.tags else None,
            "git_commit": serving.tags.get("git_commit", commit),
        },
        "tracking_uri": settings.tracking_uri.split("@")[-1],
    }
    write_json(layout.gate, {"passed": verdict.passed, **verdict.as_dict(), "version": version})
    write_json(layout.registered, result)
    return result
