"""The privacy filter of an environment: identifiers out, ids keyed, quasi-identifiers coarse.

Kept apart from ingest and prepare because a reviewer from the data-protection office
should be able to read exactly this file and nothing else.

The order matters and is the whole guarantee. It runs in two parts:

* `minimise`, in ingest, before anything is written: drop direct identifiers and key
  the id. Neither needs another row, so nothing raw ever reaches `data/ingested/`, the
  DVC cache or a remote.
* `protect_quasi_identifiers`, in prepare, after the last step that removes rows:
  coarsen every quasi-identifier (with its rule, or a default), suppress equivalence
  classes until every class has at least `min_k` rows (or fail), report, and finally
  drop the quasi-identifiers nothing downstream reads, so they are neither stored nor
  pushed. Suppression has to follow cleaning: a duplicate or an incomplete row dropped
  after it could shrink a class below `min_k` again. Generalisation stays beside it:
  the missing-value policy reads the values as the contract types them (a median age,
  not a band), and the default decile bands are cut on the rows that are kept. Until
  then the quasi-identifiers sit in `data/ingested/` as the source delivered them.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Collection

import numpy as np
import pandas as pd

from pipeline.config import Contract, Generalise, Privacy, Role
from pipeline.config.contract import NUMERIC
from pipeline.config.environment import MIN_KEY_BYTES
from pipeline.errors import ConfigError, DataError

SUPPRESSED = "*"
# A numeric quasi-identifier without a rule is cut at its deciles: ten bands.
DEFAULT_BANDS = 10
# How many offending classes an error message lists: enough to act on, short to read.
SHOWN_CLASSES = 5
# Hex characters of HMAC-SHA256 kept in a pseudonym: 128 bits, no collision in practice.
# The score store tells pseudonymised ids by this shape (pipeline/store/pseudonymise.py).
PSEUDONYM_HEX = 32


def pseudonymisation_key(privacy: Privacy) -> bytes:
    """The HMAC key, from the environment only: a key in a file would undo the point."""
    value = os.environ.get(privacy.key_env, "")
    if not value:
        raise ConfigError(
            f"privacy.pseudonymise_ids is on but environment variable {privacy.key_env} is not set"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(key_too_short(privacy.key_env, len(key)))
    return key


def key_too_short(variable: str, size: int) -> str:
    """The message for a short key: its length only, never a character of it."""
    return (
        f"{variable} holds {size} bytes: a pseudonymisation key needs at least {MIN_KEY_BYTES} "
        "(make one with: python -c 'import secrets; print(secrets.token_hex(32))'; "
        "qa and prod each need their own)"
    )


def pseudonym(value: object, key: bytes) -> str:
    """Keyed HMAC-SHA256: stable for joins with later ground truth, unlinkable without the key."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    return values.map(lambda v: pseudonym(v, key))


def generalise(values: pd.Series, rule: Generalise) -> pd.Series:
    """Apply a configured rule; the result is text, so a suppressed "*" fits in any column."""
    if rule.bin_width is not None:
        numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        width = rule.bin_width
        codes, lows = pd.factorize(np.floor(numeric / width) * width)
        return _labelled(values.index, codes, [f"{lo:g}-{lo + width - 1:g}" for lo in lows])
    keep = int(rule.keep_prefix or 0)
    # A gap stays a gap (code -1): as text it would become "No**", a class of its own.
    codes, uniques = pd.factorize(values)
    masked = [str(v)[:keep] + SUPPRESSED * max(len(str(v)) - keep, 0) for v in uniques]
    return _labelled(values.index, codes, masked)


def _labelled(index: pd.Index, codes: np.ndarray, labels: list[str]) -> pd.Series:
    """Text per row from a code per row (-1 for a gap, which stays None).

    Every row of one label points at the same string object: a column of 2.8 million
    coarsened values holds a few dozen strings, not 2.8 million copies of them, which
    at 10x the default data was about 170 MB per column at prepare's peak.
    """
    table = np.array([*labels, None], dtype=object)
    return pd.Series(table[np.where(codes < 0, len(labels), codes)], index=index, dtype=object)


