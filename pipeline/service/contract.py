"""Request and response models generated from the data contract.

The contract in `params.yaml` is the single statement of what a record is; the API
must not keep a second, hand-written copy that could drift from it. So the record
model is built with `pydantic.create_model` from `Contract.specs`: the id column plus
the model inputs, each with its dtype (strict: "1.5" is not a number, true is not
1.0), its min/max as ge/le, `allow_inf_nan=False` (NaN and Infinity are not values
a model can be judged on) and `extra="forbid"` (a misspelt column is an error, not a
silently ignored field). FastAPI puts these models into /docs and /openapi.json, so
every field is documented with its range.

Field names of the generated model are internal (`c0`, `c1`, ...); the contract's
column names are their aliases. That keeps any column name legal (a column called
`model_config` or `Amount (EUR)` cannot clash with pydantic), while the JSON
payloads, the schema and the error locations all use the contract's names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.config import ColumnSpec, Contract

# The score store's record_id column is String(128): a longer id could not be stored.
RECORD_ID_MAX_LENGTH = 128
SCORE_ID_MAX_LENGTH = 64
SOURCE_MAX_LENGTH = 100

RECORD_TAG = "record"
BATCH_TAG = "batch"

_PY_TYPES: dict[str, type] = {"float": float, "int": int, "string": str, "bool": bool}
_TYPE_WORDS = {"float": "number", "int": "integer", "string": "string", "bool": "boolean"}


def _exact_type(dtype: str) -> Callable[[Any], Any]:
    """A before-check that gives Literal fields the strictness of the other fields.

    Pydantic cannot make a Literal strict, and Literal[0, 1] accepts true and 1.0
    because they compare equal to 1. The contract says int, so those are type errors.
    """
    kind = _PY_TYPES[dtype]

    def check(value: Any) -> Any:
        if value is None:
            return value
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) and kind is not bool:
            ok = False
        if not ok:
            raise PydanticCustomError(
                f"{kind.__name__}_type", f"Input should be a valid {_TYPE_WORDS[dtype]}"
            )
        return value

    return check


def _annotation(spec: ColumnSpec) -> Any:
    """The Python type of one column: a Literal when the contract lists allowed values."""
    kind: Any = _PY_TYPES[spec.dtype]
    if spec.allowed:
        kind = Annotated[Literal[tuple(spec.allowed)], BeforeValidator(_exact_type(spec.dtype))]
    return kind | None if spec.nullable else kind


def _example_value(spec: ColumnSpec) -> Any:
    """A value that satisfies the rule, so /docs' "Try it out" works unedited."""
    if spec.allowed:
        return spec.allowed[0]
    if spec.dtype == "string":
        return "tx-000001"
    if spec.dtype == "bool":
        return False
    low = spec.min if spec.min is not None else None
    high = spec.max if spec.max is not None else None
    value = 0.0
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    return int(value) if spec.dtype == "int" else float(value)


def _field(spec: ColumnSpec, *, is_id: bool) -> tuple[Any, Any]:
    rules: dict[str, Any] = {} if spec.allowed else {"strict": True}
    if spec.dtype in ("float", "int"):
        if spec.min is not None:
            rules["ge"] = spec.min
        if spec.max is not None:
            rules["le"] = spec.max
    kind = _annotation(spec)
    if is_id and spec.dtype == "string":
        # The store keeps ids as String(128); a longer one could not be stored.
        rules.update(min_length=1, max_length=RECORD_ID_MAX_LENGTH)
    role = "record id" if is_id else spec.role.value
    description = f"{spec.description} ({role}, {spec.dtype})".strip() if spec.description else (
        f"{role}, {spec.dtype}"
    )
    return kind, Field(alias=spec.name, description=description, **rules)


@dataclass(frozen=True)
class RecordSchema:
    """The generated record model and the column order the model expects."""

    model: type[BaseModel]
    id_column: str
    inputs: tuple[str, ...]
    # attribute name on the generated model for each contract column
    attributes: dict[str, str]
    # every input is a non-nullable number: rows can become one float64 array at once
    numeric: bool = False

    def values(self, record: BaseModel) -> tuple[str, tuple[Any, ...]]:
        """(record id, model input values in `inputs` order) of one validated record."""
        get = record.__dict__
        return str(get[self.attributes[self.id_column]]), tuple(
            get[self.attributes[name]] for name in self.inputs
        )

    @property
    def example(self) -> dict[str, Any]:
        return dict(self.model.model_config.get("json_schema_extra", {})["examples"][0])


def record_schema(contract: Contract) -> RecordSchema:
    """Build the pydantic model of one record from the contract (id column + model inputs)."""
    specs = {s.name: s for s in contract.specs}
    id_column = contract.id_column
    inputs = [name for name in contract.model_inputs if name != id_column]
    columns = [id_column, *inputs]
    fields: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    example: dict[str, Any] = {}
    for index, name in enumerate(columns):
        attribute = f"c{index}"
        attributes[name] = attribute
        fields[attribute] = _field(specs[name], is_id=name == id_column)
        example[name] = _example_value(specs[name])
    config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        frozen=True,
        populate_by_name=False,
        json_schema_extra={"examples": [example]},
    )
    model = create_model("Record", __config__=config, **fields)
    model.__doc__ = (
        "One record to score: the contract's id column and the model inputs, each with "
        "the type and range of the data contract."
    )
    numeric = all(
        specs[n].dtype in ("float", "int") and not (specs[n].nullable or specs[n].allowed)
        for n in inputs
    )
    return RecordSchema(
        model=model, id_column=id_column, inputs=tuple(inputs), attributes=attributes,
        numeric=numeric,
    )


