"""Errors a person can act on, each with its own exit code.

The CLI maps these to exit codes so that CI and scripts can tell a bad input from
a failed gate from a bug, without parsing messages.
"""

from __future__ import annotations


class CrispError(Exception):
    """Base class: the message is meant for a person and is printed without a traceback."""

    exit_code = 1


class ConfigError(CrispError):
    """params.yaml or an environment overlay is wrong."""

    exit_code = 3


class DataError(CrispError):
    """Input data breaks the data contract; the message names field, rule and value."""

    exit_code = 4

    def __init__(self, field: str, rule: str, value: object, detail: str = "") -> None:
        self.field = field
        self.rule = rule
        self.value = value
        message = f"column {field!r} breaks rule '{rule}': {value!r}"
        super().__init__(f"{message} ({detail})" if detail else message)


class GateFailed(CrispError):
    """A quality, regression or drift gate said no."""

    exit_code = 5


class ServiceUnavailable(CrispError):
    """A store, registry or source could not be reached."""

    exit_code = 6


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: please report it with the log)",
    2: "usage error (unknown option or argument)",
    ConfigError.exit_code: "configuration error in params.yaml or environments/<env>/params.yaml",
    DataError.exit_code: "input data breaks the data contract",
    GateFailed.exit_code: "a gate rejected the model or the scored data",
    ServiceUnavailable.exit_code: "a store, registry or source could not be reached",
}
