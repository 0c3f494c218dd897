"""Request and response models generated from the data contract.

The contract in `params.yaml` is the single statement of what a record is; the API
must not keep a second, hand-written copy that could drift from it. So the record
model is built with `pydantic.create_model` from the contract's column specs: the id
column (when the contract declares one) plus the model inputs (`Settings.model_inputs`),
each with its dtype and rules:

* numbers are strict ("1.5" is not a number, true is not 1.0), with min/max as ge/le
  and `allow_inf_nan=False` (NaN and Infinity are not values a model can be judged on);
* a string feature is a category: its `allowed` values are an enum in the schema;
  without `allowed` any string is a category (the model must cope with unseen ones);
* a bool takes JSON true/false and the column's own tokens ("Y"/"N", "yes"/"no", ...);
* a datetime takes ISO 8601 text (or the column's strptime `format`), kept as naive UTC;
* `nullable: true` fields accept null, every other field refuses it;
* text never holds a control character (NUL, ESC, DEL, C1; free text may hold a tab or
  a line break) nor a lone UTF-16 surrogate: PostgreSQL refuses NUL, and one refused
  row would fail every request of its group commit. An id is never blank either;
* `extra="forbid"`: a misspelt column is an error, not a silently ignored field.

FastAPI puts these models into /docs and /openapi.json, so every field is documented
with its type, range or allowed values.

Field names of the generated model are internal (`c0`, `c1`, ...); the contract's
column names are their aliases. That keeps any column name legal (a column called
`model_config` or `Amount (EUR)` cannot clash with pydantic), while the JSON
payloads, the schema and the error locations all use the contract's names.

Every validated value has one Python type per dtype (float, int, bool, str, naive UTC
datetime), so `RecordSchema.frame` can hand the model the same dtypes training saw and
`pipeline.service.ids` can hash a record's content the same way every time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.config import NUMERIC, ColumnSpec, Contract, Role

# The score store's record_id column is String(128): a longer id could not be stored.
RECORD_ID_MAX_LENGTH = 128
SCORE_ID_MAX_LENGTH = 64
SOURCE_MAX_LENGTH = 100

RECORD_TAG = "record"
BATCH_TAG = "batch"

_PY_TYPES: dict[str, type] = {"float": float, "int": int, "string": str, "bool": bool}
_TYPE_WORDS = {"float": "number", "int": "integer", "string": "string", "bool": "boolean"}

# What a datetime64[ns] column can hold: a datetime outside would fail in pandas.
_EARLIEST = datetime(1677, 9, 22)
_LATEST = datetime(2262, 4, 11)
EXAMPLE_DATETIME = datetime(2024, 1, 1, 12, 0, 0)
# A category nobody trained on: the example (and the warm-up) uses it on purpose.
EXAMPLE_CATEGORY = "example"

# What no text may hold: C0 controls, DEL, C1 controls (Unicode category Cc) and lone
# UTF-16 surrogates (JSON "\ud800" decodes to one; it cannot be encoded, stored or
# answered). Free text keeps tab, line feed and carriage return; an id keeps none.
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _text_rule(*, is_id: bool) -> Callable[[str], str]:
    """An after-check for text: no control characters (ids: none at all), no blank id.

    Pydantic's own str validation already refuses lone surrogates (`string_unicode`);
    the pattern covers them too, so the rule holds wherever this check runs. The error
    names the code point and its position, never the character itself.
    """
    pattern = _CONTROL_IN_ID if is_id else _CONTROL_IN_TEXT

    def check(value: str) -> str:
        found = pattern.search(value)
        if found is not None:
            raise PydanticCustomError(
                "control_character",
                "Input should not contain control characters: found U+{code} at position "
                "{position}",
                {"code": f"{ord(found.group()):04X}", "position": found.start()},
            )
        if is_id and not value.strip():
            raise PydanticCustomError("blank", "Input should not be empty or only whitespace")
        return value

    return check


def text_type(*, is_id: bool, **rules: Any) -> Any:
    """A strict str with `rules` (min_length, max_length), then the text rule.

    The rules sit inside the annotation, before the check: put on the outer Field of an
    annotated type, pydantic would check lengths after the check, as generic `too_long`
    errors about "items" instead of `string_too_long`.
    """
    rules = {**rules, "strict": True}
    return Annotated[str, Field(**rules), AfterValidator(_text_rule(is_id=is_id))]


def _exact_type(dtype: str) -> Callable[[Any], Any]:
    """A before-check that gives Literal fields the strictness of the other fields.

    Pydantic cannot make a Literal strict, and Literal[0, 1] accepts true and 1.0
    because they compare equal to 1. The contract says int, so those are type errors.
    """
    kind = _PY_TYPES[dtype]

    def check(value: Any) -> Any:
        # None never gets here for a nullable field (`X | None` takes it first).
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) and kind is not bool:
            ok = False
        if not ok:
            raise PydanticCustomError(
                f"{kind.__name__}_type", f"Input should be a valid {_TYPE_WORDS[dtype]}"
            )
        return value

    return check


def _same_token(value: Any, token: Any) -> bool:
    """Equal and of the same kind: 1 is not the token "1", and true is not the token 1."""
    if isinstance(value, bool) or isinstance(token, bool):
        return isinstance(value, bool) and isinstance(token, bool) and value is token
    if isinstance(value, int) and isinstance(token, int):
        return value == token
    return isinstance(value, str) and isinstance(token, str) and value == token


def _bool_tokens(spec: ColumnSpec) -> list[Any]:
    """The tokens a bool column accepts besides JSON true/false, as the schema lists them."""
    return [t for t in (*spec.true_tokens, *spec.false_tokens) if not isinstance(t, bool)]


def bool_parser(spec: ColumnSpec) -> Callable[[Any], bool]:
    """JSON true/false, or one of the column's `true_values`/`false_values` tokens."""
    true_tokens, false_tokens = spec.true_tokens, spec.false_tokens
    shown = ", ".join(repr(t) for t in _bool_tokens(spec))

    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and not isinstance(value, bool):
            if any(_same_token(value, t) for t in true_tokens):
                return True
            if any(_same_token(value, t) for t in false_tokens):
                return False
            if isinstance(value, str):
                raise PydanticCustomError(
                    "bool_parsing",
                    "Input should be true, false or one of the tokens {tokens}",
                    {"tokens": shown},
                )
        raise PydanticCustomError(
            "bool_type",
            "Input should be true, false or one of the tokens {tokens}",
            {"tokens": shown},
        )

    return parse


