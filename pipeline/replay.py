"""`crispml replay`: the scoring days replayed one by one, with and without continuous training.

The story the project tells: a model learns on frames ("days") 1-6 and scores each new
day; ground truth arrives later; verification compares persisted scores with it. The
replay walks `frames.score` on the active environment's prepared data and, each day d:

1. scores day d with the model the alias serves, into a throwaway score store;
2. imports the labels that have arrived (day f's labels arrive on day
   f + `continuous_training.label_delay_days`);
3. verifies day d: drift of day d against the serving model's training window
   (`drift_summary`, sampled to `verify.drift_max_rows`), realised PR-AUC of the newest
   labelled day with its bootstrap interval (`evidence.estimate`);
4. retrains on the rolling window when verify fails or the model is too old
   (`pipeline.continuous_training`), gates the candidate against the champion on the
   newest labelled frame, and moves the alias when it is not worse.

Beside it runs the "static" model, the day-6 model never retrained, so each day has
`pr_auc_static` and `pr_auc_ct` on the same (hindsight, complete) labels. Everything
happens in a temporary MLflow registry and score store (MLFLOW_TRACKING_URI is set only
inside the replay), so the environment's own are never touched.

Outputs: reports/replay.json (one record per day), reports/replay/*.csv (DVC plot
data), reports/replay/index.html (a page a person reads), and the day snapshots in the
Evidently monitoring workspace (pipeline/monitoring.py).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli import ROOT_OPTION, env_option
from pipeline.errors import CrispError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipeline.config import Settings

REPLAY_JSON = Path("reports") / "replay.json"
REPLAY_DIR = Path("reports") / "replay"
# Day d of a replay is dated REPLAY_EPOCH + d days in the monitoring workspace.
REPLAY_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
TRIGGER_INITIAL = "initial"


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class DayVerdict:
    """The per-day verify decision: drift share and realised PR-AUC with its interval."""

    verdict: str  # passed | failed | insufficient_evidence
    reasons: list[str]
    drift_share: float
    pr_auc: float | None
    low: float | None
    high: float | None
    expected_pr_auc: float | None
    labelled_frame: int | None
    positives: int

    @property
    def passed(self) -> bool:
        return self.verdict != "failed"

    def as_gate(self) -> dict[str, Any]:
        """The shape `continuous_training.retrain_decision` reads (insufficient is no fail)."""
        figures = f"{self.verdict}: drift share {self.drift_share:.3f}"
        if self.pr_auc is not None:
            figures += f", PR-AUC {self.pr_auc:.3f} on frame {self.labelled_frame}"
        return {"passed": self.passed, "reasons": self.reasons, "summary": figures}


def day_verdict(
    drift_share: float,
    estimate: Any | None,
    expected_pr_auc: float | None,
    max_drift_share: float,
    max_pr_auc_drop: float,
    labelled_frame: int | None = None,
) -> DayVerdict:
    """Fail on drift share above the maximum, or when even the interval's upper bound of
    realised PR-AUC is more than `max_pr_auc_drop` below the expected PR-AUC.

    Too few labelled positives for an interval is `insufficient_evidence` (unless drift
    alone fails): never a silent pass, never a failure on noise.
    """
    reasons = []
    if drift_share > max_drift_share:
        reasons.append(f"drift share {drift_share:.3f} is above the maximum {max_drift_share:.3f}")
    insufficient = False
    pr_auc = low = high = None
    positives = 0
    if estimate is not None:
        pr_auc, positives = _finite(estimate.pr_auc), estimate.positives
        low, high = _finite(estimate.low), _finite(estimate.high)
        if not estimate.enough:
            insufficient = True
        elif expected_pr_auc is not None and high is not None:
            floor = expected_pr_auc - max_pr_auc_drop
            if high < floor:
                reasons.append(
                    f"realised PR-AUC {estimate.pr_auc:.4f} on frame {labelled_frame} "
                    f"(interval [{low:.4f}, {high:.4f}], {positives} positives) is below "
                    f"{floor:.4f}: the expected {expected_pr_auc:.4f} minus the allowed "
                    f"drop {max_pr_auc_drop:.4f}"
                )
    else:
        insufficient = True
    verdict = "failed" if reasons else ("insufficient_evidence" if insufficient else "passed")
    if verdict == "insufficient_evidence":
        reasons.append(
            "no labelled frame yet"
            if estimate is None
            else f"{positives} labelled positives on frame {labelled_frame}: too few to judge"
        )
    return DayVerdict(
        verdict, reasons, drift_share, pr_auc, low, high, expected_pr_auc, labelled_frame, positives
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)


def arrived_frames(day: int, score_frames: list[int], delay: int) -> list[int]:
    """Scored frames whose labels arrive on `day` (day f's arrive on day f + delay)."""
    return [f for f in score_frames if f + delay == day]


def summarise(days: list[dict], drift_start: int | None) -> dict[str, Any]:
    """How much continuous training recovered: mean PR-AUC gain on the drifted days."""
    import numpy as np

    def mean(key: str, rows: list[dict]) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    drifted = [d for d in days if drift_start is not None and d["day"] >= drift_start]
    out: dict[str, Any] = {
        "days": len(days),
        "retrained_days": [d["day"] for d in days if d["retrained"]],
        "promoted_days": [d["day"] for d in days if d["promoted"]],
        "mean_pr_auc_static": mean("pr_auc_static", days),
        "mean_pr_auc_ct": mean("pr_auc_ct", days),
        "drift_start": drift_start,
    }
    if drifted:
        static, ct = mean("pr_auc_static", drifted), mean("pr_auc_ct", drifted)
        out.update(
            drifted_days=[d["day"] for d in drifted],
            drifted_mean_pr_auc_static=static,
            drifted_mean_pr_auc_ct=ct,
            drifted_mean_gain=None if static is None or ct is None else ct - static,
            drifted_gain_per_day={
                d["day"]: d["pr_auc_ct"] - d["pr_auc_static"]
                for d in drifted
                if d["pr_auc_ct"] is not None and d["pr_auc_static"] is not None
            },
        )
    return out


# --------------------------------------------------------------------------- page

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>CrispML replay: {{ environment }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; margin: 1em 0; }
 th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
 th { background: #f3f3f3; } td.l { text-align: left; }
 .failed { color: #b00020; font-weight: bold; } .passed { color: #1b5e20; }
 .insufficient_evidence { color: #8a6d00; }
 svg text { font-size: 11px; }
</style></head><body>
<h1>Replay of the scoring days ({{ environment }})</h1>
<p>Model <code>{{ model_name }}</code>; static = the day-{{ static_day }} model never retrained;
CT = the model continuous training kept (window {{ ct.window_frames }} frames, valid
{{ ct.valid_frames }}, test {{ ct.test_frames }}, label delay {{ ct.label_delay_days }} day(s),
max model age {{ ct.max_model_age_days }}).
{% if summary.get("drifted_mean_gain") is not none %}On the drifted days {{ summary.drifted_days }},
mean PR-AUC static {{ "%.3f"|format(summary.drifted_mean_pr_auc_static) }}, CT
{{ "%.3f"|format(summary.drifted_mean_pr_auc_ct) }}: a gain of
<b>{{ "%+.3f"|format(summary.drifted_mean_gain) }}</b>.{% endif %}</p>
<table>
<tr><th>day</th><th>serving version</th><th>retrained</th><th>promoted</th><th>verdict</th>
<th>realised PR-AUC (interval)</th><th>PR-AUC static</th><th>PR-AUC CT</th>
<th>drift share</th><th class="l">why</th></tr>
{% for d in days %}<tr>
<td>{{ d.day }}</td><td>{{ d.serving_version }}</td><td>{{ "yes" if d.retrained else "" }}</td>
<td>{{ d.candidate_version if d.promoted else "" }}</td>
<td class="{{ d.gate.verdict }}">{{ d.gate.verdict }}</td>
<td>{% if d.gate.pr_auc is not none %}{{ "%.3f"|format(d.gate.pr_auc) }}
{% if d.gate.low is not none %}
[{{ "%.3f"|format(d.gate.low) }}, {{ "%.3f"|format(d.gate.high) }}]{% endif %}
(frame {{ d.gate.labelled_frame }}){% endif %}</td>
<td>{{ "%.3f"|format(d.pr_auc_static) if d.pr_auc_static is not none else "" }}</td>
<td>{{ "%.3f"|format(d.pr_auc_ct) if d.pr_auc_ct is not none else "" }}</td>
<td>{{ "%.3f"|format(d.drift_share) }}</td><td class="l">{{ d.decision }}</td>
</tr>{% endfor %}
</table>
{% for chart in charts %}
<h2>{{ chart.title }}</h2>
<svg width="{{ chart.width }}" height="{{ chart.height }}" role="img">
 <line x1="40" y1="{{ chart.bottom }}" x2="{{ chart.right }}" y2="{{ chart.bottom }}"
  stroke="#999"/>
 <line x1="40" y1="10" x2="40" y2="{{ chart.bottom }}" stroke="#999"/>
 {% for tick in chart.yticks %}
 <text x="4" y="{{ tick.y + 4 }}">{{ tick.label }}</text>
 <line x1="40" y1="{{ tick.y }}" x2="{{ chart.right }}" y2="{{ tick.y }}" stroke="#eee"/>
 {% endfor %}
 {% for tick in chart.xticks %}
 <text x="{{ tick.x - 4 }}" y="{{ chart.height - 8 }}">{{ tick.label }}</text>
 {% endfor %}
 {% for s in chart.series %}
 <polyline fill="none" stroke="{{ s.colour }}" stroke-width="2" points="{{ s.points }}"/>
 <text x="{{ chart.width - 120 }}" y="{{ 20 + loop.index0 * 14 }}" fill="{{ s.colour }}">
  {{ s.name }}</text>
 {% endfor %}
</svg>
{% endfor %}
<p>Data: <code>reports/replay.json</code>, <code>reports/replay/*.csv</code>
(<code>dvc plots show reports/replay/pr_auc.csv</code>); the daily Evidently snapshots:
<code>evidently ui --workspace {{ workspace }}</code>.</p>
</body></html>
"""

COLOURS = ("#1f77b4", "#d62728", "#2ca02c")


def _chart(title: str, days: list[int], series: dict[str, list[float | None]]) -> dict:
    """Screen coordinates of a small line chart; the page template draws it."""
    width, height = 640, 220
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(1.0, max(values, default=1.0))
    x0, x1, y0, y1 = 40, width - 130, height - 25, 10
    span = max(1, max(days) - min(days)) if days else 1

    def x(day: int) -> float:
        return x0 + (day - min(days)) * (x1 - x0) / span

    def y(value: float) -> float:
        return y0 - value / top * (y0 - y1)

    return {
        "title": title,
        "width": width,
        "height": height,
        "bottom": height - 25,
        "right": width - 10,
        "xticks": [{"x": x(d), "label": d} for d in days],
        "yticks": [{"y": y(top * k / 4), "label": f"{top * k / 4:.2f}"} for k in range(5)],
        "series": [
            {
                "name": name,
                "colour": COLOURS[i % len(COLOURS)],
                "points": " ".join(
                    f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days, vs, strict=True) if v is not None
                ),
            }
            for i, (name, vs) in enumerate(series.items())
        ],
    }


def render_page(result: dict) -> str:
    """The replay as one HTML page: the table and the series, from PAGE."""
    import jinja2

    days = [d["day"] for d in result["days"]]
    charts = [
        _chart(
            "PR-AUC per day (hindsight labels)",
            days,
            {
                "static": [d["pr_auc_static"] for d in result["days"]],
                "continuous training": [d["pr_auc_ct"] for d in result["days"]],
            },
        ),
        _chart(
            "Drift share per day (against the serving model's training frames)",
            days,
            {
                "static": [d["drift_share_static"] for d in result["days"]],
                "continuous training": [d["drift_share"] for d in result["days"]],
            },
        ),
    ]
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        PAGE
    )
    return template.render(**result, charts=charts)


# --------------------------------------------------------------------------- the replay


@contextlib.contextmanager
def throwaway_tracking(folder: Path) -> Iterator[str]:
    """MLflow pointed at a SQLite registry in `folder`, only inside the block."""
    from pipeline import tracking

    with tracking.pointed_at(f"sqlite:///{folder / 'mlflow.db'}") as uri:
        yield uri


@contextlib.contextmanager
def drift_worker(workers: int) -> Iterator[Executor]:
    """One process beside the replay for the day's drift report (in-process with 1 worker).

    Evidently is imported before the fork, so the worker does not pay the import again.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    import evidently  # noqa: F401

    if workers <= 1:
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield pool
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("fork")) as pool:
        yield pool


def _sample(
    prepared: dict[int, pd.DataFrame], frames: list[int], columns: list[str], cap: int, seed: int
) -> pd.DataFrame:
    """The frames' feature columns, sampled to `cap` rows as verify samples them for drift."""
    import pandas as pd

    rows = pd.concat([prepared[n][columns] for n in frames], ignore_index=True)
    return rows.sample(n=min(len(rows), cap), random_state=seed)


def _load_prepared(settings: Settings, frames: list[int]) -> dict[int, pd.DataFrame]:
    import pandas as pd

    from pipeline.layout import Layout

    layout = Layout(settings.root)
    missing = [n for n in frames if not layout.frame_file(layout.prepared, n).is_file()]
    if missing:
        raise CrispError(
            f"{layout.prepared} lacks frames {missing} of environment {settings.env!r}: "
            f"run `crispml env use {settings.env} && dvc repro prepare` first"
        )
    _check_prepared_env(settings)
    return {n: pd.read_parquet(layout.frame_file(layout.prepared, n)) for n in frames}


def _check_prepared_env(settings: Settings) -> None:
    """Refuse prepared data that dvc.lock says another environment produced."""
    import yaml

    lock = settings.root / "dvc.lock"
    if not lock.is_file():
        return
    stage = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get("prepare") or {}
    produced = ((stage.get("params") or {}).get("params.yaml") or {}).get("env")
    if produced is not None and produced != settings.env:
        raise CrispError(
            f"data/prepared was produced for environment {produced!r}, not {settings.env!r}: "
            f"run `crispml env use {settings.env} && dvc repro prepare` first"
        )


class Replay:
    """One replay's state: the throwaway registry and store, and the models in memory."""

    def __init__(self, settings: Settings, folder: Path, prepared: dict[int, pd.DataFrame]):
        from pipeline import tracking
        from pipeline.store import ScoreStore

        self.settings = settings
        self.prepared = prepared
        self.client = tracking.configure(settings)
        import mlflow

        self.experiment_id = mlflow.create_experiment(
            settings.registration.experiment + "-replay",
            artifact_location=(folder / "artifacts").as_uri(),
        )
        self.store = ScoreStore(f"sqlite:///{folder / 'scores.db'}")
        self.store.migrate()
        self.models: dict[str, Any] = {}
        self.trained_day: dict[str, int] = {}
        self.train_frames: dict[str, list[int]] = {}
        self.name = settings.registration.model_name
        self.alias = settings.alias

    # ---- models

    def add_model(
        self, candidate: Any, verdict: dict, trigger: str, day: int, promote: bool
    ) -> str:
        from pipeline import registry
        from pipeline.continuous_training import register_candidate

        version = register_candidate(
            self.client,
            self.settings,
            candidate,
            verdict,
            trigger,
            self.experiment_id,
            extra_tags={"replay.day": str(day)},
        )
        self.models[version] = candidate.model
        self.trained_day[version] = day
        self.train_frames[version] = list(candidate.window.train)
        if promote:
            registry.move_alias(
                self.client,
                self.store,
                self.name,
                self.alias,
                version,
                reason=f"replay day {day}: {trigger}: {verdict.get('reason')}"[:500],
                actor="replay",
            )
        return version

    def serving(self) -> tuple[str, Any, float]:
        from pipeline import registry

        holder = registry.alias_holder(self.client, self.name, self.alias)
        if holder is None:
            raise CrispError(f"replay: @{self.alias} holds no version")
        version = str(holder.version)
        if version not in self.models:
            from pipeline.saved_model import load_model

            self.models[version] = load_model(f"models:/{self.name}/{version}")
        return version, self.models[version], float(holder.tags["threshold"])

    def expected_pr_auc(self, version: str) -> float | None:
        tags = self.client.get_model_version(self.name, version).tags
        return float(tags["pr_auc"]) if "pr_auc" in tags else None

    # ---- store

    def score(self, day: int, version: str, model: Any, threshold: float) -> pd.DataFrame:
        from pipeline.score import score_rows
        from pipeline.store import new_batch_score_ids, utcnow

        settings, env = self.settings, self.settings.env
        scored = score_rows(
            model, self.prepared[day], settings.model_inputs, settings.contract.id_column, threshold
        )
        now = utcnow()
        lineage = {
            "frame": day,
            "threshold": threshold,
            "model_name": self.name,
            "model_version": version,
            "run_id": "replay",
            "git_commit": "replay",
            "environment": env,
            "channel": "batch",
            "source": f"replay day {day}",
        }
        chunk = scored.assign(score_id=new_batch_score_ids(len(scored)))
        self.store.store_batch_frame(chunk, lineage, now)
        return scored

    def import_labels(self, frame: int) -> int:
        from pipeline.label import clean_truth, match
        from pipeline.store import utcnow

        contract, env = self.settings.contract, self.settings.env
        data = self.prepared[frame]
        truth = clean_truth(data, contract.id_column, contract.target, contract.target_spec)
        matched, _ = match(data[contract.id_column], truth)
        now = utcnow()
        return self.store.upsert_labels(
            {
                "environment": env,
                "record_id": r,
                "label": int(lab),
                "source": f"replay:{frame}",
                "labeled_at": now,
            }
            for r, lab in zip(matched["record_id"], matched["label"], strict=True)
        )

    def labels(self) -> pd.DataFrame:
        joined = self.store.scores_with_labels(self.settings.env)
        return joined[["record_id", "label"]]


def run(settings: Settings, *, show_progress: bool | None = None) -> dict:
    """Replay `frames.score` day by day; write reports/replay.json, CSVs, HTML, snapshots."""
    import pandas as pd
    from tqdm import tqdm

    from pipeline import continuous_training as ct
    from pipeline.drift_and_quality import drift_summary
    from pipeline.evidence import Evidence, estimate, pr_auc
    from pipeline.io import write_csv, write_json
    from pipeline.train import predict_proba

    contract = settings.contract
    target, id_column = contract.target, contract.id_column
    params = settings.continuous_training
    gates = settings.environment.gates
    evidence = Evidence.of(settings)
    score_frames = sorted(settings.frames.score)
    known = sorted(settings.frames.train)
    prepared = _load_prepared(settings, sorted({*known, *score_frames}))
    columns = [c for c in contract.features if contract.by_name[c].dtype != "datetime"]
    categorical = [c for c in columns if c in contract.categorical]
    monitor = _monitor_factory(settings)
    started_all = time.perf_counter()
    days: list[dict] = []

    with (
        tempfile.TemporaryDirectory(prefix="crispml-replay-") as tmp,
        throwaway_tracking(Path(tmp)),
    ):
        replay = Replay(settings, Path(tmp), prepared)
        try:
            # The model a branch pipeline trains: frames.train, split as curate.split says.
            split = settings.curate.split
            history = ct.labelled_rows(prepared, None, known, id_column, target)
            first = ct.Window(
                train=tuple(split.train),
                valid=tuple(split.valid),
                test=tuple(split.test),
                rows=len(history),
                positives=int(history[target].sum()),
            )
            static = ct.fit_candidate(history, first, settings)
            static_day = max(known)
            initial = {
                "verdict": "passed",
                "reason": f"the model trained on frames.train {known} (no champion yet)",
            }
            static_version = replay.add_model(
                static, initial, TRIGGER_INITIAL, static_day, promote=True
            )
            initial_seconds = round(time.perf_counter() - started_all, 2)

            # Drift runs in a worker while the day is scored and labelled (2 cores).
            with drift_worker(settings.verify.workers) as pool:
                progress = tqdm(
                    score_frames, desc="replay", unit="day", disable=show_progress is False
                )
                for day in progress:
                    t0 = time.perf_counter()
                    version, model, threshold = replay.serving()
                    # Verify day d, part 1: drift against the serving model's training
                    # frames, each side sampled to verify.drift_max_rows as verify does.
                    cap, seed = settings.verify.drift_max_rows, settings.verify.seed
                    reference = _sample(prepared, replay.train_frames[version], columns, cap, seed)
                    current = _sample(prepared, [day], columns, cap, seed)
                    drift_args = dict(max_rows=cap, seed=seed, categorical=categorical)
                    pending = pool.submit(
                        drift_summary, reference, current, columns, None, **drift_args
                    )
                    # Without retraining, the reference would still be the day-6 model's
                    # frames: that series is the "static" drift line, computed only once
                    # the serving model differs from it.
                    static_reference = None
                    if replay.train_frames[version] != replay.train_frames[static_version]:
                        static_reference = _sample(
                            prepared, replay.train_frames[static_version], columns, cap, seed
                        )
                        pending_static = pool.submit(
                            drift_summary, static_reference, current, columns, None, **drift_args
                        )
                    scored = replay.score(day, version, model, threshold)
                    arrived = arrived_frames(day, score_frames, params.label_delay_days)
                    labelled_now = sum(replay.import_labels(f) for f in arrived)
                    newest = [f for f in score_frames if f + params.label_delay_days <= day]
                    est, expected, labelled_frame, quality_scored = None, None, None, None
                    if newest:
                        labelled_frame = max(newest)
                        joined = replay.store.scores_with_labels(settings.env, frame=labelled_frame)
                        if len(joined):
                            est = estimate(
                                joined["label"].to_numpy(), joined["score"].to_numpy(), evidence
                            )
                            expected = replay.expected_pr_auc(str(joined["model_version"].iloc[0]))
                            quality_scored = joined
                    drift = pending.result()
                    drift_static = drift if static_reference is None else pending_static.result()
                    verdict = day_verdict(
                        drift["drift_share"],
                        est,
                        expected,
                        gates.verify.max_drift_share,
                        gates.verify.max_pr_auc_drop,
                        labelled_frame,
                    )
                    # Hindsight: both models on day d's complete labels.
                    truth = prepared[day][target].to_numpy().astype(int)
                    static_scores = predict_proba(
                        static.model, prepared[day], settings.model_inputs
                    )
                    static_decision = (static_scores >= static.threshold).astype(int)
                    pr_static = pr_auc(truth, static_scores) if truth.any() else None
                    pr_ct = pr_auc(truth, scored["score"].to_numpy()) if truth.any() else None
                    record: dict[str, Any] = {
                        "day": day,
                        "serving_version": version,
                        "serving_trained_on": replay.train_frames[version],
                        "labels_arrived": {"frames": arrived, "rows": labelled_now},
                        "gate": {"verdict": verdict.verdict, **_gate_dict(verdict)},
                        "drift_share": drift["drift_share"],
                        "drift_share_static": drift_static["drift_share"],
                        "drifted_columns": sorted(
                            c for c, v in drift["per_column"].items() if v["drifted"]
                        ),
                        "pr_auc_static": pr_static,
                        "pr_auc_ct": pr_ct,
                        "recall_static": _recall(truth, static_decision),
                        "recall_ct": _recall(truth, scored["decision"].to_numpy()),
                        "positives": int(truth.sum()),
                        "rows": len(truth),
                        "retrained": False,
                        "promoted": False,
                        "candidate_version": None,
                    }
                    # Retrain when verify fails or the model is old (age in days of the replay).
                    trigger, why = ct.retrain_decision(
                        verdict.as_gate(),
                        drift["drift_share"],
                        float(day - replay.trained_day[version]),
                        params,
                    )
                    decision = f"not retrained: {why}" if trigger is None else why
                    if trigger is not None:
                        rows = ct.labelled_rows(prepared, replay.labels(), known, id_column, target)
                        choice = ct.choose_window(
                            ct.count_labels(rows, target), params, evidence.min_positives
                        )
                        if not choice.ok:
                            decision = f"not retrained ({why}): {choice.reason}"
                        else:
                            window = choice.window
                            candidate = ct.fit_candidate(rows, window, settings)
                            test = rows[rows["frame"].isin(window.test)]
                            champion = predict_proba(model, test, settings.model_inputs)
                            judged = ct.judge(
                                candidate.test_y, candidate.test_scores, champion, settings, version
                            )
                            promote = judged["verdict"] == "passed"
                            new = replay.add_model(candidate, judged, trigger, day, promote)
                            record.update(
                                retrained=True,
                                promoted=promote,
                                candidate_version=new,
                                window=window.as_dict(),
                                comparison=_comparison(judged),
                            )
                            decision = (
                                f"{why}; version {new} on {choice.reason}: {judged['verdict']} "
                                f"({judged['reason']})"
                            )
                    record["decision"] = decision
                    monitor(
                        day,
                        reference,
                        current,
                        quality_scored,
                        {"serving_version": version, "verdict": verdict.verdict},
                    )
                    record["seconds"] = round(time.perf_counter() - t0, 2)
                    days.append(record)
                    print(f"replay day {day}: {decision}", file=sys.stderr)
        finally:
            replay.store.dispose()

    drift_start = settings.generator.drift.start_frame if _is_generator(settings) else None
    result = {
        "environment": settings.env,
        "model_name": settings.registration.model_name,
        "static_day": max(known),
        "static": {
            "train": list(first.train),
            "valid": list(first.valid),
            "test": list(first.test),
            "test_pr_auc": static.test_pr_auc,
            "threshold": static.threshold,
        },
        "ct": params.model_dump(),
        "gates": {
            "verify": gates.verify.model_dump(),
            "register_max_pr_auc_drop": gates.registration.max_pr_auc_drop,
            "evidence": gates.evidence.model_dump(),
        },
        "days": days,
        "summary": summarise(days, drift_start),
        "seconds": round(time.perf_counter() - started_all, 2),
        "initial_seconds": initial_seconds,
        "workspace": settings.monitoring.workspace,
    }
    root = settings.root
    write_json(root / REPLAY_JSON, result)
    table = pd.DataFrame(days)
    write_csv(
        root / REPLAY_DIR / "pr_auc.csv",
        table[["day", "pr_auc_static", "pr_auc_ct"]].rename(
            columns={"pr_auc_static": "static", "pr_auc_ct": "ct"}
        ),
    )
    write_csv(
        root / REPLAY_DIR / "drift.csv",
        table[["day", "drift_share_static", "drift_share"]].rename(
            columns={"drift_share_static": "static", "drift_share": "ct"}
        ),
    )
    write_csv(
        root / REPLAY_DIR / "recall.csv",
        table[["day", "recall_static", "recall_ct"]].rename(
            columns={"recall_static": "static", "recall_ct": "ct"}
        ),
    )
    from pipeline.io import atomic_path

    with atomic_path(root / REPLAY_DIR / "index.html") as tmp_page:
        tmp_page.write_text(render_page(result), encoding="utf-8")
    return result


def _recall(y: np.ndarray, decision: np.ndarray) -> float | None:
    positives = int(y.sum())
    return None if positives == 0 else float(((y == 1) & (decision == 1)).sum() / positives)


def _gate_dict(verdict: DayVerdict) -> dict[str, Any]:
    return {
        "reasons": verdict.reasons,
        "pr_auc": verdict.pr_auc,
        "low": verdict.low,
        "high": verdict.high,
        "expected_pr_auc": verdict.expected_pr_auc,
        "labelled_frame": verdict.labelled_frame,
        "positives": verdict.positives,
    }


def _comparison(judged: dict) -> dict:
    keys = ("verdict", "candidate_pr_auc", "champion_pr_auc", "difference", "low", "high")
    out = {k: judged.get(k) for k in keys}
    out["reason"] = judged.get("reason")
    return {k: _finite(v) if isinstance(v, float) else v for k, v in out.items()}


def _is_generator(settings: Settings) -> bool:
    return settings.environment.data.source.kind == "generator"


def _monitor_factory(settings: Settings):
    """A function that adds one day's snapshot to the replay's monitoring project."""
    from pipeline import monitoring

    project = monitoring.open_project(
        settings, name=f"{settings.monitoring.project}-replay-{settings.env}", fresh=True
    )

    def add(day: int, reference, current, scored, tags: dict[str, str]) -> None:
        monitoring.add_day(
            project,
            reference=reference,
            current=current,
            scored=scored,
            timestamp=REPLAY_EPOCH + timedelta(days=day),
            tags={"day": str(day), **tags},
            max_rows=settings.verify.drift_max_rows,
            seed=settings.verify.seed,
        )

    return add


@click.command("replay")
@ROOT_OPTION
@env_option("Environment whose prepared data to replay (default: the active one).")
def replay_command(root: Path | None, env: str | None) -> None:
    """Replay the scoring days: score, label, verify, retrain (continuous training).

    Compares the day-6 model never retrained (static) with the model continuous
    training keeps, in a throwaway registry and score store. Writes
    reports/replay.json, reports/replay/*.csv and reports/replay/index.html.
    """
    import json

    from pipeline.config import find_root, load_settings

    try:
        settings = load_settings(find_root(root), env=env)
        result = run(settings)
    except CrispError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    click.echo(json.dumps({"summary": result["summary"], "seconds": result["seconds"]}, indent=2))
    click.echo(f"page: {(settings.root / REPLAY_DIR / 'index.html').as_uri()}")


def add_commands(cli: click.Group) -> None:
    """Attach `crispml replay` (called lazily from pipeline.cli)."""
    cli.add_command(replay_command)