def decile_edges(values: pd.Series) -> list[float]:
    """The inner cut points of a numeric quasi-identifier that has no rule: its deciles.

    Why deciles and not a fixed width: a default has to fit any unit (years, euros,
    metres), and equal-count bands give every band about a tenth of the rows, the
    largest classes for a given number of bands. Only the nine inner cut points are
    kept (the first and last bands are open), so neither the data nor the report ever
    states the minimum or maximum, the values most likely to single someone out.
    The cut points are observed values (no interpolation), so a whole-number column
    keeps whole-number edges.
    """
    numeric = pd.to_numeric(values, errors="coerce").dropna().astype("float64")
    if numeric.empty:
        return []
    levels = [n / DEFAULT_BANDS for n in range(1, DEFAULT_BANDS)]
    return sorted({float(q) for q in numeric.quantile(levels, interpolation="lower")})


def band_labels(edges: list[float]) -> list[str]:
    """Labels of the bands between sorted edges: "<a", "[a, b)", ..., ">=z"."""
    if not edges:
        return ["all"]
    inner = [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(edges)]
    return [f"<{edges[0]:g}", *inner, f">={edges[-1]:g}"]


def generalise_to_bands(values: pd.Series, edges: list[float]) -> pd.Series:
    """Replace each number by its band between `edges`; a missing value stays missing."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    positions = np.searchsorted(np.asarray(edges, dtype="float64"), numeric, side="right")
    return _labelled(values.index, np.where(np.isnan(numeric), -1, positions), band_labels(edges))


def coarsen(
    frame: pd.DataFrame, contract: Contract, privacy: Privacy, quasi: list[str]
) -> tuple[pd.DataFrame, dict[str, dict], list[str]]:
    """Generalise every quasi-identifier; returns the data, what each got, and the raw ones.

    A quasi-identifier without a rule is not left raw when it is a number: an exact age
    or income is as identifying as a name once combined with a postcode, and a float
    column could not even hold the "*" of suppression. It gets decile bands instead. A
    text quasi-identifier without a rule has no safe default (a prefix of what?), so it
    stays as it is and relies on suppression; it is listed as raw so that an error
    message never prints its values.
    """
    out = frame.copy()
    applied: dict[str, dict] = {}
    raw: list[str] = []
    specs = contract.by_name
    for column in quasi:
        rule = privacy.generalise.get(column)
        if rule is not None:
            out[column] = generalise(out[column], rule)
            applied[column] = rule.model_dump(exclude_none=True)
        elif specs[column].dtype in NUMERIC:
            edges = decile_edges(out[column])
            out[column] = generalise_to_bands(out[column], edges)
            applied[column] = {"default": "decile bands", "edges": edges}
        else:
            # Object dtype, so a suppressed "*" fits whatever the column held.
            out[column] = out[column].astype(object)
            raw.append(column)
    return out, applied, raw


def k_anonymity(frame: pd.DataFrame, quasi_identifiers: list[str]) -> tuple[int | None, int]:
    """The smallest equivalence class over the quasi-identifiers, and how many classes there are."""
    if not quasi_identifiers or frame.empty:
        return None, 0
    sizes = frame.groupby(quasi_identifiers, dropna=False).size()
    return int(sizes.min()), len(sizes)


def classes_to_hide(sizes: np.ndarray, min_k: int, already_hidden: int = 0) -> np.ndarray:
    """Positions of the classes to suppress so that no class, the suppressed one included,
    is smaller than `min_k`.

    Suppressing only the classes below `min_k` is not enough: together they form one
    new class (all "*"), which may itself be smaller than `min_k`, and k ends at 1. So
    the smallest classes are taken in order until the suppressed class reaches `min_k`:
    every class below `min_k`, then, only if their rows are still too few, the next
    smallest class, which has at least `min_k` rows and so always suffices.
    `already_hidden` counts rows already all "*" (they join the suppressed class).
    """
    order = np.argsort(sizes, kind="stable")
    total = already_hidden
    taken: list[int] = []
    for position in order:
        size = int(sizes[position])
        if size >= min_k and (total == 0 or total >= min_k):
            break
        taken.append(int(position))
        total += size
    return np.asarray(taken, dtype=np.int64)


def _key(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def describe_classes(sizes: pd.Series, quasi: list[str], raw: list[str]) -> str:
    """The offending classes by size and generalised values, never a raw identifier."""
    shown = []
    for key, size in sizes.sort_values(kind="stable").head(SHOWN_CLASSES).items():
        values = {
            column: "(not generalised)" if column in raw and value != SUPPRESSED else value
            for column, value in zip(quasi, _key(key), strict=True)
        }
        shown.append(f"{int(size)} rows with {values}")
    more = len(sizes) - len(shown)
    return "; ".join(shown) + (f"; and {more} more classes" if more > 0 else "")


def enforce_min_k(
    frame: pd.DataFrame, quasi: list[str], min_k: int, raw: list[str]
) -> tuple[pd.DataFrame, dict]:
    """Suppress classes until k >= min_k; fail (exit 4) when no suppression can reach it.

    It cannot only when the data holds fewer than `min_k` rows in all: then even one
    fully suppressed class is too small, and dropping rows would leave nothing, so
    the stage stops instead of storing or reporting a k below `min_k`.
    """
    out = frame.copy()
    grouped = out.groupby(quasi, dropna=False, sort=True)
    sizes = grouped.size()
    suppressed_key = (SUPPRESSED,) * len(quasi)
    is_suppressed = np.array([_key(k) == suppressed_key for k in sizes.index], dtype=bool)
    already = int(sizes[is_suppressed].sum())
    candidates = np.flatnonzero(~is_suppressed)
    hidden = candidates[classes_to_hide(sizes.to_numpy()[candidates], min_k, already)]
    rows = grouped.ngroup().isin(hidden).to_numpy()
    out.loc[rows, quasi] = SUPPRESSED
    hidden_sizes = sizes.to_numpy()[hidden]
    final = out.groupby(quasi, dropna=False).size()
    offending = final[final < min_k]
    if not offending.empty:
        raise DataError(
            ", ".join(quasi),
            f"k-anonymity >= {min_k}",
            f"k = {int(final.min())}",
            f"{len(out)} rows cannot reach it even with every quasi-identifier suppressed: "
            f"{describe_classes(offending, quasi, raw)}",
        )
    return out, {
        "suppressed_rows": int(hidden_sizes.sum()),
        "suppressed_classes": len(hidden),
        "suppressed_rows_of_classes_at_min_k": int(hidden_sizes[hidden_sizes >= min_k].sum()),
    }


def minimise(
    frame: pd.DataFrame, contract: Contract, privacy: Privacy, key: bytes | None
) -> tuple[pd.DataFrame, dict]:
    """Drop the direct identifiers and key the id: the part of the filter that needs no
    other row, so ingest applies it before its first write. Returns the data and what
    was done (prepare copies it into the privacy report and checks it still holds)."""
    out = frame
    report: dict = {"dropped_columns": [], "pseudonymised_columns": []}
    if privacy.drop_direct_identifiers:
        direct = [c for c in contract.names(Role.DIRECT_IDENTIFIER) if c in out.columns]
        out = out.drop(columns=direct)
        report["dropped_columns"] = direct
    if privacy.pseudonymise_ids:
        if key is None:
            raise ConfigError("privacy.pseudonymise_ids is on but no key was given")
        out = out.assign(**{contract.id_column: pseudonymise(out[contract.id_column], key)})
        report["pseudonymised_columns"] = [contract.id_column]
    return out, report


def protect_quasi_identifiers(
    frame: pd.DataFrame, contract: Contract, privacy: Privacy, needed: Collection[str] = ()
) -> tuple[pd.DataFrame, dict]:
    """Return the data with its quasi-identifiers generalised, suppressed to `min_k` and
    dropped where unused, and a report with the k-anonymity figure.

    `needed` names the columns a later stage reads (model inputs, report slices): a
    quasi-identifier not among them is dropped after the k-anonymity report, because
    data that is never stored cannot leak.
    """
    report: dict = {}
    quasi = [c for c in contract.names(Role.QUASI_IDENTIFIER) if c in frame.columns]
    out, report["generalised_columns"], raw = coarsen(frame, contract, privacy, quasi)
    k_before, _ = k_anonymity(out, quasi)
    suppression = {
        "suppressed_rows": 0,
        "suppressed_classes": 0,
        "suppressed_rows_of_classes_at_min_k": 0,
    }
    if privacy.min_k is not None and k_before is not None and k_before < privacy.min_k:
        out, suppression = enforce_min_k(out, quasi, privacy.min_k, raw)
    k_after, classes_after = k_anonymity(out, quasi)
    unused = [c for c in quasi if c not in needed]
    report.update(
        quasi_identifiers=quasi,
        not_generalised_quasi_identifiers=raw,
        k_anonymity=k_after,
        k_anonymity_before_suppression=k_before,
        equivalence_classes=classes_after,
        min_k=privacy.min_k,
        **suppression,
        dropped_quasi_identifiers=unused,
        rows=len(out),
    )
    return out.drop(columns=unused), report