def datetime_parser(spec: ColumnSpec) -> Callable[[Any], datetime]:
    """ISO 8601 text (or the column's strptime `format`) -> a naive UTC datetime.

    Text only: pydantic would also read 0.5 as a Unix time, which nobody means. A time
    without an offset is taken as UTC; one with an offset is converted to UTC.
    """
    fmt = spec.format
    expected = (
        f"a date-time in the format {fmt}"
        if fmt
        else ("an ISO 8601 date-time such as 2026-11-22T08:00:00Z")
    )

    def parse(value: Any) -> datetime:
        if not isinstance(value, str):
            raise PydanticCustomError("datetime_type", f"Input should be {expected}")
        try:
            # RFC 3339 allows a lower-case t and z; fromisoformat does not.
            parsed = datetime.strptime(value, fmt) if fmt else datetime.fromisoformat(value.upper())
        except ValueError:
            raise PydanticCustomError("datetime_parsing", f"Input should be {expected}") from None
        try:
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except (OverflowError, ValueError):
            parsed = _LATEST.replace(year=9999)  # reported as out of range below
        if not _EARLIEST <= parsed <= _LATEST:
            raise PydanticCustomError(
                "datetime_range",
                f"Input should be between {_EARLIEST.date()} and {_LATEST.date()}",
            )
        return parsed

    return parse


def _value_type(spec: ColumnSpec, *, is_id: bool = False) -> tuple[Any, dict[str, Any]]:
    """The Python type of one column's values (without null) and its Field rules.

    Free strings get the text rule (`_text_rule`): for an id the strict one.
    """
    if spec.dtype == "bool":
        schema = {"anyOf": [{"type": "boolean"}, {"enum": _bool_tokens(spec)}]}
        if not _bool_tokens(spec):
            schema = {"type": "boolean"}
        return Annotated[bool, PlainValidator(bool_parser(spec)), WithJsonSchema(schema)], {}
    if spec.dtype == "datetime":
        schema: dict[str, Any] = {"type": "string"}
        if spec.format:
            schema["description"] = f"date-time as {spec.format} (strptime format), UTC"
        else:
            schema["format"] = "date-time"
        return Annotated[
            datetime, PlainValidator(datetime_parser(spec)), WithJsonSchema(schema)
        ], {}
    if spec.allowed:
        kind: Any = Annotated[
            Literal[tuple(spec.allowed)], BeforeValidator(_exact_type(spec.dtype))
        ]
        if spec.dtype == "float":  # one type per dtype: a listed 1 arrives as 1.0
            kind = Annotated[kind, AfterValidator(float)]
        return kind, {}
    rules: dict[str, Any] = {"strict": True}
    if spec.dtype in NUMERIC:
        if spec.min is not None:
            rules["ge"] = spec.min
        if spec.max is not None:
            rules["le"] = spec.max
    if spec.dtype == "string":
        if is_id:  # the store keeps ids as String(128); a longer one could not be stored
            rules.update(min_length=1, max_length=RECORD_ID_MAX_LENGTH)
        return text_type(is_id=is_id, **rules), {}
    return _PY_TYPES[spec.dtype], rules


