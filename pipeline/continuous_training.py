"""Continuous training (CT): retrain on a rolling window of the newest labelled frames.

The branch pipeline trains on the fixed `frames.train`; retraining on those same frames
learns nothing new. CT instead takes the newest `continuous_training.window_frames`
frames that have ground truth: the newest `test_frames` judge the candidate against
the champion (the model the alias serves), the `valid_frames` before them choose the
threshold, the rest train. A window with too few labels is refused, with the counts.

The core is pure (DataFrames and numbers in, a window, a fitted candidate or a verdict
out) and is shared by the scheduled CI job (`run`, `crispml ci continuous-training`)
and by `crispml replay` (pipeline/replay.py), which drives it day by day. The edges
(MLflow registration, the alias, the score store) are the small functions at the bottom.

A candidate is promoted only when the paired bootstrap of `pipeline.evidence` says it
is not worse than the champion by more than `gates.register.max_pr_auc_drop`, on the
same newest labelled rows. CT never commits to Git: a CT model is a registry event with
its lineage in tags (window frames, row counts, data hashes, commit, trigger).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli import ROOT_OPTION
from pipeline.config import FRAME
from pipeline.errors import CrispError, GateFailed

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipeline.config import ContinuousTraining, Settings

CT_REPORT = Path("reports") / "continuous-training.json"
MS_PER_DAY = 86_400_000.0

# Why CT retrained (the `trigger` tag of a CT model version).
TRIGGER_VERIFY = "verify_failed"
TRIGGER_AGE = "model_age"
TRIGGER_DRIFT = "drift"
TRIGGER_NO_MODEL = "no_model"


# --------------------------------------------------------------------------- window


@dataclass(frozen=True)
class FrameLabels:
    """How much ground truth one frame holds."""

    frame: int
    rows: int
    positives: int


@dataclass(frozen=True)
class Window:
    """Which labelled frames train, validate (threshold) and test (gate)."""

    train: tuple[int, ...]
    valid: tuple[int, ...]
    test: tuple[int, ...]
    rows: int
    positives: int

    @property
    def frames(self) -> list[int]:
        return sorted((*self.train, *self.valid, *self.test))

    @property
    def threshold_frames(self) -> tuple[int, ...]:
        """Where the threshold is chosen: the validation frames, else the test frames."""
        return self.valid or self.test

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WindowChoice:
    """A window, or the reason (with counts) why there is none."""

    window: Window | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.window is not None


def count_labels(rows: pd.DataFrame, target: str) -> list[FrameLabels]:
    """Labelled rows and positives per frame of `rows` (which hold only labelled rows)."""
    if rows.empty:
        return []
    grouped = rows.groupby(FRAME)[target].agg(["size", "sum"])
    return [
        FrameLabels(int(frame), int(row["size"]), int(row["sum"]))
        for frame, row in grouped.sort_index().iterrows()
    ]


def choose_window(
    labelled: Sequence[FrameLabels], params: ContinuousTraining, min_test_positives: int = 1
) -> WindowChoice:
    """The newest `window_frames` labelled frames, split into train, valid and test.

    The test takes the newest `test_frames` frames, and older ones while it holds fewer
    than `min_test_positives` positives (the gate's evidence minimum); the window grows
    by as many frames, so training keeps its share. Refuses when fewer frames are
    labelled than the split needs, when the window holds fewer than `min_labels` rows
    or positives, or when a part lacks one of the classes.
    """
    frames = sorted((f for f in labelled if f.rows > 0), key=lambda f: f.frame)
    test_n, valid_n = params.test_frames, params.valid_frames
    while (
        test_n + valid_n < len(frames) - 1
        and sum(f.positives for f in frames[len(frames) - test_n :]) < min_test_positives
    ):
        test_n += 1
    need = test_n + valid_n + 1
    if len(frames) < need:
        return WindowChoice(
            None,
            f"{len(frames)} labelled frame(s) {[f.frame for f in frames]}; the window needs "
            f"at least {need} ({test_n} test + {valid_n} valid + 1 to train)",
        )
    size = params.window_frames + (test_n - params.test_frames)
    chosen = frames[-size:]
    test = chosen[len(chosen) - test_n :]
    valid = chosen[len(chosen) - test_n - valid_n : len(chosen) - test_n]
    train = chosen[: len(chosen) - test_n - valid_n]
    rows = sum(f.rows for f in chosen)
    positives = sum(f.positives for f in chosen)
    minimum = params.min_labels
    ids = [f.frame for f in chosen]
    if rows < minimum.rows or positives < minimum.positives:
        return WindowChoice(
            None,
            f"not enough labels: window frames {ids} hold {rows} labelled rows and "
            f"{positives} positives; continuous_training.min_labels asks for at least "
            f"{minimum.rows} rows and {minimum.positives} positives",
        )
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if not part:
            continue
        part_rows = sum(f.rows for f in part)
        part_pos = sum(f.positives for f in part)
        if part_pos == 0 or part_pos == part_rows:
            return WindowChoice(
                None,
                f"the {name} frames {[f.frame for f in part]} hold {part_pos} positives in "
                f"{part_rows} labelled rows: both classes are needed",
            )
    window = Window(
        train=tuple(f.frame for f in train),
        valid=tuple(f.frame for f in valid),
        test=tuple(f.frame for f in test),
        rows=rows,
        positives=positives,
    )
    return WindowChoice(
        window,
        f"window {ids}: train {list(window.train)}, valid {list(window.valid)}, test "
        f"{list(window.test)}; {rows} labelled rows, {positives} positives",
    )


def labelled_rows(
    prepared: Mapping[int, pd.DataFrame],
    labels: pd.DataFrame | None,
    known: Sequence[int],
    id_column: str,
    target: str,
) -> pd.DataFrame:
    """The prepared rows whose ground truth is known, with it in the target column.

    Frames in `known` (the history the first model trained on) keep their own target.
    Every other frame keeps only the rows whose label has arrived (`labels`: columns
    `record_id`, `label`, as the score store holds them); its target becomes that label.
    """
    import pandas as pd

    by_id = (
        pd.Series(dtype="int64")
        if labels is None or labels.empty
        else labels.drop_duplicates("record_id", keep="last").set_index("record_id")["label"]
    )
    parts = []
    for frame, data in sorted(prepared.items()):
        if frame in known:
            part = data
        else:
            arrived = data[id_column].astype(str).map(by_id)
            part = data[arrived.notna().to_numpy()].copy()
            part[target] = arrived.dropna().astype("int64").to_numpy()
        if len(part):
            part = part.copy()
            part[FRAME] = frame
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=[FRAME, target])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- training


@dataclass
class Candidate:
    """A model fitted on a window, with what the gate and the registry need."""

    model: Any
    window: Window
    threshold: float
    test_pr_auc: float
    test_y: np.ndarray
    test_scores: np.ndarray
    counts: dict[str, dict[str, int]]
    example: pd.DataFrame
    fit_seconds: float = 0.0


def fit_candidate(rows: pd.DataFrame, window: Window, settings: Settings) -> Candidate:
    """Fit the project's own features and estimator on the window's train frames.

    The threshold minimises the configured cost on the threshold frames; the test
    frames are scored once, for the gate.
    """
    from pipeline.evidence import pr_auc
    from pipeline.features import plan_features
    from pipeline.report import choose_threshold
    from pipeline.train import fit_model, predict_proba, synthetic_example

    target, inputs = settings.contract.target, settings.model_inputs

    def part(frames: Sequence[int]) -> pd.DataFrame:
        return rows[rows[FRAME].isin(list(frames))].reset_index(drop=True)

    train, test = part(window.train), part(window.test)
    pick = part(window.threshold_frames)
    started = time.perf_counter()
    plan = plan_features(settings, train)
    model = fit_model(train, plan, settings)
    fit_seconds = time.perf_counter() - started
    pick_y = pick[target].to_numpy().astype(int)
    threshold = choose_threshold(pick_y, predict_proba(model, pick, inputs), settings.report.cost)
    test_y = test[target].to_numpy().astype(int)
    test_scores = predict_proba(model, test, inputs)
    counts = {
        name: {"rows": len(p), "positives": int(p[target].sum())}
        for name, p in (("train", train), ("valid", part(window.valid)), ("test", test))
    }
    return Candidate(
        model=model,
        window=window,
        threshold=float(threshold),
        test_pr_auc=pr_auc(test_y, test_scores),
        test_y=test_y,
        test_scores=test_scores,
        counts=counts,
        example=synthetic_example(train[inputs]),
        fit_seconds=fit_seconds,
    )


def judge(
    y: np.ndarray,
    candidate_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    settings: Settings,
    champion_version: str | None = None,
) -> dict[str, Any]:
    """Candidate against champion on the same rows: passed, failed or insufficient_evidence.

    Without a champion there is nothing to be worse than: the candidate passes, and the
    verdict says so.
    """
    from pipeline.evidence import PASSED, Evidence, compare_models, pr_auc

    if champion_scores is None:
        return {
            "verdict": PASSED,
            "candidate_pr_auc": pr_auc(y, candidate_scores),
            "champion_pr_auc": None,
            "champion_version": None,
            "reason": "no model serves yet: the candidate is the first",
        }
    gates = settings.environment.gates
    evidence = Evidence.of(settings)
    comparison = compare_models(
        y,
        candidate_scores,
        champion_scores,
        gates.registration.max_pr_auc_drop,
        evidence,
        names=("candidate", f"champion v{champion_version}" if champion_version else "champion"),
    )
    return {**comparison.as_dict(), "champion_version": champion_version}


# --------------------------------------------------------------------------- trigger


def retrain_decision(
    verify_gate: Mapping[str, Any] | None,
    drift_share: float | None,
    model_age_days: float | None,
    params: ContinuousTraining,
) -> tuple[str | None, str]:
    """Whether to retrain, and one line saying why (or why not).

    Retrain when nothing serves, when the verify gate failed, when the drift share
    reached `retrain_drift_share`, or when the model is `max_model_age_days` old.
    Returns (trigger, message); trigger is None when CT should not retrain.
    """
    if model_age_days is None:
        return TRIGGER_NO_MODEL, "no model serves: training the first one"
    age = f"model age {model_age_days:.1f} days"
    limit, drift_limit = params.max_model_age_days, params.retrain_drift_share
    if verify_gate is not None and not verify_gate.get("passed", True):
        reasons = "; ".join(verify_gate.get("reasons") or []) or "no reason recorded"
        return TRIGGER_VERIFY, f"verify gate failed ({reasons}); {age}"
    if drift_limit is not None and drift_share is not None and drift_share >= drift_limit:
        return TRIGGER_DRIFT, (
            f"drift share {drift_share:.3f} reached continuous_training.retrain_drift_share "
            f"{drift_limit:g}; {age}"
        )
    if limit is not None and model_age_days >= limit:
        return TRIGGER_AGE, f"{age} reached continuous_training.max_model_age_days {limit:g}"
    if verify_gate is None:
        verify = "no verify verdict yet"
    else:
        summary = verify_gate.get("summary")
        verify = "verify gate passed" + (f" ({summary})" if summary else "")
    drift = "" if drift_share is None else f"drift share {drift_share:.3f}, "
    bound = "no age limit" if limit is None else f"below max_model_age_days {limit:g}"
    return None, f"{verify}; {drift}{age}, {bound}"


# --------------------------------------------------------------------------- MLflow edges


def lineage_tags(settings: Settings, candidate: Candidate, trigger: str) -> dict[str, str]:
    """What a CT model version records about how it was made."""
    from pipeline import tracking

    window = candidate.window
    tags = {
        "ct.trigger": trigger,
        "ct.window.frames": ",".join(map(str, window.frames)),
        "ct.window.train": ",".join(map(str, window.train)),
        "ct.window.valid": ",".join(map(str, window.valid)),
        "ct.window.test": ",".join(map(str, window.test)),
        **{
            f"ct.{name}.{key}": str(value)
            for name, figures in candidate.counts.items()
            for key, value in figures.items()
        },
        "git_commit": tracking.git_commit(settings.root),
        "environment": settings.env,
        "algorithm": settings.train.algorithm,
    }
    tags.update({f"dvc.{path}": md5 for path, md5 in tracking.dvc_hashes(settings.root).items()})
    return tags


def register_candidate(
    client: Any,
    settings: Settings,
    candidate: Candidate,
    verdict: Mapping[str, Any],
    trigger: str,
    experiment_id: str,
    *,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Log the candidate as an MLflow run and register it; returns the version number.

    The model is logged the way `register` logs one (signature, input example, pinned
    pip requirements, `pipeline.saved_model`'s options), so the service and `score` load it
    alike.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from pipeline.register import numeric_metrics
    from pipeline.saved_model import save_options

    name, env = settings.registration.model_name, settings.env
    tags = {**lineage_tags(settings, candidate, trigger), **(extra_tags or {})}
    signature = infer_signature(candidate.example, candidate.model.predict_proba(candidate.example))
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{env}-ct-{trigger}-{'-'.join(map(str, candidate.window.frames))}",
    ) as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                "continuous_training." + k: str(v)
                for k, v in settings.continuous_training.model_dump().items()
            }
            | {"train.algorithm": settings.train.algorithm}
        )
        mlflow.log_metrics(
            numeric_metrics(
                {
                    "pr_auc": candidate.test_pr_auc,
                    "threshold": candidate.threshold,
                    "fit_seconds": candidate.fit_seconds,
                    **{
                        f"{part}_{k}": v
                        for part, figures in candidate.counts.items()
                        for k, v in figures.items()
                    },
                }
            )
        )
        mlflow.log_dict(dict(verdict), "reports/ct-gate.json")
        info = mlflow.sklearn.log_model(
            candidate.model,
            name="model",
            signature=signature,
            input_example=candidate.example,
            registered_model_name=name,
            **save_options(candidate.model),
        )
        version = str(info.registered_model_version)
    version_tags = {
        **tags,
        "run_id": run_id,
        "threshold": repr(float(candidate.threshold)),
        "pr_auc": repr(float(candidate.test_pr_auc)),
        f"gate.{env}": str(verdict["verdict"]),
        f"gate.{env}.reasons": str(verdict.get("reason") or "none")[:5000],
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def champion_scores(client: Any, settings: Settings, holder: Any, rows: pd.DataFrame) -> Any:
    """The champion model and its scores on `rows` (None, None when it cannot score them)."""
    from pipeline.saved_model import load_model
    from pipeline.train import predict_proba

    name = settings.registration.model_name
    try:
        model = load_model(f"models:/{name}/{holder.version}")
        return model, predict_proba(model, rows, settings.model_inputs)
    except Exception as error:  # a champion of another contract cannot score these rows
        print(
            f"continuous training: champion v{holder.version} cannot score: {error}",
            file=sys.stderr,
        )
        return None, None


def model_age_days(holder: Any, now_ms: float | None = None) -> float | None:
    """Days since the serving version was registered (None when nothing serves)."""
    if holder is None:
        return None
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    return max(0.0, (now_ms - float(holder.creation_timestamp)) / MS_PER_DAY)


# --------------------------------------------------------------------------- entry point


@dataclass
class Outcome:
    """What one CT run did, as reports/continuous-training.json records it."""

    environment: str
    retrained: bool
    message: str
    trigger: str | None = None
    serving_version: str | None = None
    candidate_version: str | None = None
    promoted: bool = False
    window: dict | None = None
    verdict: dict | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_verify(settings: Settings) -> dict | None:
    from pipeline.io import read_json
    from pipeline.layout import Layout

    path = Layout(settings.root).verify_summary
    if not path.is_file():
        return None
    summary = read_json(path)
    gate = dict(summary.get("gate") or {})
    overall = summary.get("overall") or {}
    figures = [
        f"{k} {overall[k]:.3f}"
        for k in ("drift_share", "pr_auc")
        if isinstance(overall.get(k), int | float)
    ]
    gate["summary"] = ", ".join(figures)
    share = overall.get("drift_share")
    gate["drift_share"] = share if isinstance(share, int | float) else None
    return gate


def _prepared_frames(settings: Settings) -> dict[int, pd.DataFrame]:
    import pandas as pd

    from pipeline.layout import Layout

    layout = Layout(settings.root)
    frames = {
        n: pd.read_parquet(layout.frame_file(layout.prepared, n))
        for n in range(1, settings.frames.count + 1)
        if layout.frame_file(layout.prepared, n).is_file()
    }
    if not frames:
        raise CrispError(f"{layout.prepared} holds no frames: run `dvc repro prepare` first")
    return frames


def run(settings: Settings, environ: Mapping[str, str] | None = None) -> dict:
    """CT in CI: decide, train on the window from the store's labels, gate, maybe promote."""
    from pipeline import registry, tracking
    from pipeline.io import write_json
    from pipeline.store import ScoreStore

    environ = os.environ if environ is None else environ
    params = settings.continuous_training
    name, alias = settings.registration.model_name, settings.alias
    client = tracking.configure(settings)
    holder = registry.alias_holder(client, name, alias)
    serving = None if holder is None else str(holder.version)
    verify = _read_verify(settings)
    drift_share = None if verify is None else verify.pop("drift_share", None)
    trigger, why = retrain_decision(verify, drift_share, model_age_days(holder), params)
    outcome = Outcome(settings.env, retrained=False, message=why, serving_version=serving)

    def finish() -> dict:
        _monitor(settings, holder, outcome)
        print(f"continuous training: {outcome.message}", file=sys.stderr)
        result = outcome.as_dict()
        write_json(settings.root / CT_REPORT, result)
        return result

    if trigger is None:
        outcome.message = f"NOT RETRAINED: {why}"
        return finish()
    store = ScoreStore(settings.store_url)
    try:
        labels = store.scores_with_labels(settings.env)[["record_id", "label"]]
    finally:
        store.dispose()
    contract = settings.contract
    rows = labelled_rows(
        _prepared_frames(settings),
        labels,
        settings.frames.train,
        contract.id_column,
        contract.target,
    )
    choice = choose_window(
        count_labels(rows, contract.target),
        params,
        settings.environment.gates.evidence.min_positives,
    )
    if not choice.ok:
        outcome.message = f"NOT RETRAINED ({why}): {choice.reason}"
        return finish()
    window = choice.window
    assert window is not None
    candidate = fit_candidate(rows, window, settings)
    test = rows[rows[FRAME].isin(window.test)].reset_index(drop=True)
    champ_scores = None
    if holder is not None:
        _, champ_scores = champion_scores(client, settings, holder, test)
    verdict = judge(candidate.test_y, candidate.test_scores, champ_scores, settings, serving)
    if holder is not None and champ_scores is None:
        verdict["reason"] = (
            f"champion v{serving} cannot score these rows (another contract?): "
            "the candidate replaces it"
        )
    version = register_candidate(
        client, settings, candidate, verdict, trigger, tracking.ensure_experiment(settings)
    )
    outcome.retrained, outcome.trigger = True, trigger
    outcome.candidate_version, outcome.window, outcome.verdict = version, window.as_dict(), verdict
    if verdict["verdict"] == "passed":
        from pipeline.gitops import actor_from

        with registry.history_store(settings) as history:
            registry.move_alias(
                client,
                history,
                name,
                alias,
                version,
                reason=f"continuous training ({trigger}): {verdict['reason']}"[:500],
                actor=actor_from(environ),
                expected=serving,
            )
        outcome.promoted = True
        outcome.message = (
            f"RETRAINED and PROMOTED: {why}; @{alias} -> version {version} trained on "
            f"{choice.reason}; {verdict['reason']}"
        )
    else:
        outcome.message = (
            f"RETRAINED, NOT PROMOTED: {why}; version {version} ({choice.reason}) "
            f"{verdict['verdict']}: {verdict['reason']}; @{alias} stays on version {serving}"
        )
    return finish()


def _monitor(settings: Settings, holder: Any, outcome: Outcome) -> None:
    """Add the serving model's newest labelled frame to the monitoring workspace.

    Drift of that frame against the frames the serving model trained on, and the
    quality of its persisted scores against the labels that arrived.
    """
    import pandas as pd

    from pipeline.layout import Layout
    from pipeline.store import ScoreStore

    if holder is None:
        return
    try:
        from pipeline import monitoring

        store = ScoreStore(settings.store_url)
        try:
            scored = store.scores_with_labels(
                settings.env,
                model_name=settings.registration.model_name,
                model_version=str(holder.version),
            )
        finally:
            store.dispose()
        if scored.empty:
            outcome.extra["monitoring"] = "no labelled scores of the serving model yet"
            return
        newest = int(scored["frame"].max())
        trained = holder.tags.get("ct.window.train")
        frames = [int(n) for n in trained.split(",")] if trained else settings.frames.train
        layout = Layout(settings.root)

        def load(numbers: Sequence[int]) -> pd.DataFrame:
            return pd.concat(
                [pd.read_parquet(layout.frame_file(layout.prepared, n)) for n in numbers],
                ignore_index=True,
            )

        added = monitoring.record_day(
            settings,
            day=newest,
            reference=load(frames),
            current=load([newest]),
            scored=scored[scored["frame"] == newest],
            tags={"source": "continuous-training", "serving_version": str(holder.version)},
        )
        outcome.extra["monitoring"] = f"frame {newest}: {len(added)} snapshot(s) added"
    except Exception as error:  # monitoring must never hide the CT verdict
        outcome.extra["monitoring_error"] = f"{type(error).__name__}: {error}"


@click.command("continuous-training")
@ROOT_OPTION
def continuous_training_command(root: Path | None) -> None:
    """Retrain on the window of newest labels when verify fails, data drifted or the model aged.

    Registers the candidate and moves the alias only when it is not worse than the
    champion. Exit 5 when verify had failed and the candidate could not replace it.
    """
    import json

    from pipeline.config import find_root, load_settings

    try:
        settings = load_settings(find_root(root))
        result = run(settings)
        click.echo(json.dumps(result, indent=2, default=str))
        if result["trigger"] == TRIGGER_VERIFY and not result["promoted"]:
            sys.exit(GateFailed.exit_code)
    except CrispError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
