"""Drafting a data contract from a table: `crispml contract infer PATH --target COL`.

The core is pure: `infer_contract` takes a DataFrame and returns a draft contract (plain
data) with one reason per column, saying what was guessed and why, so that a person
can review every guess. `update_params` then edits `params.yaml` and the active
environment's overlay in round-trip mode (comments and layout stay), and the command
writes both files atomically once the result loads with `load_settings`.

Guessing rules, in the order they apply:

* the target is given; its two values become `allowed`, and `positive` is the
  `--positive` value, else 1 of 0/1, the "yes" of a yes/no pair, "bad" of good/bad,
  otherwise the rarer value;
* one id: a column whose values are all present and unique, integers or text (not
  floats), preferring a name that looks like an id (id, *_id, rownames, key);
* one time column: a datetime column, or text that parses as ISO-8601 dates for at
  least 95 % of its values. Numbers are never guessed as time (a `Time` column in a
  credit table is a loan term). Further date columns are left out, with a warning;
* text with two values forming a yes/no, y/n or true/false pair: a bool with the
  table's own tokens; at most 50 values (and at most half the rows): a categorical
  feature with `allowed`; more: a probable direct identifier, dropped by the privacy
  filter;
* numbers: features with `min`/`max` the observed range widened by 10 % each side
  (a non-negative column keeps `min: 0`, so a log transform stays possible).

Any column with gaps is `nullable: true` (the target may not have gaps: prepare drops
such rows).
"""

from __future__ import annotations

import datetime
import math
import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pandas as pd

from pipeline.cli import ROOT_OPTION
from pipeline.config.contract import DERIVED_ID, FRAME, Contract
from pipeline.errors import ConfigError, CrispError, DataError, ServiceUnavailable

MAX_CATEGORIES = 50  # more distinct text values than this: not a categorical feature
MAX_CATEGORY_SHARE = 0.5  # ...nor when distinct values exceed this share of the rows
DATE_SHARE = 0.95  # share of text values that must parse as ISO-8601 for a date column
MARGIN = 0.10  # numeric bounds: the observed range widened by this share, each side

WIDTH = 100  # the project's line length, for the YAML it writes
COLUMN_INDENT = "    "  # where `- {name: ...}` starts under contract.columns

PLACEHOLDER_COST = {"false_negative": 5.0, "false_positive": 1.0}
MIN_ROC_AUC = 0.6

# Two-valued text that means true/false (lower case; the table's own tokens are kept).
BOOL_PAIRS: tuple[tuple[str, str], ...] = (
    ("yes", "no"),
    ("y", "n"),
    ("true", "false"),
    ("t", "f"),
)
# Target pairs with an obvious event of interest: (positive, negative), lower case.
POSITIVE_PAIRS: tuple[tuple[str, str], ...] = (
    *BOOL_PAIRS,
    ("1", "0"),
    ("bad", "good"),
    ("positive", "negative"),
    ("pos", "neg"),
)

_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_ID_NAMES = frozenset({"id", "key", "rownames", "row_names", "row_id", "index", "uuid"})
_TIME_NAMES = frozenset({"time", "timestamp", "date", "datetime", "ts"})
_FORMATS = (".parquet", ".pq", ".csv", ".csv.gz")


# --------------------------------------------------------------------------- the draft


@dataclass(frozen=True)
class Guess:
    """What was guessed for one column and why; `review` marks a guess to look at twice."""

    column: str
    role: str  # a contract role, or "skipped" for a column left out of the contract
    dtype: str
    detail: str
    why: str
    review: bool = False


@dataclass
class Draft:
    """The drafted contract (plain data, ready for YAML) and one reason per column."""

    contract: dict[str, Any]
    reasons: list[Guess]
    rows: int
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[dict[str, Any]]:
        return self.contract["columns"]

    def column(self, name: str) -> dict[str, Any]:
        return next(c for c in self.columns if c["name"] == name)

    @property
    def skipped(self) -> list[str]:
        return [g.column for g in self.reasons if g.role == "skipped"]


def _is_text(series: pd.Series) -> bool:
    """Text, categories, or mixed Python objects (the contract reads those as text)."""
    if pd.api.types.is_string_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return True
    return series.dtype == object and not _is_boolean(series) and not _is_date_objects(series)