def _shape(value: Any) -> str:
    return BATCH_TAG if isinstance(value, list) else RECORD_TAG


def score_request_type(schema: RecordSchema, max_batch: int) -> Any:
    """A record object, or a JSON array of up to `max_batch` records.

    The discriminator picks the branch from the JSON shape, so an error in a record
    reports that record's field instead of a second, confusing "should be a list".
    """
    batch = Annotated[
        list[schema.model],  # type: ignore[name-defined]
        Field(min_length=1, max_length=max_batch),
    ]
    return Annotated[
        Annotated[schema.model, Tag(RECORD_TAG)] | Annotated[batch, Tag(BATCH_TAG)],
        Discriminator(_shape),
    ]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreResult(_Out):
    """The answer for one record; `score_id` finds it again in the store."""

    score_id: str = Field(description="Id of the stored score: use it for labels and audit.")
    record_id: str = Field(description="The record id as sent.")
    score: float = Field(ge=0, le=1, description="Probability of the positive class.")
    decision: Literal[0, 1] = Field(description="1 when score >= threshold.")
    threshold: float
    model_name: str
    model_version: str


BY_SCORE_TAG = "by_score_id"
BY_RECORD_TAG = "by_record_id"
UNION_TAGS = frozenset({RECORD_TAG, BATCH_TAG, BY_SCORE_TAG, BY_RECORD_TAG})


def _label_key(value: Any) -> str:
    return BY_SCORE_TAG if isinstance(value, dict) and "score_id" in value else BY_RECORD_TAG


def label_request_model(contract: Contract, max_labels: int) -> type[BaseModel]:
    """The labels body: items named by score id or by record id, never both, never neither.

    Two item models in a discriminated union, rather than one model with two optional
    keys and a validator, so that "exactly one of" is in the published schema too (a
    client generated from /openapi.json cannot build an item the server refuses). The
    label's type and allowed values come from the contract's target column.
    """
    target = next(s for s in contract.specs if s.name == contract.target)
    label_type = _annotation(target.model_copy(update={"nullable": False}))
    rules: dict[str, Any] = {} if target.allowed else {"strict": True}
    label = (label_type, Field(description=f"Ground truth ({target.name}).", **rules))
    config = ConfigDict(extra="forbid", frozen=True)
    by_score = create_model(
        "LabelByScoreId",
        __config__=config,
        score_id=(str, Field(min_length=1, max_length=SCORE_ID_MAX_LENGTH, strict=True,
                             description="A score_id returned by POST /v1/score.")),
        label=label,
    )
    by_record = create_model(
        "LabelByRecordId",
        __config__=config,
        record_id=(str, Field(min_length=1, max_length=RECORD_ID_MAX_LENGTH, strict=True,
                              description="The record id as sent for scoring (every score "
                                          "of that record gets the label).")),
        label=label,
    )
    item = Annotated[
        Annotated[by_score, Tag(BY_SCORE_TAG)] | Annotated[by_record, Tag(BY_RECORD_TAG)],
        Discriminator(_label_key),
    ]
    return create_model(
        "LabelRequest",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[item], Field(min_length=1, max_length=max_labels)),  # type: ignore[valid-type]
        source=(
            str,
            Field("api", min_length=1, max_length=SOURCE_MAX_LENGTH, strict=True,
                  description="Who says so (stored with the label)."),
        ),
    )


class LabelResult(_Out):
    stored: int = Field(description="Labels inserted or overwritten (idempotent upsert).")
    environment: str
    by_score_id: int
    by_record_id: int


class StoredScore(_Out):
    """A stored score with its full lineage and, once it arrived, its ground truth."""

    score_id: str
    record_id: str
    frame: int | None
    score: float
    decision: int
    threshold: float
    model_name: str
    model_version: str
    run_id: str
    git_commit: str
    environment: str
    channel: str
    source: str
    scored_at: datetime
    label: int | None = None
    labeled_at: datetime | None = None

    @field_validator("scored_at", "labeled_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """SQLite hands back naive datetimes; the store writes UTC, so say so."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class QualityReport(_Out):
    """Realised quality of the stored scores in a time window, against their labels."""

    environment: str
    scored_from: datetime | None
    scored_to: datetime | None
    scores: int = Field(description="Scores stored in the window.")
    rows: int = Field(description="Scores in the window that have a label.")
    positives: int | None = None
    predicted_positives: int | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None
    reason: str | None = None


class ModelInfo(_Out):
    model_name: str
    model_version: str
    run_id: str
    threshold: float
    git_commit: str
    uri: str
    loaded_at: datetime


class ReloadResult(_Out):
    changed: bool
    previous_version: str | None
    model: ModelInfo | None


class Health(_Out):
    status: str


class Readiness(_Out):
    status: Literal["ready", "not ready"]
    reasons: list[str] = []
    model: ModelInfo | None = None


class Problem(_Out):
    """Any error that is not a validation error."""

    detail: str


class FieldError(_Out):
    loc: list[str | int]
    field: str
    rule: str
    msg: str
    value: Any = None


class ValidationProblem(_Out):
    """422/413: every broken rule, each naming the field, the rule and the value."""

    error: str
    detail: list[FieldError]
