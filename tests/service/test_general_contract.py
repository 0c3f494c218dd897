"""The request models and the model's input frame for a general contract.

Categories (with and without `allowed`), booleans with the table's own tokens,
nullable features, datetimes, no id column (ids derived from content), an optional id,
and targets whose classes are words rather than 0/1. Each contract here is tiny and
built in the test, so these checks do not depend on params.yaml.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.config import Contract
from pipeline.service.contract import (
    RecordSchema,
    label_request_model,
    record_schema,
    score_request_type,
)
from pipeline.service.errors import field_errors
from pipeline.service.ids import derive_record_ids

from .general_case import FEATURES, INPUTS, RECORD, TARGET


def _contract(*extra: dict[str, Any], target: dict[str, Any] | None = None) -> Contract:
    return Contract.model_validate({"columns": [*extra, *FEATURES, target or TARGET]})


@pytest.fixture(scope="module")
def schema() -> RecordSchema:
    """No id column at all: every record's id is derived."""
    return record_schema(_contract(), INPUTS)


def _errors(model: type[BaseModel], data: Any) -> list[tuple[str, str, Any]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [(e["field"], e["rule"], e["value"]) for e in field_errors(caught.value.errors())]


def _values(schema: RecordSchema, **changes: Any) -> dict[str, Any]:
    record = schema.model.model_validate({**RECORD, **changes})
    record_id, values = schema.values(record)
    assert record_id is None
    return dict(zip(schema.inputs, values, strict=True))


# ------------------------------------------------------------------ the published schema


def test_schema_documents_categories_tokens_nulls_and_datetimes(schema) -> None:
    json_schema = schema.model.model_json_schema()
    properties = json_schema["properties"]
    assert list(properties) == INPUTS  # no id field: the contract declares none
    assert json_schema["required"] == INPUTS
    assert properties["purpose"]["enum"] == ["car", "house", "education"]
    assert properties["employer"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert properties["homeowner"]["anyOf"] == [{"type": "boolean"}, {"enum": ["Y", "N"]}]
    has_phone = properties["has_phone"]["anyOf"]
    assert has_phone[0] == {"type": "boolean"} and has_phone[-1] == {"type": "null"}
    assert set(has_phone[1]["enum"]) == {"true", "True", "TRUE", 1, "false", "False", "FALSE", 0}
    assert properties["applied_at"] == {
        **properties["applied_at"],
        "type": "string",
        "format": "date-time",
    }
    opened = properties["opened"]["anyOf"][0]
    assert opened["type"] == "string" and "%d/%m/%Y" in opened["description"]
    income = properties["income"]["anyOf"]
    assert income == [{"type": "number", "minimum": 0}, {"type": "null"}]
    assert properties["children"]["type"] == "integer"
    assert json_schema["additionalProperties"] is False


def test_the_example_is_valid_and_uses_a_category_nobody_trained_on(schema) -> None:
    example = schema.example
    assert example["employer"] == "example" and example["purpose"] == "car"
    assert example["opened"] == "01/01/2024"
    schema.model.model_validate(example)
    # The warm-up scores the example, and the example with every nullable input null.
    rows = schema.probe_rows()
    assert len(rows) == 2
    nulls = dict(zip(schema.inputs, rows[1], strict=True))
    assert [k for k, v in nulls.items() if v is None] == [
        "income",
        "employer",
        "has_phone",
        "opened",
    ]


# ------------------------------------------------------------------ field rules


def test_categories_with_allowed_values_refuse_others(schema) -> None:
    assert _values(schema, purpose="house")["purpose"] == "house"
    assert _errors(schema.model, {**RECORD, "purpose": "boat"}) == [
        ("purpose", "literal_error", "boat")
    ]
    assert _errors(schema.model, {**RECORD, "purpose": 1}) == [("purpose", "str_type", 1)]
    assert _errors(schema.model, {**RECORD, "purpose": None}) == [("purpose", "str_type", None)]


def test_categories_without_allowed_values_take_any_string_but_only_strings(schema) -> None:
    assert _values(schema, employer="never seen before")["employer"] == "never seen before"
    assert _values(schema, employer="")["employer"] == ""
    assert _errors(schema.model, {**RECORD, "employer": 7}) == [("employer", "string_type", 7)]


@pytest.mark.parametrize(
    ("field", "given", "expected"),
    [
        ("homeowner", "Y", True),
        ("homeowner", "N", False),
        ("homeowner", True, True),
        ("homeowner", False, False),
        # default tokens: true/false in three spellings, and 1/0
        ("has_phone", "true", True),
        ("has_phone", "FALSE", False),
        ("has_phone", 1, True),
        ("has_phone", 0, False),
        ("has_phone", None, None),
    ],
)
def test_booleans_take_json_booleans_and_the_columns_tokens(schema, field, given, expected):
    assert _values(schema, **{field: given})[field] is expected


@pytest.mark.parametrize(
    ("field", "given", "rule"),
    [
        ("homeowner", "yes", "bool_parsing"),
        ("homeowner", "y", "bool_parsing"),
        ("homeowner", 1, "bool_type"),  # this column's tokens are Y and N only
        ("homeowner", None, "bool_type"),
        ("has_phone", 1.0, "bool_type"),
        ("has_phone", 2, "bool_type"),
        ("has_phone", "1", "bool_parsing"),
    ],
)
def test_booleans_refuse_anything_else_naming_field_and_rule(schema, field, given, rule):
    assert _errors(schema.model, {**RECORD, field: given}) == [(field, rule, given)]


def test_nullable_fields_take_null_and_others_refuse_it(schema) -> None:
    values = _values(schema, income=None, employer=None, has_phone=None, opened=None)
    assert [values[k] for k in ("income", "employer", "has_phone", "opened")] == [None] * 4
    for field, rule in [
        ("children", "int_type"),
        ("purpose", "str_type"),
        ("homeowner", "bool_type"),
        ("applied_at", "datetime_type"),
    ]:
        assert _errors(schema.model, {**RECORD, field: None}) == [(field, rule, None)]
    # Null, yes; NaN, still no.
    assert _errors(schema.model, {**RECORD, "income": math.nan}) == [
        ("income", "finite_number", "NaN")
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-03-01T10:30:00+02:00", datetime(2024, 3, 1, 8, 30)),  # converted to UTC
        ("2024-03-01T08:30:00Z", datetime(2024, 3, 1, 8, 30)),
        ("2024-03-01t08:30:00z", datetime(2024, 3, 1, 8, 30)),  # RFC 3339 allows lower case
        ("2024-03-01T08:30:00", datetime(2024, 3, 1, 8, 30)),  # no offset: UTC
        ("2024-03-01", datetime(2024, 3, 1)),
    ],
)
def test_datetimes_take_iso_8601_as_naive_utc(schema, given, expected) -> None:
    assert _values(schema, applied_at=given)["applied_at"] == expected


def test_datetimes_with_a_format_take_that_format_only(schema) -> None:
    assert _values(schema, opened="31/12/2020")["opened"] == datetime(2020, 12, 31)
    assert _errors(schema.model, {**RECORD, "opened": "2020-12-31"}) == [
        ("opened", "datetime_parsing", "2020-12-31")
    ]


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        (1709280000, "datetime_type"),  # a Unix time is not a date-time here
        (0.5, "datetime_type"),
        ("yesterday", "datetime_parsing"),
        ("2024-02-30T00:00:00Z", "datetime_parsing"),
        ("1500-01-01T00:00:00Z", "datetime_range"),  # outside what datetime64[ns] holds
        ("9999-12-31T23:59:59-05:00", "datetime_range"),
    ],
)
def test_datetimes_refuse_numbers_nonsense_and_the_unrepresentable(schema, given, rule) -> None:
    assert _errors(schema.model, {**RECORD, "applied_at": given}) == [("applied_at", rule, given)]


