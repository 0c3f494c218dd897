"""A deterministic stand-in for the public credit-card fraud data set.

The real data cannot ship with the project and may not be downloaded at run time, so
the generator reproduces its shape: `Time` in seconds over two days with a day/night
rhythm, 28 PCA-like components `V1`..`V28` with falling variance, a long-tailed
`Amount`, and a rare `Class` whose positives sit apart on a handful of components.
It adds an id, a direct identifier and two quasi-identifiers, so the privacy filter
has something real to do.

Drift can start at a chosen frame: feature means shift, amounts grow and part of the
fraud moves to a new pattern the model has not seen. That is what verify must catch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Generator

N_COMPONENTS = 28

# Where fraud sits, in standard deviations of each component (1-based V index): the
# components the real data set separates on, scaled so that gradient boosting reaches
# a test PR-AUC near 0.8 on the default data, as models do on the real data.
FRAUD_SHIFT = {
    14: -2.88,
    12: -2.52,
    10: -2.16,
    17: -2.34,
    4: 1.98,
    11: 1.71,
    3: -1.62,
    7: -1.44,
    16: -1.26,
}
# A second fraud pattern (card testing: small amounts, other components) that drift
# makes more common.
NEW_FRAUD_SHIFT = {2: 2.5, 5: -2.2, 9: -2.0, 19: 1.8, 21: 1.6}


def frame_of(time: np.ndarray, duration: float, frames: int) -> np.ndarray:
    """1-based time frame of each timestamp, equal-width windows over the duration."""
    width = duration / frames
    return np.clip((np.asarray(time) // width).astype(int) + 1, 1, frames)


def _times(rng: np.random.Generator, rows: int, duration: float) -> np.ndarray:
    """Timestamps with a daily rhythm: busy days, quiet nights, as card traffic is."""
    out = np.empty(0)
    while out.size < rows:
        candidates = rng.uniform(0.0, duration, size=rows * 2)
        hour = (candidates % 86_400) / 3_600
        intensity = 0.25 + 0.75 * np.clip(np.sin((hour - 6.0) / 18.0 * np.pi), 0.0, None)
        keep = rng.uniform(size=candidates.size) < intensity
        out = np.concatenate([out, candidates[keep]])
    return np.sort(np.round(out[:rows]))


def generate(config: Generator, frames: int) -> pd.DataFrame:
    """Build the whole data set; the same config always gives the same bytes."""
    rng = np.random.default_rng(config.seed)
    rows = config.rows
    time = _times(rng, rows, config.duration_seconds)
    frame = frame_of(time, config.duration_seconds, frames)

    positives = max(2, round(rows * config.fraud_rate)) if rows >= 4 else 1
    is_fraud = np.zeros(rows, dtype=bool)
    is_fraud[rng.choice(rows, size=positives, replace=False)] = True

    scales = 2.0 * 0.94 ** np.arange(N_COMPONENTS)
    noise = rng.standard_normal((rows, N_COMPONENTS))
    # Fraud is more spread out than normal traffic, which makes the classes overlap.
    noise[is_fraud] *= 1.6
    shift = np.zeros((rows, N_COMPONENTS))
    old = np.zeros(N_COMPONENTS)
    for index, sd in FRAUD_SHIFT.items():
        old[index - 1] = sd
    new = np.zeros(N_COMPONENTS)
    for index, sd in NEW_FRAUD_SHIFT.items():
        new[index - 1] = sd

    drift = config.drift
    drifted = frame >= drift.start_frame if drift.start_frame is not None else np.zeros(rows, bool)
    uses_new_pattern = is_fraud & drifted & (rng.uniform(size=rows) < drift.fraud_pattern_change)
    shift[is_fraud & ~uses_new_pattern] = old
    shift[uses_new_pattern] = new
    for name in drift.columns:
        if name.startswith("V") and name[1:].isdigit() and 1 <= int(name[1:]) <= N_COMPONENTS:
            shift[drifted, int(name[1:]) - 1] += drift.feature_shift
    components = (noise + shift) * scales

    amount = rng.lognormal(mean=3.0, sigma=1.25, size=rows)
    fraud_amount = np.where(
        rng.uniform(size=rows) < 0.4,
        rng.uniform(0.5, 3.0, size=rows),
        rng.lognormal(mean=4.6, sigma=1.1, size=rows),
    )
    amount = np.where(is_fraud, fraud_amount, amount)
    amount = np.where(drifted, amount * drift.amount_scale, amount)
    amount = np.round(np.clip(amount, 0.0, 25_000.0), 2)

    data: dict[str, object] = {
        "transaction_id": [f"tx{index:07d}" for index in range(rows)],
        "card_number": [
            f"4{value:015d}" for value in rng.integers(0, 10**15, size=rows, dtype=np.int64)
        ],
        "Time": time,
    }
    for index in range(N_COMPONENTS):
        data[f"V{index + 1}"] = np.round(components[:, index], 6)
    data["Amount"] = amount
    data["customer_age"] = np.clip(np.round(rng.normal(44, 14, size=rows)), 18, 95).astype("int64")
    prefixes = rng.zipf(1.6, size=rows) % 90 + 10
    data["postcode"] = [
        f"{p:02d}{s:03d}" for p, s in zip(prefixes, rng.integers(0, 1000, size=rows), strict=True)
    ]
    data["Class"] = is_fraud.astype("int64")
    return pd.DataFrame(data)
