"""The keys of `params.yaml` other than the contract: what is promoted as code.

Frames, sampling of the demo generator, cleaning, features, the algorithm and its
hyperparameters, costs, slices. Every key has a type and most have a default, so a
typo fails at load time with the key named.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from pipeline.config.contract import Strict, without_password


class Frames(Strict):
    """How the source is cut into time frames ("days" in the original CrispML).

    `by: width` cuts the time range into equal-width windows, `by: count` into windows
    of equal row count (quantiles, for sparse data), `by: period` into calendar periods
    of a datetime time column. Without a time column frames follow the source's row
    order, in windows of equal row count.
    """

    count: int = Field(12, ge=2)
    by: Literal["width", "count", "period"] = "width"
    period: Literal["day", "week", "month"] | None = None
    train: list[int]
    score: list[int]

    @model_validator(mode="after")
    def _frames_in_range(self) -> Frames:
        if (self.by == "period") != (self.period is not None):
            raise ValueError("frames.period is required with frames.by 'period' and only then")
        for key in ("train", "score"):
            for frame in getattr(self, key):
                if not 1 <= frame <= self.count:
                    raise ValueError(f"frames.{key} has frame {frame}, outside 1..{self.count}")
        overlap = set(self.train) & set(self.score)
        if overlap:
            raise ValueError(f"frames {sorted(overlap)} are both trained on and scored")
        return self


class Drift(Strict):
    """Synthetic drift, so that drift detection can be demonstrated and tested."""

    start_frame: int | None = Field(None, ge=1)
    columns: list[str] = Field(default_factory=list)
    feature_shift: float = 0.0
    amount_scale: float = 1.0
    fraud_pattern_change: float = Field(0.0, ge=0.0, le=1.0)


class Generator(Strict):
    rows: int = Field(284_807, ge=1)
    seed: int = 42
    fraud_rate: float = Field(0.00172, gt=0.0, lt=0.5)
    duration_seconds: float = Field(172_800.0, gt=0)
    drift: Drift = Drift()


class Prepare(Strict):
    drop_duplicates: bool = True
    # For columns the contract does not mark nullable. Nullable features keep their
    # gaps: the model imputes them (or handles them natively).
    missing: Literal["fail", "drop", "fill_median"] = "drop"


class Split(Strict):
    train: list[int]
    valid: list[int]
    test: list[int]

    @model_validator(mode="after")
    def _disjoint(self) -> Split:
        parts = [set(self.train), set(self.valid), set(self.test)]
        if any(not p for p in parts):
            raise ValueError("curate.split needs at least one frame in each of train, valid, test")
        if parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]:
            raise ValueError("curate.split train, valid and test frames must not overlap")
        return self


class FeatureOptions(Strict):
    """Per-column transforms. None is on by default: each needs the contract's support."""

    # log1p of these numeric features; the contract must give them `min` >= 0.
    log: list[str] = Field(default_factory=list)
    # sin/cos of the time of day of this column: a datetime, or a number with
    # `unit: seconds` in the contract. It becomes a model input.
    time_of_day: str | None = None
    # Standardise numeric inputs (logistic regression needs it; trees ignore it).
    scale: bool = True


class Curate(Strict):
    split: Split
    features: FeatureOptions = FeatureOptions()
    # The threshold is chosen on the validation frames. Picked on a few dozen positives
    # it is noise, so while they hold fewer positives than this, the newest training
    # frame before them moves into validation (never the last training frame).
    min_valid_positives: int = Field(30, ge=1)


Algorithm = Literal["random_forest", "hist_gradient_boosting", "logistic_regression"]


class Train(Strict):
    algorithm: Algorithm
    seed: int = 42
    algorithms: dict[Algorithm, dict[str, Any]]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.algorithms.get(self.algorithm, {}))


class Cost(Strict):
    """What an error costs, in any one unit: the threshold minimises the total."""

    false_negative: float = Field(gt=0)
    false_positive: float = Field(ge=0)


class Slice(Strict):
    """Metrics per band of a numeric column (`edges`), or per value of any other column."""

    column: str
    edges: list[float] | None = None