def _annotation(spec: ColumnSpec, *, is_id: bool = False) -> Any:
    """The Python type of one column: nullable ones also take None."""
    kind, _ = _value_type(spec, is_id=is_id)
    return kind | None if spec.nullable else kind


def _example_value(spec: ColumnSpec) -> Any:
    """A value that satisfies the rule, so /docs' "Try it out" works unedited."""
    if spec.allowed:
        return spec.allowed[0]
    if spec.dtype == "string":
        return "tx-000001" if spec.role == Role.ID else EXAMPLE_CATEGORY
    if spec.dtype == "bool":
        return False
    if spec.dtype == "datetime":
        if spec.format:
            return EXAMPLE_DATETIME.strftime(spec.format)
        return EXAMPLE_DATETIME.isoformat() + "Z"
    value = 0.0
    if spec.min is not None and value < spec.min:
        value = spec.min
    if spec.max is not None and value > spec.max:
        value = spec.max
    return int(value) if spec.dtype == "int" else float(value)


def _field(spec: ColumnSpec, *, is_id: bool = False, optional: bool = False) -> tuple[Any, Any]:
    _, rules = _value_type(spec, is_id=is_id)
    kind = _annotation(spec, is_id=is_id)
    if optional and not spec.nullable:
        kind = kind | None  # left out or null: the id is derived
    role = "record id" if is_id else spec.role.value
    if spec.is_categorical:
        role = "category" if spec.allowed else "category, any string"
    notes = [f"{role}, {spec.dtype}"]
    if spec.dtype == "datetime":
        notes.append(f"format {spec.format}" if spec.format else "ISO 8601")
        notes.append("UTC unless an offset is given")
    if spec.nullable:
        notes.append("may be null")
    if optional:
        notes.append("optional: when absent or null, derived from the record's content")
    what = "; ".join(notes)
    description = f"{spec.description} ({what})" if spec.description else what
    default: dict[str, Any] = {"default": None} if optional else {}
    return kind, Field(alias=spec.name, description=description, **default, **rules)