def test_a_batch_names_the_record_and_the_field(schema) -> None:
    body = TypeAdapter(score_request_type(schema, max_batch=3))
    with pytest.raises(ValidationError) as caught:
        body.validate_python([RECORD, {**RECORD, "homeowner": "maybe"}])
    errors = field_errors([{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()])
    assert [(e["field"], e["rule"]) for e in errors] == [("[1].homeowner", "bool_parsing")]


# ------------------------------------------------------------------ the frame the model sees


def test_the_frame_has_one_dtype_per_contract_dtype_and_the_inputs_order(schema) -> None:
    rows = [
        schema.values(schema.model.model_validate(RECORD))[1],
        schema.values(
            schema.model.model_validate(
                {
                    **RECORD,
                    "income": None,
                    "employer": None,
                    "has_phone": None,
                    "opened": None,
                    "homeowner": "N",
                    "children": 0,
                }
            )
        )[1],
    ]
    frame = schema.frame(rows)
    assert list(frame.columns) == INPUTS
    assert not schema.numeric
    dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    assert dtypes == {
        "applied_at": "datetime64[ns]",
        "income": "float64",
        "children": "float64",
        "purpose": "object",
        "employer": "object",
        "homeowner": "float64",
        "has_phone": "float64",
        "opened": "datetime64[ns]",
    }
    assert frame["applied_at"].tolist() == [pd.Timestamp("2024-03-01 08:30")] * 2
    assert frame["income"].tolist()[0] == 1200.5 and math.isnan(frame["income"].iloc[1])
    assert frame["homeowner"].tolist() == [1.0, 0.0]
    assert frame["has_phone"].iloc[0] == 1.0 and math.isnan(frame["has_phone"].iloc[1])
    assert frame["employer"].tolist() == ["acme", None]
    assert all(type(v) is str for v in frame["purpose"])  # Python str, not a pandas string
    assert frame["opened"].iloc[0] == pd.Timestamp("2019-01-15") and pd.isna(frame["opened"][1])


def test_all_numeric_inputs_take_the_fast_path() -> None:
    contract = Contract.model_validate(
        {
            "columns": [
                {"name": "a", "role": "feature", "dtype": "float"},
                {"name": "b", "role": "feature", "dtype": "int", "allowed": [1, 2, 3]},
                {"name": "y", "role": "target", "dtype": "int", "allowed": [0, 1]},
            ]
        }
    )
    schema = record_schema(contract, ["b", "a"])
    assert schema.numeric
    frame = schema.frame([(2, 0.5), (3, 1.5)])
    assert list(frame.columns) == ["b", "a"]
    assert frame.dtypes.tolist() == [np.dtype("float64")] * 2
    nullable = Contract.model_validate(
        {
            "columns": [
                {"name": "a", "role": "feature", "dtype": "float", "nullable": True},
                {"name": "y", "role": "target", "dtype": "int"},
            ]
        }
    )
    assert not record_schema(nullable, ["a"]).numeric


def test_a_float_column_keeps_floats_whatever_the_json_number() -> None:
    contract = Contract.model_validate(
        {
            "columns": [
                {"name": "a", "role": "feature", "dtype": "float", "allowed": [0.5, 1]},
                {"name": "b", "role": "feature", "dtype": "float"},
                {"name": "y", "role": "target", "dtype": "int"},
            ]
        }
    )
    schema = record_schema(contract, ["a", "b"])
    _, values = schema.values(schema.model.model_validate({"a": 1, "b": 3}))
    assert [type(v) for v in values] == [float, float]


# ------------------------------------------------------------------ ids


def _id_contract(required: bool) -> Contract:
    return _contract({"name": "loan_id", "role": "id", "dtype": "string", "required": required})


def test_a_required_id_must_be_sent() -> None:
    schema = record_schema(_id_contract(required=True), INPUTS)
    json_schema = schema.model.model_json_schema()
    assert json_schema["required"] == ["loan_id", *INPUTS]
    assert _errors(schema.model, RECORD) == [("loan_id", "missing", None)]
    assert _errors(schema.model, {**RECORD, "loan_id": None}) == [("loan_id", "string_type", None)]
    record_id, _ = schema.values(schema.model.model_validate({**RECORD, "loan_id": "L-1"}))
    assert record_id == "L-1"


def test_an_optional_id_may_be_left_out_or_null() -> None:
    schema = record_schema(_id_contract(required=False), INPUTS)
    assert "loan_id" not in schema.model.model_json_schema()["required"]
    for record in (RECORD, {**RECORD, "loan_id": None}):
        assert schema.values(schema.model.model_validate(record))[0] is None
    assert schema.values(schema.model.model_validate({**RECORD, "loan_id": "L-2"}))[0] == "L-2"
    assert _errors(schema.model, {**RECORD, "loan_id": ""}) == [("loan_id", "string_too_short", "")]


def test_without_an_id_column_an_id_field_is_an_unknown_field(schema) -> None:
    assert _errors(schema.model, {**RECORD, "record_id": "x"}) == [
        ("record_id", "extra_forbidden", "x")
    ]


def _rows(schema: RecordSchema, *records: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [schema.values(schema.model.model_validate(r))[1] for r in records]


def test_derived_ids_are_stable_for_identical_input_and_distinct_within_a_batch(schema) -> None:
    other = {**RECORD, "children": 3}
    rows = _rows(schema, RECORD, RECORD, other, RECORD)
    ids = derive_record_ids(schema.inputs, rows, [None] * 4)
    assert len(set(ids)) == 4  # two identical records in one request: two ids
    assert all(i.startswith("r-") and len(i) == 34 for i in ids)
    int(ids[0][2:], 16)
    # Alone in a later request, the record gets the id of its first occurrence again.
    assert derive_record_ids(schema.inputs, _rows(schema, RECORD), [None]) == [ids[0]]
    assert derive_record_ids(schema.inputs, _rows(schema, other), [None]) == [ids[2]]
    # Content, not spelling: "Y" and true, +02:00 and Z of the same instant, are one record.
    same = {**RECORD, "homeowner": True, "applied_at": "2024-03-01T08:30:00Z", "income": 1200.5}
    assert derive_record_ids(schema.inputs, _rows(schema, same), [None]) == [ids[0]]
    # Given ids pass through, and do not count as occurrences.
    mixed = derive_record_ids(schema.inputs, _rows(schema, RECORD, RECORD), ["given", None])
    assert mixed == ["given", ids[0]]


def test_the_derived_id_recipe_is_the_documented_one(schema) -> None:
    (row,) = _rows(schema, RECORD)
    content = json.dumps(
        {
            "applied_at": "2024-03-01T08:30:00",
            "income": 1200.5,
            "children": 2,
            "purpose": "car",
            "employer": "acme",
            "homeowner": True,
            "has_phone": True,
            "opened": "2019-01-15T00:00:00",
        },
        separators=(",", ":"),
    )
    expected = [f"r-{hashlib.sha256(f'{content}#{n}'.encode()).hexdigest()[:32]}" for n in (0, 1)]
    assert derive_record_ids(schema.inputs, [row, row], [None, None]) == expected


# ------------------------------------------------------------------ labels


def _labels(contract: Contract, *labels: Any) -> list[int]:
    model = label_request_model(contract, max_labels=10)
    body = model.model_validate({"labels": [{"score_id": "s", "label": v} for v in labels]})
    return [item.label for item in body.labels]


def _label_errors(contract: Contract, label: Any) -> list[tuple[str, str, Any]]:
    model = label_request_model(contract, max_labels=10)
    return _errors(model, {"labels": [{"record_id": "r", "label": label}]})


def test_string_target_labels_are_its_own_values_stored_as_1_for_the_positive() -> None:
    contract = _contract()
    assert _labels(contract, "bad", "good", "bad") == [1, 0, 1]
    assert _label_errors(contract, "ok") == [("labels[0].label", "literal_error", "ok")]
    assert _label_errors(contract, "Bad") == [("labels[0].label", "literal_error", "Bad")]
    assert _label_errors(contract, 1) == [("labels[0].label", "str_type", 1)]
    label = label_request_model(contract, 10).model_json_schema()["$defs"]["LabelByScoreId"]
    assert label["properties"]["label"]["enum"] == ["bad", "good"]
    assert "'bad'" in label["properties"]["label"]["description"]


def test_a_yes_no_target_whose_positive_is_the_second_value() -> None:
    contract = _contract(
        target={
            "name": "default",
            "role": "target",
            "dtype": "string",
            "allowed": ["No", "Yes"],
            "positive": "Yes",
        }
    )
    assert _labels(contract, "Yes", "No") == [1, 0]
    assert _label_errors(contract, "yes") == [("labels[0].label", "literal_error", "yes")]


def test_a_string_target_without_allowed_values_takes_any_string() -> None:
    contract = _contract(
        target={"name": "outcome", "role": "target", "dtype": "string", "positive": "churned"}
    )
    assert _labels(contract, "churned", "stayed") == [1, 0]
    assert _label_errors(contract, True) == [("labels[0].label", "string_type", True)]


def test_int_targets_keep_their_numbers_strictly() -> None:
    default = _contract(
        target={"name": "Class", "role": "target", "dtype": "int", "allowed": [0, 1]}
    )
    assert _labels(default, 1, 0) == [1, 0]
    for label, rule in [
        (2, "literal_error"),
        (True, "int_type"),
        (1.0, "int_type"),
        ("1", "int_type"),
    ]:
        assert _label_errors(default, label) == [("labels[0].label", rule, label)]
    other = _contract(
        target={"name": "grade", "role": "target", "dtype": "int", "allowed": [1, 2], "positive": 2}
    )
    assert _labels(other, 2, 1) == [1, 0]
    assert _label_errors(other, 0) == [("labels[0].label", "literal_error", 0)]


def test_bool_targets_take_booleans_and_their_tokens() -> None:
    contract = _contract(
        target={
            "name": "fraud",
            "role": "target",
            "dtype": "bool",
            "true_values": ["Y"],
            "false_values": ["N"],
        }
    )
    assert _labels(contract, True, False, "Y", "N") == [1, 0, 1, 0]
    assert _label_errors(contract, "yes") == [("labels[0].label", "bool_parsing", "yes")]
    assert _label_errors(contract, 1) == [("labels[0].label", "bool_type", 1)]
    negative = _contract(
        target={
            "name": "paid",
            "role": "target",
            "dtype": "bool",
            "true_values": ["Y"],
            "false_values": ["N"],
            "positive": "N",
        }
    )
    assert _labels(negative, "N", False, "Y") == [1, 1, 0]