class Report(Strict):
    precision_target: float = Field(0.9, gt=0, le=1)
    cost: Cost
    slices: list[Slice] = Field(default_factory=list)
    calibration_bins: int = Field(10, ge=2)


class Register(Strict):
    model_name: str = Field(min_length=1)
    experiment: str = "crispml"


# The Spark master URLs `score.spark_master` takes: local threads, a standalone
# cluster, YARN or Kubernetes. Checked here so that a typo fails at load time, naming
# the key, instead of after a Spark session took half a minute to start.
SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?"
    r"|local-cluster\[[1-9]\d*,[1-9]\d*,[1-9]\d*\]"
    r"|yarn|(spark|k8s)://\S+"
)


class Score(Strict):
    """How the score stage runs: one process in chunks, or a Spark job.

    `engine: spark` scores with `mlflow.pyfunc.spark_udf` on a session at
    `spark_master` (the `spark` extra and Java 17); each partition's task stores its
    chunks of up to `chunk_rows` rows, one transaction each.
    """

    chunk_rows: int = Field(50_000, ge=1)
    engine: Literal["pandas", "spark"] = "pandas"
    spark_master: str = "local[*]"
    # Partitions of a frame's Spark job; None: the session's default parallelism.
    spark_partitions: int | None = Field(None, ge=1)

    @field_validator("spark_master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if not SPARK_MASTER.fullmatch(value):
            raise ValueError(
                f"score.spark_master {value!r} is not a Spark master URL: local, local[N], "
                "local[*], local[N,F], local-cluster[N,C,M], yarn, spark://HOST:PORT or "
                "k8s://URL"
            )
        return value


class LabelSource(Strict):
    """Where ground truth comes from. `target` reads the source's own target column."""

    kind: Literal["target", "file", "sql"] = "target"
    path: str | None = None
    url: Annotated[str, AfterValidator(without_password)] | None = None
    url_env: str | None = None
    query: str | None = None
    id_column: str = "id"
    label_column: str = "label"


class Label(Strict):
    source: LabelSource = LabelSource()


class Verify(Strict):
    drift_max_rows: int = Field(10_000, ge=100)
    seed: int = 0
    workers: int = Field(2, ge=1, le=32)


class MinLabels(Strict):
    """The least a rolling window must hold before continuous training may fit on it."""

    rows: int = Field(1000, ge=1)
    positives: int = Field(60, ge=1)


class ContinuousTraining(Strict):
    """The rolling training window of continuous training (and of `crispml replay`).

    The newest `window_frames` labelled frames: the newest `test_frames` judge the
    candidate against the champion, the `valid_frames` before them choose the threshold
    (with 0, the threshold is chosen on the test frames), the rest train. CT retrains
    when verify fails, when the drift share reaches `retrain_drift_share`, or when the
    serving model is `max_model_age_days` old.
    """

    window_frames: int = Field(6, ge=2)
    valid_frames: int = Field(0, ge=0)
    test_frames: int = Field(1, ge=1)
    min_labels: MinLabels = MinLabels()
    label_delay_days: int = Field(0, ge=0)
    max_model_age_days: float | None = Field(None, gt=0)
    retrain_drift_share: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _room_to_train(self) -> ContinuousTraining:
        if self.window_frames <= self.valid_frames + self.test_frames:
            raise ValueError(
                f"continuous_training.window_frames ({self.window_frames}) must exceed "
                f"valid_frames + test_frames ({self.valid_frames} + {self.test_frames}): "
                "at least one frame must train"
            )
        return self


class Monitoring(Strict):
    """Where the Evidently workspace of daily drift and quality snapshots lives."""

    workspace: str = "reports/monitoring"
    project: str = "crispml"


class Load(Strict):
    """The bounded load test of `load/run.py` (Locust): how hard, how long, what passes.

    No pipeline stage reads it; it is here so that params.yaml stays one validated file.
    """

    users: int = Field(default=20, ge=1, le=1000)
    spawn_rate: float = Field(default=10.0, gt=0)
    duration_seconds: int = Field(default=20, ge=1, le=3600)
    max_p99_ms: float = Field(default=1000.0, gt=0)
