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

import numpy as np

from pipeline.evidence import FAILED, INSUFFICIENT, PASSED, Comparison
from pipeline.redaction import redact_params, redact_url

DEFER_ALIAS_ENV = "CRISPML_DEFER_ALIAS"
# Where a run keeps the model it registers (runs:/<run>/model).
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate_pr_auc: float | None = None
    champion_pr_auc: float | None = None
    champion_version: str | None = None
    # passed | failed | insufficient_evidence: the third is never a silent pass.
    verdict: str = "passed"
    positives: int | None = None
    comparison: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_gate(
    candidate_pr_auc: float,
    min_pr_auc: float | None,
    *,
    comparison: Comparison | None = None,
    champion_version: str | None = None,
    candidate_roc_auc: float | None = None,
    min_roc_auc: float | None = None,
    other_lineage: str | None = None,
    positives: int | None = None,
    min_positives: int = 1,
) -> GateVerdict:
    """Pass when the candidate clears every floor and is not worse than the champion.

    The champion check is `comparison`, a paired bootstrap on the same rows (see
    pipeline.evidence): a point difference of a few hundredths on 40 positives is
    noise, so only a difference beyond the margin at the stated confidence fails.
    Floors are judged on the point estimate, and only when the gate rows hold
    `min_positives` positives; below that the verdict is "insufficient_evidence",
    which does not promote. `other_lineage` says the alias holder was trained on
    another contract: comparing PR-AUCs across datasets means nothing, so the gate
    refuses and says why.
    """
    reasons: list[str] = []
    insufficient = False
    if other_lineage:
        reasons.append(other_lineage)
    if positives is not None and positives < min_positives:
        insufficient = True
        reasons.append(
            f"not enough evidence: the gate frames hold {positives} positives, at least "
            f"{min_positives} are needed (gates.evidence.min_positives)"
        )
    else:
        if min_pr_auc is not None and not candidate_pr_auc >= min_pr_auc:  # also catches NaN
            reasons.append(f"PR-AUC {candidate_pr_auc:.4f} is below the minimum {min_pr_auc:.4f}")
        if min_roc_auc is not None and not (candidate_roc_auc or float("nan")) >= min_roc_auc:
            reasons.append(
                f"ROC-AUC {candidate_roc_auc:.4f} is below the minimum {min_roc_auc:.4f}"
            )
    if comparison is not None and not other_lineage:
        if comparison.verdict == INSUFFICIENT:
            insufficient = True
        if not comparison.passed:
            reasons.append(f"against version {champion_version}: {comparison.reason}")
    verdict = PASSED if not reasons else INSUFFICIENT if insufficient else FAILED
    return GateVerdict(
        passed=not reasons,
        reasons=reasons,
        candidate_pr_auc=candidate_pr_auc,
        champion_pr_auc=None if other_lineage or comparison is None else comparison.champion_pr_auc,
        champion_version=champion_version,
        verdict=verdict,
        positives=positives,
        comparison=None if other_lineage or comparison is None else comparison.as_dict(),
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


def gate_rows(layout) -> tuple:
    """The rows every model is judged on: the validation and test frames, together.

    Neither is seen by fitting (the threshold is picked on validation, but PR-AUC does
    not depend on it), and together they hold twice the positives of the test frame
    alone, which the bootstrap interval needs.
    """
    import pandas as pd

    return pd.concat(
        [pd.read_parquet(layout.curated / f"{name}.parquet") for name in ("valid", "test")],
        ignore_index=True,
    )


def champion_scores(settings, version: str, rows) -> np.ndarray | None:
    """The champion's scores on the gate rows, so both models are judged on the same rows.

    None when the champion cannot score the current inputs (a changed contract with
    the same columns' names): the gate then has no comparison and says so.
    """
    from pipeline.saved_model import load_model
    from pipeline.train import predict_proba

    try:
        model = load_model(f"models:/{settings.registration.model_name}/{version}")
        return predict_proba(model, rows, settings.model_inputs)
    except Exception as exc:  # the reason goes into the gate verdict, not a traceback
        import sys

        print(f"warning: version {version} cannot score the gate rows: {exc}", file=sys.stderr)
        return None


def fall_back(client, settings, rows, lineage: dict[str, str], move: bool = True) -> dict:
    """Point the alias at the model its fallback alias validated, when it is the same model
    line and not worse than what serves now (pipeline.gitops.fallback.choose_fallback).

    "The same" is the same pipeline code, params, dvc.yaml and data (git hashes, recorded
    as `lineage.*` tags at registration), not the same commit: a README-only commit keeps
    the @qa model eligible, a code, params or data change does not. The fallback model is
    then scored against the current holder on these gate rows (the register gate's paired
    bootstrap and margin) and refused when worse beyond the margin. Returns
    reports/registered.json's `fallback` (pipeline.registered.Fallback, as a dict).
    """
    import sys

    from pipeline import registry
    from pipeline.gitops.fallback import choose_fallback

    name, alias = settings.registration.model_name, settings.alias
    fallback_alias = settings.environment.registry.fallback_alias
    # The holder the fallback is judged against: the move below is a compare-and-set on it.
    seen = registry.alias_holder(client, name, alias)
    decided = choose_fallback(client, settings, alias, fallback_alias, lineage, rows)
    if not decided.used:
        print(
            f"warning: @{alias}: own model failed its gate; no fallback to @{fallback_alias}: "
            f"{decided.reason}",
            file=sys.stderr,
        )
        return decided.model_dump(mode="json")
    event = None
    if move:
        reason = (
            f"fallback: own model failed its gate; serving the @{fallback_alias} model of the "
            f"same code, params and data; {decided.reason}"
        )
        with registry.history_store(settings) as store:
            event = registry.move_alias(
                client,
                store,
                name,
                alias,
                str(decided.version),
                reason=reason,
                expected=None if seen is None else str(seen.version),
            )
    print(
        f"FALLBACK: @{alias} {'now serves' if move else 'is to serve'} version "
        f"{decided.version}, validated in @{fallback_alias} for the same code, params and data, "
        f"because this environment's own model failed its gate; {decided.reason}"
        + ("" if move else " (the promote job moves the alias)"),
        file=sys.stderr,
    )
    return {**decided.model_dump(mode="json"), "event": event}


def _log_params(params: dict[str, str]) -> None:
    import mlflow

    items = sorted(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
        mlflow.log_params({k: v[:6000] for k, v in items[start : start + 100]})


def run(settings) -> dict:
    """Entry point: log the run, register the version, apply the gate, maybe move the alias."""
    import sys

    import mlflow
    from mlflow.models import Model
    from sklearn.metrics import roc_auc_score

    from pipeline import registry, tracking
    from pipeline.evidence import Evidence, compare_models, pr_auc
    from pipeline.io import read_json, write_json
    from pipeline.layout import Layout
    from pipeline.perf import read_perf
    from pipeline.registered import Registered
    from pipeline.saved_model import artifact_hash, load_model
    from pipeline.train import predict_proba

    layout = Layout(settings.root)
    client = tracking.configure(settings)
    experiment_id = tracking.ensure_experiment(settings)
    name, alias, env = settings.registration.model_name, settings.alias, settings.env
    metrics = read_json(layout.metrics)
    commit = tracking.git_commit(settings.root)
    gate_params = settings.environment.gates.registration

    rows = gate_rows(layout)
    y = rows[settings.contract.target].to_numpy().astype(int)
    # load_model refuses any type outside saved_model.TRUSTED_TYPES: the same check
    # train's save made, so the artifact registered below is one that loads safely.
    model = load_model(layout.model)
    candidate_scores = predict_proba(model, rows, settings.model_inputs)
    evidence = Evidence.of(settings)
    candidate_pr_auc = pr_auc(y, candidate_scores)
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
    comparison = None
    if champion is not None and other_lineage is None:
        held = champion_scores(settings, str(champion.version), rows)
        if held is not None:
            comparison = compare_models(
                y,
                candidate_scores,
                held,
                gate_params.max_pr_auc_drop,
                evidence,
                names=("candidate", f"version {champion.version}"),
            )
    verdict = evaluate_gate(
        candidate_pr_auc,
        gate_params.min_pr_auc,
        comparison=comparison,
        champion_version=str(champion.version) if champion else None,
        candidate_roc_auc=float(roc_auc_score(y, candidate_scores))
        if 0 < y.sum() < len(y)
        else None,
        min_roc_auc=gate_params.min_roc_auc,
        other_lineage=other_lineage,
        positives=int(y.sum()),
        min_positives=evidence.min_positives,
    )
    print(
        f"register gate: {verdict.verdict}; PR-AUC {candidate_pr_auc:.4f} on the validation and "
        f"test frames ({int(y.sum())} positives)"
        + "".join(f"\n  - {reason}" for reason in verdict.reasons)
        + (f"\n  - {comparison.reason}" if comparison is not None and comparison.passed else ""),
        file=sys.stderr,
    )
    # What this model is, beyond the commit: its artifact and its lineage (git hashes of
    # code, params, dvc.yaml and data). An identical artifact already registered for this
    # environment is reused rather than registered again (a re-run, a cache hit).
    artifact = artifact_hash(layout.model)
    lineage = registry.lineage_keys(settings.root)
    same = registry.versions_tagged(
        client, name, **{registry.ARTIFACT_TAG: artifact, "environment": env}
    )
    reused = same[0] if same else None
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
        _log_params(redact_params(settings.flat_params()))
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
        if reused is not None:
            version = str(reused.version)
            mlflow.set_tag("reused_version", version)
            print(
                f"register: the model artifact ({artifact[:12]}) is version {version}'s, "
                f"registered for {env} before: reusing it instead of registering it again",
                file=sys.stderr,
            )
        else:
            # The bytes train wrote and DVC hashed, not a re-serialisation of them: the
            # registered model is the one the pipeline tested.
            mlflow.log_artifacts(str(layout.model), MODEL_ARTIFACT)
            registered = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", name)
            version = str(registered.version)

    version_tags = {
        "environment": env,
        "git_commit": commit,
        "run_id": run_id,
        "threshold": repr(float(metrics["threshold"])),
        "pr_auc": repr(float(metrics["pr_auc"])),
        "gate_pr_auc": repr(candidate_pr_auc),
        "algorithm": settings.train.algorithm,
        f"gate.{env}": verdict.verdict,
        f"gate.{env}.reasons": "; ".join(verdict.reasons) or "none",
        registry.ARTIFACT_TAG: artifact,
        **lineage,
    }
    if reused is not None and "first_git_commit" not in reused.tags:
        # The tags say what the version was last validated for; where it came from stays.
        version_tags["first_git_commit"] = reused.tags.get("git_commit", "unknown")
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    defer = os.environ.get(DEFER_ALIAS_ENV) == "1"
    moved, fallback, decided = None, None, None
    if verdict.passed:
        decided = version
        if not defer:
            reason = f"gate passed in {env}"
            with registry.history_store(settings) as store:
                moved = registry.move_alias(
                    client,
                    store,
                    name,
                    alias,
                    version,
                    reason=reason,
                    expected=str(champion.version) if champion else None,
                    git_commit=commit,
                )
    elif settings.environment.registry.fallback_alias and not other_lineage:
        fallback = fall_back(client, settings, rows, lineage, move=not defer)
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
            # Model age, for staleness in verify and the service: when it was registered.
            "created_at": serving.creation_timestamp / 1000.0,
        },
        "tracking_uri": redact_url(settings.tracking_uri),
        # The holder the gate judged against: promote compares and sets on it.
        "alias_seen": {"alias": alias, "version": str(champion.version) if champion else None},
        "artifact_sha256": artifact,
        "reused_version": reused is not None,
    }
    receipt = Registered.parse(result, str(layout.registered))
    write_json(layout.gate, {"passed": verdict.passed, **verdict.as_dict(), "version": version})
    receipt.write(layout.registered)
    return receipt.as_dict()