@dataclass(frozen=True)
class RecordSchema:
    """The generated record model, the model inputs in order and how to frame them."""

    model: type[BaseModel]
    # The declared id column (None: the contract has none, every id is derived).
    id_column: str | None
    inputs: tuple[str, ...]
    # dtype of each input, in `inputs` order
    dtypes: tuple[str, ...]
    # attribute name on the generated model for each contract column
    attributes: dict[str, str]
    # every input is a non-nullable number: rows can become one float64 array at once
    numeric: bool = False
    # the declared id may be left out (the id spec says `required: false`)
    id_optional: bool = False
    nullable: tuple[str, ...] = ()
    # the contract says the id is `unique`: one request may not carry it twice
    id_unique: bool = False

    def values(self, record: BaseModel) -> tuple[str | None, tuple[Any, ...]]:
        """(record id or None, model input values in `inputs` order) of one validated record.

        None when the record carries no id (the contract declares none, or it is
        optional and was left out): `pipeline.service.ids` derives one.
        """
        get = record.__dict__
        values = tuple(get[self.attributes[name]] for name in self.inputs)
        if self.id_column is None:
            return None, values
        record_id = get[self.attributes[self.id_column]]
        return (None if record_id is None else str(record_id)), values

    def frame(self, rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
        """The model's input frame: `inputs` in order, one dtype per contract dtype.

        Numbers and booleans become float64 (null: NaN; true/false: 1.0/0.0),
        categories Python str in an object column (null: None), datetimes naive UTC
        datetime64[ns] (null: NaT). All-numeric contracts take a float64 array in one
        step, four times faster than building columns on the single-record path.
        """
        columns = list(self.inputs)
        if self.numeric:
            return pd.DataFrame(
                np.asarray(rows, dtype="float64").reshape(len(rows), len(columns)),
                columns=columns,
            )
        by_column = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
        data: dict[str, Any] = {}
        for name, dtype, values in zip(columns, self.dtypes, by_column, strict=True):
            if dtype in NUMERIC or dtype == "bool":
                data[name] = np.asarray(values, dtype="float64")  # None -> NaN
            elif dtype == "datetime":
                data[name] = pd.Series(values, dtype="datetime64[ns]")
            else:
                data[name] = pd.Series(values, dtype=object)
        return pd.DataFrame(data, columns=columns)

    @property
    def example(self) -> dict[str, Any]:
        return dict(self.model.model_config.get("json_schema_extra", {})["examples"][0])

    def probe_rows(self) -> list[tuple[Any, ...]]:
        """Rows a model must score before it may serve: the example (its categories are
        ones nobody trained on) and, when some inputs are nullable, the example with
        those inputs null."""
        _, values = self.values(self.model.model_validate(self.example))
        rows = [values]
        if self.nullable:
            rows.append(
                tuple(
                    None if name in self.nullable else value
                    for name, value in zip(self.inputs, values, strict=True)
                )
            )
        return rows


def record_schema(contract: Contract, inputs: Sequence[str]) -> RecordSchema:
    """Build the pydantic model of one record: the contract's id column, if it declares
    one, plus `inputs` (pass `Settings.model_inputs`), each with its contract rule.

    The id field is required when the id spec is `required: true`, optional when it is
    `required: false`, and absent when the contract declares no id column.
    """
    specs = contract.by_name
    unknown = [name for name in inputs if name not in specs]
    if unknown:
        raise ValueError(f"model inputs {unknown} are not columns of the contract")
    id_column = contract.declared_id
    inputs = [name for name in inputs if name != id_column]
    fields: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    example: dict[str, Any] = {}
    id_optional = False
    if id_column is not None:
        id_optional = not specs[id_column].required
        attributes[id_column] = "c0"
        fields["c0"] = _field(specs[id_column], is_id=True, optional=id_optional)
        example[id_column] = _example_value(specs[id_column])
    for name in inputs:
        attribute = f"c{len(attributes)}"
        attributes[name] = attribute
        fields[attribute] = _field(specs[name])
        example[name] = _example_value(specs[name])
    config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        frozen=True,
        populate_by_name=False,
        json_schema_extra={"examples": [example]},
    )
    model = create_model("Record", __config__=config, **fields)
    said = {
        None: "The contract declares no id column: each record's id is derived from its content. ",
        True: f"The id ({id_column}) may be left out: it is then derived from the record's "
        "content. ",
        False: "",
    }[None if id_column is None else id_optional]
    model.__doc__ = (
        "One record to score: the model inputs, each with the type and rule of the data "
        f"contract, and the contract's id column. {said}".strip()
    )
    dtypes = tuple(specs[name].dtype for name in inputs)
    numeric = all(specs[name].dtype in NUMERIC and not specs[name].nullable for name in inputs)
    return RecordSchema(
        model=model,
        id_column=id_column,
        inputs=tuple(inputs),
        dtypes=dtypes,
        attributes=attributes,
        numeric=numeric,
        id_optional=id_optional,
        nullable=tuple(name for name in inputs if specs[name].nullable),
        id_unique=id_column is not None and specs[id_column].unique,
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
    record_id: str = Field(
        description="The record id as sent or, for a record without one, the id derived "
        "from its content (use it for labels by record_id)."
    )
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


def label_encoder(target: ColumnSpec) -> Callable[[Any], int]:
    """A validated label -> 1 when it is the target's positive class, else 0."""
    positive = target.positive_class
    try:
        if target.dtype == "string":
            positive = str(positive)  # as batch compares it (pipeline.contract.binary_target)
        elif target.dtype == "bool":
            positive = bool_parser(target)(positive)  # `positive: Y` names a token
        elif target.dtype == "datetime" and isinstance(positive, str):
            positive = datetime_parser(target)(positive)
    except PydanticCustomError:
        raise ValueError(
            f"target {target.name!r}: positive {positive!r} is not a value of its dtype "
            f"{target.dtype}"
        ) from None

    def encode(value: Any) -> int:
        return int(value == positive)

    return encode


def label_type(target: ColumnSpec) -> Any:
    """The label's type: the target's own values (its `allowed` ones when listed; for a
    bool target true/false and its tokens), validated strictly, then encoded 1/0.

    An int target takes its ints (0/1 by default), a string target its strings ("bad" /
    "good"); anything else, or a value outside `allowed`, is a 422 naming the field.
    """
    value_type, rules = _value_type(target.model_copy(update={"nullable": False}))
    if rules:
        value_type = Annotated[value_type, Field(**rules)]
    return Annotated[value_type, AfterValidator(label_encoder(target))]


def label_request_model(contract: Contract, max_labels: int) -> type[BaseModel]:
    """The labels body: items named by score id or by record id, never both, never neither.

    Two item models in a discriminated union, rather than one model with two optional
    keys and a validator, so that "exactly one of" is in the published schema too (a
    client generated from /openapi.json cannot build an item the server refuses). The
    label's type and allowed values come from the contract's target column.
    """
    target = contract.target_spec
    label = (
        label_type(target),
        Field(
            description=(
                f"Ground truth ({target.name}), as the target's own value; stored as 1 when it is "
                f"the positive class {target.positive_class!r}, else 0."
            )
        ),
    )
    config = ConfigDict(extra="forbid", frozen=True)
    by_score = create_model(
        "LabelByScoreId",
        __config__=config,
        score_id=(
            text_type(is_id=True, min_length=1, max_length=SCORE_ID_MAX_LENGTH),
            Field(
                description="A score_id returned by POST /v1/score.",
            ),
        ),
        label=label,
    )
    by_record = create_model(
        "LabelByRecordId",
        __config__=config,
        record_id=(
            text_type(is_id=True, min_length=1, max_length=RECORD_ID_MAX_LENGTH),
            Field(
                description="The record id as sent for scoring (every score "
                "of that record gets the label).",
            ),
        ),
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
            # A name, not prose: the rules of an id.
            text_type(is_id=True, min_length=1, max_length=SOURCE_MAX_LENGTH),
            Field(
                "api",
                description="Who says so (stored with the label).",
            ),
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
    shadow: bool = Field(
        False, description="A challenger's score computed in shadow: stored, never answered."
    )
    shadow_of: str | None = Field(
        None, description="For a shadow score: the score_id of the answered score it shadows."
    )
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
    rows: int = Field(description="Scores read that have a label (of the sample, if sampled).")
    sampled: bool = Field(
        False,
        description="True: the window held more scores than the service reads for one "
        "report (CRISPML_SERVICE_REPORT_MAX_ROWS); the figures are of a random sample.",
    )
    sampled_scores: int | None = Field(
        None, description="Scores in the sample (null: every score of the window was read)."
    )
    sample_reason: str | None = Field(None, description="Why and how the report was sampled.")
    positives: int | None = None
    predicted_positives: int | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None
    reason: str | None = None
    online: list[OnlineDay] = Field(
        default_factory=list,
        description="The serving versions' online scores in the window, per UTC day of "
        "scoring, answered and shadow apart.",
    )
    shadow: ShadowReport | None = Field(
        None,
        description="Champion against challenger on the same records (when a "
        "challenger is loaded or shadow scores exist in the window).",
    )


class OnlineDay(_Out):
    """One model version's online scores of one UTC day, against the labels so far."""

    day: date
    model_version: str
    shadow: bool = Field(description="True: the version's shadow scores as a challenger.")
    scores: int
    labelled: int
    positives: int
    flagged: int = Field(description="Scores with decision 1.")
    pr_auc: float | None = Field(None, description="On the labelled scores (both classes).")


class ShadowSide(_Out):
    model_version: str
    scores: int = Field(description="This side's scores of the compared pairs.")
    labelled: int
    pr_auc: float | None = Field(None, description="On the labelled pairs.")
    flagged: int


class ShadowReport(_Out):
    """Champion and challenger on the same records: the paired bootstrap of PR-AUC."""

    champion: ShadowSide
    challenger: ShadowSide
    pairs: int = Field(description="Answered scores that have a shadow score.")
    labelled_pairs: int
    positives: int
    disagreements: int = Field(description="Pairs whose decisions differ.")
    verdict: str | None = Field(
        None, description="passed, failed or insufficient_evidence (no labels: null)."
    )
    difference: float | None = Field(None, description="PR-AUC challenger - champion.")
    low: float | None = None
    high: float | None = None
    confidence: float | None = None
    margin: float | None = None
    reason: str


QualityReport.model_rebuild()  # its fields name the two models defined after it


class ModelInfo(_Out):
    model_name: str
    model_version: str
    run_id: str
    threshold: float
    git_commit: str
    uri: str
    loaded_at: datetime
    created_at: datetime | None = None


class ReloadResult(_Out):
    changed: bool
    previous_version: str | None
    model: ModelInfo | None
    challenger: ModelInfo | None = Field(
        None, description="The challenger scored in shadow after the reload, if any."
    )


class Health(_Out):
    status: str


class Readiness(_Out):
    status: Literal["ready", "not ready"]
    reasons: list[str] = []
    model: ModelInfo | None = None
    challenger: ModelInfo | None = None


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