def _is_date_objects(series: pd.Series) -> bool:
    """Python dates in an object column (how pandas reads a Parquet date32 column)."""
    values = series.dropna()
    return (
        series.dtype == object
        and len(values) > 0
        and bool(values.map(lambda v: isinstance(v, datetime.date)).all())
    )


def _is_boolean(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return True
    values = series.dropna()
    return (
        series.dtype == object
        and len(values) > 0
        and bool(values.map(lambda v: isinstance(v, bool)).all())
    )


def _is_number(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not _is_boolean(series)


def _is_integral(series: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(series):
        return True
    values = series.dropna()
    return pd.api.types.is_float_dtype(series) and bool((values == values.round()).all())


def _text_values(series: pd.Series) -> list[str]:
    return sorted({str(v) for v in series.dropna().tolist()})


def _listed(values: Iterable[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _looks_like_id(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered in _ID_NAMES
        or lowered.endswith(("_id", "-id", ".id", " id", "_key", "_uuid"))
        or bool(re.search(r"[a-z]I[dD]$", name))
    )


def _date_share(series: pd.Series) -> float:
    """Share of the non-null values that are ISO-8601 dates (0 for non-text columns)."""
    if pd.api.types.is_datetime64_any_dtype(series) or _is_date_objects(series):
        return 1.0
    if not _is_text(series):
        return 0.0
    values = series.dropna().astype(str).str.strip()
    if values.empty:
        return 0.0
    shaped = values[values.str.match(_ISO_DATE)]
    if len(shaped) < DATE_SHARE * len(values):
        return len(shaped) / len(values)
    parsed = pd.to_datetime(shaped, format="ISO8601", errors="coerce", utc=True)
    return float(parsed.notna().sum()) / len(values)


def _id_candidate(series: pd.Series) -> bool:
    if series.isna().any() or len(series) < 2 or not series.is_unique:
        return False
    if _is_boolean(series) or pd.api.types.is_float_dtype(series):
        return False
    return pd.api.types.is_integer_dtype(series) or _is_text(series)


def _tidy(value: float, decimals: int) -> int | float:
    value = round(value, decimals)
    return int(value) if float(value).is_integer() else value


def numeric_bounds(low: float, high: float, integer: bool) -> tuple[int | float, int | float]:
    """The observed range widened by MARGIN each side, rounded outwards to 2 digits.

    A column never below 0 keeps min 0 (counts, amounts: the log transform stays
    possible, and a negative value would be an error worth stopping for).
    """
    span = high - low
    margin = (span if span > 0 else max(abs(high), 1.0)) * MARGIN
    lower = 0.0 if low >= 0 else low - margin
    upper = high + margin
    width = upper - lower
    exponent = math.floor(math.log10(width)) - 1
    step = 10.0**exponent
    if integer:
        step = max(step, 1.0)
    decimals = max(0, -exponent)
    lower = math.floor(round(lower / step, 9)) * step
    upper = math.ceil(round(upper / step, 9)) * step
    return _tidy(lower, decimals), _tidy(upper, decimals)


def _convert_positive(given: str, allowed: list[Any], dtype: str, target: str) -> Any:
    for value in allowed:
        if str(value) == given or (dtype == "string" and str(value).lower() == given.lower()):
            return value
        number = re.fullmatch(r"[-+]?\d+(\.\d*)?", given.strip())
        if dtype in ("int", "float") and number and float(given) == value:
            return value
        if dtype == "bool" and given.lower() in (
            ("true", "yes", "1") if value else ("false", "no", "0")
        ):
            return value
    raise DataError(target, "--positive is one of the target's values", given, f"values: {allowed}")


def _target_rule(series: pd.Series, name: str, positive: str | None) -> tuple[dict, Guess]:
    values = series.dropna()
    distinct = values.unique().tolist()
    if len(distinct) != 2:
        shown = sorted(map(str, distinct))[:10]
        if len(distinct) < 2:
            raise DataError(
                name,
                "at least two classes",
                shown,
                "the target has a single value: nothing to learn",
            )
        raise DataError(
            name,
            "binary target",
            f"{len(distinct)} distinct values",
            f"first values {shown}; the pipeline learns a two-class target: derive one "
            "(e.g. 'value == X') into its own column and pass that as --target",
        )
    if _is_boolean(values):
        dtype, allowed = "bool", [False, True]
    elif _is_number(values) and _is_integral(values):
        dtype, allowed = "int", sorted(int(v) for v in distinct)
    elif _is_number(values):
        dtype, allowed = "float", sorted(float(v) for v in distinct)
    else:
        dtype, allowed = "string", sorted(str(v) for v in distinct)
    counts = values.map(str).value_counts()
    share = {v: counts.get(str(v), 0) / len(values) for v in allowed}
    if positive is not None:
        chosen = _convert_positive(positive, allowed, dtype, name)
        why = "positive from --positive"
    else:
        lowered = {str(v).lower(): v for v in allowed}
        pair = next(
            (p for p in POSITIVE_PAIRS if set(p) == set(lowered)),
            None,
        )
        if dtype == "bool":
            chosen, why = True, "positive True: a bool target's event is True"
        elif pair is not None:
            chosen = lowered[pair[0]]
            why = f"positive {chosen!r}: in a {pair[0]}/{pair[1]} pair {pair[0]!r} is the event"
        else:
            low, high = sorted(allowed, key=lambda v: (share[v], str(v)))
            chosen = low
            why = (
                f"positive {chosen!r}: the rarer value ({share[low]:.1%}); review: "
                "pass --positive if the event of interest is the other one"
            )
            if share[low] == share[high]:
                why = f"positive {chosen!r}: both values equally common; review: pass --positive"
    rule: dict[str, Any] = {
        "name": name,
        "role": "target",
        "dtype": dtype,
        "allowed": allowed,
        "positive": chosen,
    }
    why = f"{why}; positive rate {share[chosen]:.1%}"
    nulls = int(series.isna().sum())
    if nulls:
        why += f"; review: {nulls} rows without a label (prepare drops them)"
    detail = f"allowed {_listed(allowed)}, positive {chosen}"
    return rule, Guess(name, "target", dtype, detail, why, review="review" in why)


def _feature_rule(name: str, series: pd.Series, rows: int) -> tuple[dict | None, Guess]:
    """The rule for a column that is neither target, id nor time (None: leave it out)."""
    values = series.dropna()
    nulls = int(series.isna().sum())
    gaps = f"; {nulls} null{'s' if nulls != 1 else ''} -> nullable" if nulls else ""
    rule: dict[str, Any] = {"name": name, "role": "feature"}
    if values.empty:
        return None, Guess(name, "skipped", "-", "", "review: every value is missing", True)
    if _is_boolean(series):
        rule["dtype"] = "bool"
        guess = Guess(name, "feature", "bool", "True/False", f"boolean values{gaps}")
    elif _is_number(series):
        # Whole numbers stored as floats only because of gaps (a CSV int column with
        # empty cells) are ints; a float column without gaps stays float.
        integer = pd.api.types.is_integer_dtype(series) or (nulls > 0 and _is_integral(series))
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            return None, Guess(
                name, "skipped", "-", "", "review: infinite values: clean them first", True
            )
        rule["dtype"] = "int" if integer else "float"
        rule["min"], rule["max"] = numeric_bounds(low, high, integer)
        why = f"numbers seen {low:g}..{high:g}, widened by {MARGIN:.0%}"
        if integer and not pd.api.types.is_integer_dtype(series):
            why = f"whole numbers with gaps, seen {low:g}..{high:g}, widened by {MARGIN:.0%}"
        if low >= 0:
            why += " with min kept at 0"
        if name.lower() in _TIME_NAMES:
            why += (
                "; a number is never guessed as the time column (set role: time and "
                "unit: seconds by hand if it is one)"
            )
        if values.nunique() == 1:
            why += "; review: a single value, no information"
        guess = Guess(name, "feature", rule["dtype"], f"[{rule['min']}, {rule['max']}]", why + gaps)
    elif _is_text(series):
        tokens = _text_values(series)
        lowered = {t.lower() for t in tokens}
        pair = next((p for p in BOOL_PAIRS if lowered == set(p)), None)
        if pair is not None:
            rule["dtype"] = "bool"
            rule["true_values"] = [t for t in tokens if t.lower() == pair[0]]
            rule["false_values"] = [t for t in tokens if t.lower() == pair[1]]
            detail = f"true {_listed(rule['true_values'])}, false {_listed(rule['false_values'])}"
            why = f"text with the two values {_listed(tokens)}: a {pair[0]}/{pair[1]} pair"
            guess = Guess(name, "feature", "bool", detail, why + gaps)
        elif len(tokens) <= MAX_CATEGORIES and len(tokens) <= MAX_CATEGORY_SHARE * rows:
            rule["dtype"] = "string"
            rule["allowed"] = tokens
            why = f"categorical: {len(tokens)} distinct values"
            if len(tokens) == 1:
                why += "; review: a single value, no information"
            guess = Guess(name, "feature", "string", f"{len(tokens)} values", why + gaps)
        else:
            rule["role"] = "direct_identifier"
            rule["dtype"] = "string"
            why = (
                f"free text with {len(tokens)} distinct values (over {MAX_CATEGORIES}, or over "
                f"{MAX_CATEGORY_SHARE:.0%} of the rows); review: dropped as a probable "
                "direct identifier"
            )
            guess = Guess(name, "direct_identifier", "string", "dropped", why + gaps, True)
    else:
        why = f"review: values of type {series.dtype} have no contract type"
        return None, Guess(name, "skipped", "-", "", why, True)
    if nulls:
        rule["nullable"] = True
    return rule, guess


def infer_contract(frame: pd.DataFrame, target: str, positive: str | None = None) -> Draft:
    """Draft a contract for `frame` with `target` as the label; see the module's rules."""
    if len(frame) == 0:
        raise DataError("(source)", "at least one row", 0, "the table is empty")
    frame = frame.rename(columns=str)
    if not frame.columns.is_unique:
        dupes = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise DataError(dupes[0], "unique column name", dupes, "the table repeats column names")
    if target not in frame.columns:
        raise DataError(
            target, "required column", "missing", f"--target names no column of {list(frame)}"
        )
    rows = len(frame)
    rules: dict[str, dict] = {}
    reasons: dict[str, Guess] = {}

    rules[target], reasons[target] = _target_rule(frame[target], target, positive)
    others = [c for c in frame.columns if c != target]
    for name in others:
        if name == FRAME:
            reasons[name] = Guess(
                name, "skipped", "-", "", f"review: {FRAME!r} is reserved for the time frame", True
            )
    others = [c for c in others if c != FRAME]

    dates = {c: s for c in others if (s := _date_share(frame[c])) >= DATE_SHARE}
    candidates = [c for c in others if c not in dates and _id_candidate(frame[c])]
    named = [c for c in candidates if _looks_like_id(c)]
    id_column = (named or candidates or [None])[0]
    if id_column is not None:
        series = frame[id_column]
        why = (
            f"all {rows} values present and unique, {'integers' if _is_number(series) else 'text'}"
        )
        if id_column in named:
            why += "; the name looks like an id"
        elif len(candidates) > 1:
            why += f"; review: the first of {candidates}"
        else:
            why += "; review: the name does not look like an id"
        rules[id_column] = {"name": id_column, "role": "id", "dtype": "string", "unique": True}
        reasons[id_column] = Guess(
            id_column, "id", "string", "unique", why + "; kept as text", review="review" in why
        )

    time_column = None
    for name, share in dates.items():
        series = frame[name]
        nulls = int(series.isna().sum())
        if time_column is not None:
            why = (
                f"review: another date column (the time column is {time_column!r}), and "
                "dates as features are not supported"
            )
            reasons[name] = Guess(name, "skipped", "-", "", why, True)
            continue
        if nulls:
            why = f"review: dates with {nulls} gaps cannot cut time frames"
            reasons[name] = Guess(name, "skipped", "-", "", why, True)
            continue
        time_column = name
        rules[name] = {"name": name, "role": "time", "dtype": "datetime"}
        if share == 1.0 and not _is_text(series):
            why = "a datetime column"
        else:
            why = f"{share:.1%} of the values are ISO-8601 dates"
            if share < 1:
                bad = round((1 - share) * len(series))
                why += f"; review: {bad} values are not, and ingest rejects them"
        lo, hi = series.min(), series.max()
        reasons[name] = Guess(
            name, "time", "datetime", f"{lo} .. {hi}", why + "; frames are cut on it", share < 1
        )

    for name in others:
        if name in rules or name in reasons:
            continue
        rule, guess = _feature_rule(name, frame[name], rows)
        if rule is not None and name == DERIVED_ID and id_column is None:
            rule = None
            guess = Guess(
                name,
                "skipped",
                "-",
                "",
                f"review: {DERIVED_ID!r} is reserved for derived ids when no id is declared",
                True,
            )
        if rule is not None:
            rules[name] = rule
        reasons[name] = guess

    order = list(frame.columns)
    contract = {"columns": [rules[c] for c in order if c in rules]}
    draft = Draft(contract, [reasons[c] for c in order if c in reasons], rows)
    if not any(r["role"] == "feature" for r in draft.columns):
        raise DataError(
            "(source)", "at least one feature", 0, "no column could be drafted as a feature"
        )
    if time_column is None:
        draft.notes.append(
            "no date column: frames follow the table's row order, so sort the table by arrival "
            "first if it is not"
        )
    try:
        Contract.model_validate(contract)
    except ValueError as exc:  # a bug here, not the user's: say so with the draft
        raise CrispError(f"the drafted contract does not validate: {exc}") from exc
    return draft


def format_guesses(draft: Draft) -> list[str]:
    """One line per column: name, role, dtype, what was set, and why."""
    width = max((len(g.column) for g in draft.reasons), default=0)
    lines = []
    for g in draft.reasons:
        mark = "!" if g.review else " "
        head = f"{mark} {g.column:<{width}}  {g.role:<17} {g.dtype:<8}"
        detail = f" {g.detail}" if g.detail else ""
        lines.append(f"{head}{detail}  -- {g.why}")
    return lines


# --------------------------------------------------------------------------- reading


def read_table(path: str, root: Path) -> pd.DataFrame:
    """Read PATH as the pipeline will (sources.read_file), with errors a person can act on."""
    from pipeline.sources import read_file

    is_remote = "://" in path
    if not path.lower().endswith(_FORMATS):
        raise ConfigError(f"{path}: cannot tell the format; name a file ending in {_FORMATS}")
    if not is_remote:
        location = (root / path).resolve()
        if not location.is_file():
            raise ServiceUnavailable(
                f"source file not found: {location} (relative paths are relative to {root})"
            )
    try:
        return read_file(path, "auto", root, None, None)
    except CrispError:
        raise
    except FileNotFoundError as exc:
        raise ServiceUnavailable(f"source file not found: {path}: {exc}") from None
    except OSError as exc:
        raise ServiceUnavailable(f"cannot read {path}: {exc}") from None
    except Exception as exc:
        if is_remote:  # credentials, endpoint, a missing object or a missing s3fs
            raise ServiceUnavailable(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        # a parser's error: the file is not the table it claims to be
        raise DataError("(source)", "a readable CSV or Parquet file", path, str(exc)) from None


# --------------------------------------------------------------------------- params files


def model_name_for(path: str) -> str:
    """`crispml-<file stem, slugified>`: a new data set never reuses another's models."""
    name = PurePosixPath(path.split("://", 1)[-1]).name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "data"
    return f"crispml-{slug}"


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and flow styles are kept
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = WIDTH
    yaml.preserve_quotes = True
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _scalar(value: Any) -> Any:
    """A string quoted when a YAML 1.1 reader would not read it back as that string.

    ruamel writes YAML 1.2, where `Yes`, `No`, `on` or `2024-01-31` are plain text, but
    the loader (PyYAML) reads YAML 1.1, where they are booleans and dates.
    """
    if not isinstance(value, str):
        return value
    import yaml
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    try:
        same = yaml.safe_load(value) == value
    except yaml.YAMLError:
        same = False
    return value if same and value.strip() == value else SingleQuotedScalarString(value)


def _flow_seq(items: Iterable[Any]):
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq([_scalar(v) for v in items])
    seq.fa.set_flow_style()
    return seq


def _flow_map(items: dict[str, Any]):
    from ruamel.yaml.comments import CommentedMap

    out = CommentedMap()
    for key, value in items.items():
        out[key] = _flow_seq(value) if isinstance(value, list) else _scalar(value)
    out.fa.set_flow_style()
    return out


def _block_map(items: dict[str, Any] | None = None):
    from ruamel.yaml.comments import CommentedMap

    return CommentedMap({k: _scalar(v) for k, v in (items or {}).items()})


def _take_trailing(node: Any) -> str:
    """Remove and return the lines that follow `node`'s last line (the next key's header).

    ruamel attaches the comment lines above a key to the end of the previous value
    (deep inside it, on its last item); replacing that value would lose them.
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, CommentedMap | CommentedSeq) or len(node) == 0:
        return ""
    if getattr(node.ca, "end", None):
        tokens, node.ca.end = node.ca.end, []
        return "".join(t.value for t in tokens)
    last = list(node.keys())[-1] if isinstance(node, CommentedMap) else len(node) - 1
    slot = 2 if isinstance(node, CommentedMap) else 0
    entry = node.ca.items.get(last)
    if entry and entry[slot] is not None:
        text = entry[slot].value
        entry[slot] = None
        # What precedes the first line break is the last line's own end-of-line comment.
        return text.split("\n", 1)[1] if "\n" in text else ""
    return _take_trailing(node[last])


def _put_trailing(parent: Any, key: str, text: str) -> None:
    """Attach `text` (whole lines) after `parent[key]`, before whatever follows it."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    if not text:
        return
    value = parent[key]
    if isinstance(value, CommentedMap | CommentedSeq) and len(value) and not value.fa.flow_style():
        if value.ca.comment is None:
            value.ca.comment = [None, None]  # without it ruamel drops `end`
        value.ca.end = [CommentToken(text, CommentMark(0))]
    else:
        entry = parent.ca.items.setdefault(key, [None, None, None, None])
        entry[2] = CommentToken("\n" + text, CommentMark(0))


def _replace(parent: Any, key: str, value: Any) -> None:
    text = _take_trailing(parent.get(key)) if key in parent else ""
    entry = parent.ca.items.get(key)
    if entry is not None and len(entry) > 3:
        entry[3] = None  # comments above the old value's first line described the old value
    parent[key] = value
    _put_trailing(parent, key, text)


def _section(doc: Any, key: str) -> Any:
    if not isinstance(doc.get(key), dict):
        _replace(doc, key, _block_map())
    return doc[key]


def _column_node(rule: dict[str, Any]) -> Any:
    """One line `- {name: ..., ...}` when it fits, else a block mapping (lists stay flow)."""
    from ruamel.yaml.comments import CommentedSeq

    flow = _flow_map(rule)
    measure = _yaml()
    measure.width = 4096
    line = _dump(measure, CommentedSeq([flow])).rstrip("\n")
    if len(COLUMN_INDENT) + len(line) <= WIDTH:
        return flow
    block = _block_map()
    for key, value in rule.items():
        block[key] = _flow_seq(value) if isinstance(value, list) else _scalar(value)
    return block


def contract_node(draft: Draft, header: str) -> Any:
    """The drafted contract as a ruamel node: one flow mapping per column, reasons above."""
    from ruamel.yaml.comments import CommentedSeq

    columns = CommentedSeq()
    for rule in draft.columns:
        columns.append(_column_node(rule))
    reasons = {g.column: g for g in draft.reasons}
    for index, rule in enumerate(draft.columns):
        guess = reasons[rule["name"]]
        if guess.review or guess.role in ("id", "target", "time"):
            why = textwrap.fill(guess.why, WIDTH - len(COLUMN_INDENT) - 2)
            columns.yaml_set_comment_before_after_key(index, before=why, indent=4)
    skipped = [g for g in draft.reasons if g.role == "skipped"]
    if skipped:
        left_out = "; ".join(f"{g.column} ({g.why.removeprefix('review: ')})" for g in skipped)
        header += "\n" + textwrap.fill(f"Left out (ingest drops them): {left_out}.", WIDTH - 4)
    node = _block_map({"columns": columns})
    node.yaml_set_comment_before_after_key("columns", before=header, indent=2)
    return node


def same_contract(existing: Any, drafted: dict[str, Any]) -> bool:
    """Whether `existing` (plain data from YAML) describes the same columns as `drafted`."""
    try:
        old = Contract.model_validate(_to_plain(existing))
    except ValueError:
        return False
    new = Contract.model_validate(drafted)
    return [s.model_dump() for s in old.specs] == [s.model_dump() for s in new.specs]


def _to_plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_plain(v) for v in node]
    return node


def update_params(
    params: Any, overlay: Any, draft: Draft, path: str, model_name: str, header: str
) -> list[str]:
    """Edit both round-trip documents in place; return what changed and why, for a person."""
    notes: list[str] = []
    _replace(params, "contract", contract_node(draft, header))

    features = _section(_section(params, "curate"), "features")
    features["log"] = _flow_seq([])
    features["time_of_day"] = None
    features["scale"] = True
    notes.append(
        "curate.features: {log: [], time_of_day: null, scale: true} -- the old transforms "
        "named the old columns"
    )

    report = _section(params, "report")
    categorical = [
        c["name"] for c in draft.columns if c["role"] == "feature" and c["dtype"] == "string"
    ]
    slices = _flow_seq([]) if not categorical else None
    if categorical:
        from ruamel.yaml.comments import CommentedSeq

        slices = CommentedSeq([_flow_map({"column": categorical[0]})])
        notes.append(
            f"report.slices: [{{column: {categorical[0]}}}] -- metrics per value of "
            "the first categorical feature"
        )
    else:
        notes.append("report.slices: [] -- no categorical feature to slice on")
    _replace(report, "slices", slices)
    _section(report, "cost").update(PLACEHOLDER_COST)
    notes.append(
        "report.cost: {false_negative: 5.0, false_positive: 1.0} -- a PLACEHOLDER: set the "
        "ratio from the business case (what a missed positive costs against a false alarm)"
    )

    frames = _section(params, "frames")
    frames["by"] = "width"
    if frames.get("period") is not None:
        frames["period"] = None  # only frames.by 'period' takes one
    if any(c["role"] == "time" for c in draft.columns):
        notes.append("frames.by: width -- equal-width windows of the time column's range")
    else:
        notes.append("frames.by: width -- without a time column frames follow the row order")

    _section(params, "register")["model_name"] = _scalar(model_name)
    notes.append(
        f"register.model_name: {model_name} -- never collides with another data set's models"
    )

    data = _section(overlay, "data")
    _replace(data, "source", _block_map({"kind": "file", "path": path}))
    notes.append(f"data.source: {{kind: file, path: {path}}}")
    privacy = overlay.get("privacy")
    if isinstance(privacy, dict) and privacy.get("generalise"):
        from ruamel.yaml.comments import CommentedMap

        empty = CommentedMap()
        empty.fa.set_flow_style()
        _replace(privacy, "generalise", empty)
        notes.append("privacy.generalise: {} -- the old rules named columns that no longer exist")
    gates = overlay.get("gates")
    register = gates.get("register") if isinstance(gates, dict) else None
    if isinstance(register, dict):
        if "min_pr_auc" in register:
            position = list(register).index("min_pr_auc")
            del register["min_pr_auc"]
            notes.append(
                "gates.register.min_pr_auc: removed -- PR-AUC depends on the positive rate "
                "(random scores reach it), so its floor is per data set"
            )
            if "min_roc_auc" not in register:
                register.insert(position, "min_roc_auc", MIN_ROC_AUC)
        if "min_roc_auc" not in register:
            register["min_roc_auc"] = MIN_ROC_AUC
        notes.append(
            f"gates.register.min_roc_auc: {register['min_roc_auc']} -- ROC-AUC means the same on "
            "any table (0.5 is random)"
        )
    return notes


def _dump(yaml: Any, doc: Any) -> str:
    out = StringIO()
    yaml.dump(doc, out)
    # ruamel leaves a space after the comma where it wraps a long flow list.
    return re.sub(r",[ ]+$", ",", out.getvalue(), flags=re.M)


def _write(target: Path, text: str) -> None:
    from pipeline.io import atomic_path

    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
        shutil.copymode(target, tmp)


def _check_loads(
    root: Path, env: str, params_text: str, overlay_text: str, drafted: dict[str, Any]
) -> None:
    """Load the edited files with the real loader, in a scratch folder, before writing."""
    from pipeline.config.loader import ENV_PARAMS_FILE, ENVIRONMENTS_DIR, PARAMS_FILE, load_settings

    with tempfile.TemporaryDirectory(prefix="crispml-infer-") as scratch:
        folder = Path(scratch)
        (folder / PARAMS_FILE).write_text(params_text, encoding="utf-8")
        overlay = folder / ENVIRONMENTS_DIR / env / ENV_PARAMS_FILE
        overlay.parent.mkdir(parents=True)
        overlay.write_text(overlay_text, encoding="utf-8")
        try:
            settings = load_settings(folder)
        except ConfigError as exc:
            message = str(exc).replace(str(folder.resolve()), str(root)).replace(scratch, str(root))
            raise ConfigError(
                f"the drafted params do not load; nothing written:\n{message}"
            ) from None
    if not same_contract(settings.contract.model_dump(), drafted):
        raise CrispError(
            "the written contract would not read back as drafted (a bug; nothing written)"
        )


def infer_command(
    root: Path | None,
    path: str,
    target: str,
    positive: str | None,
    force: bool,
    dry_run: bool,
    model_name: str | None,
    echo: Callable[[str], None] = click.echo,
) -> Draft:
    """Read, draft, print the guesses, edit both params files (unless a dry run)."""
    from pipeline.config.loader import PARAMS_FILE, environment_path, find_root, read_yaml

    root = find_root(root)
    params_path = root / PARAMS_FILE
    yaml = _yaml()
    try:
        params = yaml.load(params_path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ConfigError(f"{params_path}: not valid YAML: {exc}") from None
    env = params.get("env") if isinstance(params, dict) else None
    if not isinstance(env, str) or not env:
        raise ConfigError(f"{params_path}: key 'env' must name an environment")
    overlay_path = environment_path(root, env)
    if not overlay_path.is_file():
        raise ConfigError(f"environment {env!r} has no {overlay_path}")
    overlay = yaml.load(overlay_path.read_text(encoding="utf-8"))

    frame = read_table(path, root)
    draft = infer_contract(frame, target, positive)
    echo(f"Read {path}: {len(frame)} rows, {frame.shape[1]} columns.")
    echo("Guesses (! = review this one):")
    for line in format_guesses(draft):
        echo(line)
    for note in draft.notes:
        echo(f"note: {note}")

    existing = read_yaml(params_path).get("contract")  # as the loader reads it (YAML 1.1)
    differs = existing is not None and not same_contract(existing, draft.contract)
    name = model_name or model_name_for(path)
    command = f"crispml contract infer {path} --target {target}"
    if positive is not None:
        command += f" --positive {positive}"
    header = (
        f"Drafted by `{command}` from {draft.rows} rows:\n"
        "review every guess (the comments say why), then `dvc repro`."
    )
    notes = update_params(params, overlay, draft, path, name, header)
    params_text, overlay_text = _dump(yaml, params), _dump(yaml, overlay)
    _check_loads(root, env, params_text, overlay_text, draft.contract)

    if dry_run:
        echo("\n--dry-run: nothing written. The contract would be:\n")
        echo(_dump(yaml, {"contract": contract_node(draft, header)}).rstrip())
        echo("\nand also:")
        for note in notes:
            echo(f"  {note}")
        if differs:
            echo(f"\n{params_path} holds a different contract: writing it needs --force.")
        return draft
    if differs and not force:
        raise ConfigError(
            f"{params_path} already holds a different contract "
            f"({len(existing.get('columns') or []) if isinstance(existing, dict) else 0} "
            "entries); nothing written. "
            "Rerun with --force to replace it (or --dry-run to see the draft)."
        )
    _write(overlay_path, overlay_text)
    _write(params_path, params_text)
    echo(
        f"\nWrote the contract to {params_path.relative_to(root)} and the source to "
        f"{overlay_path.relative_to(root)}. Also set:"
    )
    for note in notes:
        echo(f"  {note}")
    echo("Next: review the guesses marked !, then `dvc repro`.")
    return draft


# --------------------------------------------------------------------------- the command


@click.group("contract")
def contract_group() -> None:
    """Draft the data contract for a table of your own."""


@contract_group.command("infer")
@ROOT_OPTION
@click.argument("path")
@click.option("--target", required=True, help="The column to predict (two distinct values).")
@click.option("--positive", default=None, help="The target's positive class (default: guessed).")
@click.option("--force", is_flag=True, help="Replace a different contract already in params.yaml.")
@click.option("--dry-run", is_flag=True, help="Print the draft and the edits; write nothing.")
@click.option("--model-name", default=None, help="register.model_name (default: crispml-<stem>).")
def infer(
    root: Path | None,
    path: str,
    target: str,
    positive: str | None,
    force: bool,
    dry_run: bool,
    model_name: str | None,
) -> None:
    """Draft the contract of PATH (CSV or Parquet, local or s3://) into the params files.

    Writes `contract`, resets the fraud-specific transforms, slices and costs in
    params.yaml, and points the active environment's `data.source` at PATH (relative
    paths are relative to the repository root). Every guess is printed with its reason.
    """
    try:
        infer_command(root, path, target, positive, force, dry_run, model_name)
    except CrispError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)


def add_commands(cli: click.Group) -> None:
    """Attach `contract infer` to the `crispml` group (called once from pipeline.cli)."""
    cli.add_command(contract_group)


__all__ = [
    "Draft",
    "Guess",
    "add_commands",
    "format_guesses",
    "infer_command",
    "infer_contract",
    "model_name_for",
    "numeric_bounds",
    "read_table",
    "same_contract",
    "update_params",
]
