"""The privacy filter of an environment: identifiers out, ids keyed, quasi-identifiers coarse.

Kept apart from prepare because a reviewer from the data-protection office should be
able to read exactly this file and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
import pandas as pd

from pipeline.config import Contract, Generalise, Privacy, Role
from pipeline.config.environment import MIN_KEY_BYTES
from pipeline.errors import ConfigError

SUPPRESSED = "*"


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


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed HMAC-SHA256: stable for joins with later ground truth, unlinkable without the key."""
    return values.map(
        lambda v: hmac.new(key, str(v).encode("utf-8"), hashlib.sha256).hexdigest()[:32]
    )


def generalise(values: pd.Series, rule: Generalise) -> pd.Series:
    if rule.bin_width is not None:
        numeric = pd.to_numeric(values, errors="coerce")
        low = (np.floor(numeric / rule.bin_width) * rule.bin_width).astype("float64")
        width = rule.bin_width
        return pd.Series(
            [f"{lo:g}-{lo + width - 1:g}" if pd.notna(lo) else None for lo in low],
            index=values.index,
            dtype=object,
        )
    keep = int(rule.keep_prefix or 0)
    return values.astype(str).map(lambda v: v[:keep] + SUPPRESSED * max(len(v) - keep, 0))


def k_anonymity(frame: pd.DataFrame, quasi_identifiers: list[str]) -> tuple[int | None, int]:
    """The smallest equivalence class over the quasi-identifiers, and how many classes there are."""
    if not quasi_identifiers or frame.empty:
        return None, 0
    sizes = frame.groupby(quasi_identifiers, dropna=False).size()
    return int(sizes.min()), len(sizes)


def apply_privacy(
    frame: pd.DataFrame, contract: Contract, privacy: Privacy, key: bytes | None
) -> tuple[pd.DataFrame, dict]:
    """Return the filtered data and a report of what was done, with the k-anonymity figure."""
    out = frame.copy()
    report: dict = {"dropped_columns": [], "pseudonymised_columns": [], "generalised_columns": {}}
    if privacy.drop_direct_identifiers:
        direct = [c for c in contract.names(Role.DIRECT_IDENTIFIER) if c in out.columns]
        out = out.drop(columns=direct)
        report["dropped_columns"] = direct
    if privacy.pseudonymise_ids:
        if key is None:
            raise ConfigError("privacy.pseudonymise_ids is on but no key was given")
        out[contract.id_column] = pseudonymise(out[contract.id_column], key)
        report["pseudonymised_columns"] = [contract.id_column]
    for column, rule in privacy.generalise.items():
        if column not in out.columns:  # an optional column this source does not have
            continue
        out[column] = generalise(out[column], rule)
        report["generalised_columns"][column] = rule.model_dump(exclude_none=True)
    quasi = [c for c in contract.names(Role.QUASI_IDENTIFIER) if c in out.columns]
    k_before, _ = k_anonymity(out, quasi)
    suppressed = 0
    if privacy.min_k is not None and k_before is not None and k_before < privacy.min_k:
        sizes = out.groupby(quasi, dropna=False)[quasi[0]].transform("size")
        small = sizes < privacy.min_k
        suppressed = int(small.sum())
        out.loc[small, quasi] = SUPPRESSED
    k_after, classes_after = k_anonymity(out, quasi)
    report.update(
        quasi_identifiers=quasi,
        k_anonymity=k_after,
        k_anonymity_before_suppression=k_before,
        equivalence_classes=classes_after,
        min_k=privacy.min_k,
        suppressed_rows=suppressed,
        rows=len(out),
    )
    return out, report
