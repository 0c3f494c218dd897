"""The request models are generated from the data contract, field for field and rule for rule."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import TypeAdapter, ValidationError

from pipeline.config import Contract, Settings, load_settings
from pipeline.service.contract import (
    RECORD_ID_MAX_LENGTH,
    label_request_model,
    record_schema,
    score_request_type,
)
from pipeline.service.errors import clean_value, field_errors, field_path, summary

from .conftest import MAIN_ROOT


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(MAIN_ROOT)


@pytest.fixture(scope="module")
def contract(settings: Settings) -> Contract:
    return settings.contract


@pytest.fixture(scope="module")
def schema(settings: Settings):
    return record_schema(settings.contract, settings.model_inputs)


def _errors(model, data) -> list[dict]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return field_errors(caught.value.errors())


def test_every_contract_input_is_a_documented_field_with_its_range(settings, schema) -> None:
    contract = settings.contract
    json_schema = schema.model.model_json_schema()
    properties = json_schema["properties"]
    expected = [contract.declared_id, *settings.model_inputs]
    assert list(properties) == expected
    assert schema.inputs == tuple(settings.model_inputs)
    for name in settings.model_inputs:
        spec = contract.by_name[name]
        assert properties[name]["type"] == "number"
        assert properties[name].get("minimum") == spec.min
        assert properties[name].get("maximum") == spec.max
    # The fraud contract's id is `required: false`: it may be left out (or null).
    assert not contract.by_name[contract.declared_id].required
    assert contract.declared_id not in json_schema["required"]
    assert json_schema["required"] == list(settings.model_inputs)
    id_types = properties[contract.declared_id]["anyOf"]
    assert {"type": "string", "minLength": 1, "maxLength": RECORD_ID_MAX_LENGTH} in id_types
    assert json_schema["additionalProperties"] is False


def test_example_record_is_valid(schema) -> None:
    assert schema.numeric  # the fraud contract's inputs are all numbers
    record = schema.model.model_validate(schema.example)
    record_id, values = schema.values(record)
    assert record_id == schema.example[schema.id_column]
    without_id = {k: v for k, v in schema.example.items() if k != schema.id_column}
    assert schema.values(schema.model.model_validate(without_id)) == (None, values)
    assert values == tuple(schema.example[name] for name in schema.inputs)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"V1": "1.5"}, "V1", "float_type"),
        ({"V1": True}, "V1", "float_type"),
        ({"V1": None}, "V1", "float_type"),
        ({"V1": math.nan}, "V1", "finite_number"),
        ({"V1": math.inf}, "V1", "finite_number"),
        ({"V1": 250.5}, "V1", "less_than_equal"),
        ({"Amount": -0.01}, "Amount", "greater_than_equal"),
        ({"Time": 172_801}, "Time", "less_than_equal"),
        ({"colour": "red"}, "colour", "extra_forbidden"),
        ({"transaction_id": ""}, "transaction_id", "string_too_short"),
        ({"transaction_id": "x" * 129}, "transaction_id", "string_too_long"),
        ({"transaction_id": 7}, "transaction_id", "string_type"),
    ],
)
def test_each_broken_rule_names_field_and_rule(schema, change, field, rule) -> None:
    errors = _errors(schema.model, {**schema.example, **change})
    assert [(e["field"], e["rule"]) for e in errors] == [(field, rule)]


def test_missing_field_is_named(schema) -> None:
    data = dict(schema.example)
    del data["V7"]
    errors = _errors(schema.model, data)
    assert [(e["field"], e["rule"], e["value"]) for e in errors] == [("V7", "missing", None)]


def test_integers_are_accepted_for_float_columns(schema) -> None:
    record = schema.model.model_validate({**schema.example, "V1": 3, "Amount": 10})
    assert schema.values(record)[1][schema.inputs.index("V1")] == 3


def _body_errors(adapter: TypeAdapter, data) -> list[dict]:
    """Errors located as FastAPI locates them: under "body"."""
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(data)
    return field_errors([{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()])


def test_score_body_is_a_record_or_a_bounded_batch(schema) -> None:
    body = TypeAdapter(score_request_type(schema, max_batch=3))
    single = body.validate_python(schema.example)
    assert isinstance(single, schema.model)
    assert len(body.validate_python([schema.example] * 3)) == 3
    errors = _body_errors(body, [schema.example] * 4)
    assert [(e["field"], e["rule"]) for e in errors] == [("body", "too_long")]
    errors = _body_errors(body, [])
    assert [(e["field"], e["rule"]) for e in errors] == [("body", "too_short")]
    # Only the branch the JSON shape picked reports, and the record index is named.
    errors = _body_errors(body, [schema.example, {**schema.example, "V2": 1e6}])
    assert [(e["field"], e["rule"]) for e in errors] == [("[1].V2", "less_than_equal")]
    errors = _body_errors(body, {**schema.example, "V2": 1e6})
    assert [(e["field"], e["rule"]) for e in errors] == [("V2", "less_than_equal")]


def test_labels_follow_the_target_rule_strictly(contract) -> None:
    model = label_request_model(contract, max_labels=2)
    ok = model.model_validate(
        {"labels": [{"score_id": "a", "label": 1}, {"record_id": "r", "label": 0}]}
    )
    assert [item.label for item in ok.labels] == [1, 0]
    cases = [(2, "literal_error"), (True, "int_type"), (1.0, "int_type"), ("1", "int_type")]
    for label, rule in cases:
        errors = _errors(model, {"labels": [{"score_id": "a", "label": label}]})
        assert [(e["field"], e["rule"]) for e in errors] == [("labels[0].label", rule)]
    # Exactly one of score_id and record_id, and the schema says so too (oneOf).
    errors = _errors(model, {"labels": [{"score_id": "a", "record_id": "r", "label": 1}]})
    assert [(e["field"], e["rule"]) for e in errors] == [("labels[0].record_id", "extra_forbidden")]
    errors = _errors(model, {"labels": [{"label": 1}]})
    assert [(e["field"], e["rule"]) for e in errors] == [("labels[0].record_id", "missing")]
    items = model.model_json_schema()["properties"]["labels"]["items"]
    assert len(items["oneOf"]) == 2
    errors = _errors(model, {"labels": [{"score_id": "a", "label": 1}] * 3})
    assert (errors[0]["field"], errors[0]["rule"]) == ("labels", "too_long")


def test_field_paths_are_plain() -> None:
    assert field_path(("body", "record", "V1")) == "V1"
    assert field_path(("body", "batch", 3, "V1")) == "[3].V1"
    assert field_path(("body", "labels", 0, "label")) == "labels[0].label"
    assert field_path(("body", "labels", 2, "by_score_id", "label")) == "labels[2].label"
    assert field_path(("query", "from")) == "from"
    assert field_path(("body",)) == "body"


def test_offending_values_are_json_safe_and_short() -> None:
    assert clean_value(math.nan) == "NaN"
    assert clean_value(-math.inf) == "-Infinity"
    assert clean_value({"a": 1}) is None
    assert len(clean_value("x" * 1000)) < 210
    entries = field_errors(
        [
            {
                "loc": ("body", "record", "V1"),
                "type": "finite_number",
                "msg": "Input should be a finite number",
                "input": math.inf,
            }
        ]
    )
    json.dumps(entries, allow_nan=False)  # strict JSON: no bare NaN/Infinity
    assert summary(entries) == (
        "V1: Input should be a finite number (rule finite_number, value 'Infinity')"
    )
