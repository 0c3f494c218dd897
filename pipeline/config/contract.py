"""The data contract's schema: which columns a source delivers, their roles, types and rules.

Only the schema lives here; `pipeline/contract.py` applies it to data. The contract is
general on purpose: a time column and an id column are optional, features may be
numbers, booleans with the table's own tokens, categories or dates, and the target may
be any two values with `positive` naming the class every metric and gate is about.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """A params model: unknown keys are errors that name the key, and values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def without_password(url: str | None) -> str | None:
    """Refuse a URL with an inline password in params: params reach Git, dvc.lock and MLflow.

    The password goes in an environment variable instead (`url_env`, CRISPML_STORE_URL).
    """
    from urllib.parse import urlsplit

    if url is not None and "://" in url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            raise ValueError(
                "holds a password: params are committed to Git and copied into dvc.lock and "
                "MLflow; put the whole URL in an environment variable and name it in url_env "
                "(for the store: CRISPML_STORE_URL)"
            )
    return url


class Role(StrEnum):
    FEATURE = "feature"
    TARGET = "target"
    TIME = "time"
    ID = "id"
    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"


DType = Literal["float", "int", "string", "bool", "datetime"]
NUMERIC: frozenset[str] = frozenset({"float", "int"})

# When the contract declares no id column, ingest derives one under this name.
DERIVED_ID = "record_id"
# Ingest adds the frame number under this name.
FRAME = "frame"

DEFAULT_TRUE = (True, "true", "True", "TRUE", 1)
DEFAULT_FALSE = (False, "false", "False", "FALSE", 0)


class _ColumnFields(Strict):
    role: Role
    dtype: DType
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    nullable: bool = False
    unique: bool = False
    # False: the column may be absent from a source (an id or identifier one source has
    # and another lacks). Present, it is checked like any other column.
    required: bool = True
    # datetime only: a strptime format; without it, ISO-8601.
    format: str | None = None
    # bool only: the source's own tokens for true and false (Y/N, yes/no, ...).
    true_values: list[Any] | None = None
    false_values: list[Any] | None = None
    # target only: the class that metrics, thresholds and gates are about.
    positive: Any = None
    # "seconds" lets a numeric column feed the time-of-day transform.
    unit: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _rules_fit_the_type(self) -> _ColumnFields:
        if (self.min is not None or self.max is not None) and self.dtype not in NUMERIC:
            raise ValueError(f"min/max need a numeric dtype, not {self.dtype!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.format is not None and self.dtype != "datetime":
            raise ValueError("format is for datetime columns only")
        if (self.true_values or self.false_values) and self.dtype != "bool":
            raise ValueError("true_values/false_values are for bool columns only")
        if self.true_values and self.false_values:
            both = {str(v) for v in self.true_values} & {str(v) for v in self.false_values}
            if both:
                raise ValueError(f"tokens {sorted(both)} are both true and false")
        if self.positive is not None and self.role != Role.TARGET:
            raise ValueError("positive is for the target column only")
        if self.role == Role.TARGET:
            if self.nullable or not self.required:
                raise ValueError("the target may be neither nullable nor optional")
            if self.allowed is not None and len(self.allowed) != 2:
                raise ValueError(f"a binary target allows exactly two values, not {self.allowed}")
            if self.positive is None and self.dtype not in ("int", "bool"):
                raise ValueError(
                    f"a {self.dtype} target needs 'positive:' naming the positive class"
                )
            outside = self.allowed is not None and self.positive not in self.allowed
            if self.positive is not None and outside:
                raise ValueError(f"positive {self.positive!r} is not in allowed {self.allowed}")
        if self.role == Role.TIME and self.dtype not in ("float", "int", "datetime"):
            raise ValueError(f"a time column is a number or a datetime, not {self.dtype!r}")
        return self

    @property
    def true_tokens(self) -> tuple[Any, ...]:
        return tuple(self.true_values) if self.true_values else DEFAULT_TRUE

    @property
    def false_tokens(self) -> tuple[Any, ...]:
        return tuple(self.false_values) if self.false_values else DEFAULT_FALSE

    @property
    def positive_class(self) -> Any:
        """The positive class as written in the source (1 for an int target by default)."""
        if self.positive is not None:
            return self.positive
        return True if self.dtype == "bool" else 1

    @property
    def is_categorical(self) -> bool:
        return self.role == Role.FEATURE and self.dtype == "string"


class ColumnRule(_ColumnFields):
    """One contract entry: a column, or several sharing one rule via `names`."""

    name: str | None = None
    names: list[str] | None = None

    @model_validator(mode="after")
    def _one_of_name_or_names(self) -> ColumnRule:
        if (self.name is None) == (self.names is None):
            raise ValueError("a contract entry needs exactly one of 'name' or 'names'")
        return self

    def expand(self) -> list[ColumnSpec]:
        names = [self.name] if self.name is not None else list(self.names or [])
        data = self.model_dump(exclude={"name", "names"})
        return [ColumnSpec(name=n, **data) for n in names]


class ColumnSpec(_ColumnFields):
    """One column of the contract, after `names:` entries are expanded."""

    name: str


class Contract(Strict):
    """Columns, roles, types and rules: what any source must deliver."""

    columns: list[ColumnRule]

    @model_validator(mode="after")
    def _roles_are_complete(self) -> Contract:
        specs = self.specs
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise ValueError(f"column {spec.name!r} is declared twice")
            seen.add(spec.name)
        if FRAME in seen:
            raise ValueError(f"column name {FRAME!r} is reserved for the time frame")
        found = [s.name for s in specs if s.role == Role.TARGET]
        if len(found) != 1:
            raise ValueError(f"the contract needs exactly one target column, found {found}")
        for role in (Role.ID, Role.TIME):
            found = [s.name for s in specs if s.role == role]
            if len(found) > 1:
                raise ValueError(f"the contract allows at most one {role.value} column: {found}")
        if not any(s.role == Role.ID for s in specs) and DERIVED_ID in seen:
            raise ValueError(
                f"column name {DERIVED_ID!r} is reserved for derived ids when no id column "
                "is declared"
            )
        time = [s for s in specs if s.role == Role.TIME]
        if time and not time[0].required:
            raise ValueError("the time column cannot be optional: frames are cut on it")
        if not any(s.role == Role.FEATURE for s in specs):
            raise ValueError("the contract needs at least one feature column")
        return self

    @cached_property
    def specs(self) -> list[ColumnSpec]:
        # Cached: the service asks for it on every request (the model is frozen).
        return [spec for rule in self.columns for spec in rule.expand()]

    @cached_property
    def by_name(self) -> dict[str, ColumnSpec]:
        return {s.name: s for s in self.specs}

    def names(self, role: Role) -> list[str]:
        return [s.name for s in self.specs if s.role == role]

    @property
    def target(self) -> str:
        return self.names(Role.TARGET)[0]

    @property
    def target_spec(self) -> ColumnSpec:
        return self.by_name[self.target]

    @property
    def declared_id(self) -> str | None:
        found = self.names(Role.ID)
        return found[0] if found else None

    @property
    def id_column(self) -> str:
        """Where every record's id is after ingest: declared, or derived from content."""
        return self.declared_id or DERIVED_ID

    @property
    def time_column(self) -> str | None:
        found = self.names(Role.TIME)
        return found[0] if found else None

    @property
    def features(self) -> list[str]:
        return self.names(Role.FEATURE)

    @property
    def categorical(self) -> list[str]:
        return [s.name for s in self.specs if s.is_categorical]
