"""Evidence for gates: PR-AUC with bootstrap confidence intervals, paired or not.

A fraud frame holds about 40 positives. On so few, two PR-AUCs a few hundredths apart
are the same model within noise, so a gate that compares point estimates promotes or
rejects by chance. Every gate therefore asks one question of the resampled data: is
the candidate worse beyond a margin, at a stated confidence? Below a minimum number of
positives the answer is "not enough evidence", with the count, never a silent pass.

Resampling is stratified (positives and negatives are drawn separately), so every
resample keeps the frame's positive count and no resample is empty of positives.
PR-AUC only steps at the positives' scores, so each model's rows are reduced once to
those steps and a resample is a count per step: 1,000 resamples of 50,000 rows take
a few seconds, not a sort per resample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.config import Settings

PASSED, FAILED, INSUFFICIENT = "passed", "failed", "insufficient_evidence"
# Above this many negatives, one model's bootstrap draws each resample's negatives as
# counts per step (a multinomial) instead of row by row: the same distribution, since
# the counts of n draws with replacement are multinomial, at a cost per step instead of
# per row (1,000 resamples of 1.4 million rows took about 30 s row by row). Below it
# the row-by-row draws stay, so every figure of the default data is unchanged.
ROW_DRAWS_MAX_NEGATIVES = 200_000


@dataclass(frozen=True)
class Evidence:
    """How much to resample, how sure to be, and how little data is too little."""

    confidence: float = 0.95
    resamples: int = 1000
    min_positives: int = 30
    seed: int = 0

    @classmethod
    def of(cls, settings: Settings) -> Evidence:
        """The environment's `gates.evidence`: every gate of one environment uses the same."""
        given = settings.environment.gates.evidence
        return cls(
            confidence=given.confidence,
            resamples=given.resamples,
            min_positives=given.min_positives,
            seed=given.seed,
        )


@dataclass(frozen=True)
class _Ranking:
    """One model's scores reduced to what PR-AUC depends on.

    PR-AUC steps at each distinct score of a positive. What it needs is, per such step,
    how many positives sit there and how many negatives score at least as high. So a
    positive is its step, and a negative is the first step at which it is flagged
    (`steps` when it scores below every positive and never counts).
    """

    positive_step: np.ndarray
    negative_step: np.ndarray
    steps: int


def _rank(y: np.ndarray, scores: np.ndarray) -> _Ranking:
    # Ascending in -score is descending in score; ties share a step, as in sklearn.
    thresholds, positive_step = np.unique(-scores[y == 1], return_inverse=True)
    negative_step = np.searchsorted(thresholds, -scores[y == 0], side="left")
    return _Ranking(positive_step.ravel(), negative_step, len(thresholds))


def _ap(positives_at: np.ndarray, negatives_at: np.ndarray) -> np.ndarray:
    """PR-AUC from counts per step (resamples x steps): sum of recall step x precision."""
    tp = np.cumsum(positives_at, axis=-1)
    flagged = tp + np.cumsum(negatives_at, axis=-1)
    precision = np.divide(tp, flagged, out=np.zeros_like(tp, dtype=float), where=flagged > 0)
    total = tp[..., -1:]
    return np.sum(positives_at / np.where(total > 0, total, 1) * precision, axis=-1)


def _counts(step: np.ndarray, draws: np.ndarray, steps: int) -> np.ndarray:
    """Per resample (row of `draws`, indices into `step`), how many rows land at each step."""
    batch = draws.shape[0]
    landed = step[draws] + (steps + 1) * np.arange(batch)[:, None]
    return np.bincount(landed.ravel(), minlength=batch * (steps + 1)).reshape(batch, -1)[:, :steps]


def _bootstrap(y: np.ndarray, score_sets: list[np.ndarray], evidence: Evidence) -> list[np.ndarray]:
    """PR-AUC of every score set on the same stratified resamples (paired when several).

    Each resample draws the positives and the negatives with replacement, separately,
    so it keeps the frame's positive count. The same draws serve every model.
    """
    rng = np.random.default_rng(evidence.seed)
    rankings = [_rank(y, scores) for scores in score_sets]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if len(rankings) == 1 and n_neg > ROW_DRAWS_MAX_NEGATIVES:
        return [_bootstrap_by_counts(rankings[0], n_pos, n_neg, evidence, rng)]
    results: list[list[np.ndarray]] = [[] for _ in score_sets]
    # Batches bound memory: the negative draws are resamples x negatives integers.
    batch = max(1, min(evidence.resamples, 4_000_000 // max(n_neg, 1)))
    done = 0
    while done < evidence.resamples:
        size = min(batch, evidence.resamples - done)
        pos_draws = rng.integers(0, n_pos, size=(size, n_pos))
        neg_draws = rng.integers(0, max(n_neg, 1), size=(size, n_neg))
        for i, ranking in enumerate(rankings):
            positives_at = _counts(ranking.positive_step, pos_draws, ranking.steps)
            negatives_at = _counts(ranking.negative_step, neg_draws, ranking.steps)
            results[i].append(_ap(positives_at, negatives_at))
        done += size
    return [np.concatenate(r) for r in results]


def _bootstrap_by_counts(
    ranking: _Ranking, n_pos: int, n_neg: int, evidence: Evidence, rng: np.random.Generator
) -> np.ndarray:
    """One model's stratified bootstrap with the negatives drawn as counts per step.

    Paired comparisons cannot use it: their models step at different scores, and the
    same rows must serve both (see `ROW_DRAWS_MAX_NEGATIVES`).
    """
    shares = np.bincount(ranking.negative_step, minlength=ranking.steps + 1) / n_neg
    out = []
    batch = max(1, min(evidence.resamples, 4_000_000 // max(n_pos, ranking.steps + 1, 1)))
    done = 0
    while done < evidence.resamples:
        size = min(batch, evidence.resamples - done)
        pos_draws = rng.integers(0, n_pos, size=(size, n_pos))
        positives_at = _counts(ranking.positive_step, pos_draws, ranking.steps)
        negatives_at = rng.multinomial(n_neg, shares, size=size)[:, : ranking.steps]
        out.append(_ap(positives_at, negatives_at))
        done += size
    return np.concatenate(out)


def pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, the figure every gate is about (sklearn's definition)."""
    y = np.asarray(y).astype(int)
    if not y.any():
        return float("nan")
    ranking = _rank(y, np.asarray(scores, dtype=float))
    positives_at = np.bincount(ranking.positive_step, minlength=ranking.steps)
    negatives_at = np.bincount(ranking.negative_step, minlength=ranking.steps + 1)[: ranking.steps]
    return float(_ap(positives_at, negatives_at))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """A candidate against a champion on the same rows: the difference and its interval."""

    verdict: str
    candidate_pr_auc: float
    champion_pr_auc: float
    difference: float
    low: float
    high: float
    margin: float
    confidence: float
    resamples: int
    positives: int
    rows: int
    reason: str

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def as_dict(self) -> dict:
        return asdict(self)


def compare_models(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    margin: float,
    evidence: Evidence = Evidence(),
    *,
    names: tuple[str, str] = ("candidate", "champion"),
) -> Comparison:
    """Paired bootstrap of PR-AUC(candidate) - PR-AUC(champion) on the same rows.

    Passes when the lower bound of the two-sided interval at `confidence` is above
    -margin: the candidate may be worse, but not by more than the margin, at that
    confidence. Identical models give a difference of exactly 0 on every resample.
    """
    y = np.asarray(y).astype(int)
    candidate, champion = np.asarray(candidate, float), np.asarray(champion, float)
    positives = int(y.sum())
    cand_auc, champ_auc = pr_auc(y, candidate), pr_auc(y, champion)
    common = dict(
        candidate_pr_auc=cand_auc,
        champion_pr_auc=champ_auc,
        difference=cand_auc - champ_auc,
        margin=margin,
        confidence=evidence.confidence,
        resamples=evidence.resamples,
        positives=positives,
        rows=len(y),
    )
    if positives < evidence.min_positives:
        return Comparison(
            verdict=INSUFFICIENT,
            low=float("nan"),
            high=float("nan"),
            reason=(
                f"not enough evidence: {positives} positives in {len(y)} rows, at least "
                f"{evidence.min_positives} are needed to compare {names[0]} and {names[1]}"
            ),
            **common,
        )
    cand_boot, champ_boot = _bootstrap(y, [candidate, champion], evidence)
    low, high = _interval(cand_boot - champ_boot, evidence.confidence)
    passed = low >= -margin
    share = f"{evidence.confidence:.0%}"
    reason = (
        f"{names[0]} PR-AUC {cand_auc:.4f} vs {names[1]} {champ_auc:.4f}: difference "
        f"{cand_auc - champ_auc:+.4f}, {share} interval [{low:+.4f}, {high:+.4f}] on "
        f"{positives} positives; "
        + (
            f"not worse than the margin {margin:.4f}"
            if passed
            else f"worse beyond the margin {margin:.4f}"
        )
    )
    return Comparison(
        verdict=PASSED if passed else FAILED, low=low, high=high, reason=reason, **common
    )


@dataclass(frozen=True)
class Estimate:
    """One model's PR-AUC on some rows, with its interval."""

    pr_auc: float
    low: float
    high: float
    confidence: float
    positives: int
    rows: int
    enough: bool

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(y: np.ndarray, scores: np.ndarray, evidence: Evidence = Evidence()) -> Estimate:
    """PR-AUC with a stratified bootstrap interval; `enough` says whether to trust it."""
    y = np.asarray(y).astype(int)
    scores = np.asarray(scores, float)
    positives = int(y.sum())
    point = pr_auc(y, scores) if positives else float("nan")
    enough = positives >= evidence.min_positives
    if not enough or positives == len(y):
        return Estimate(
            point, float("nan"), float("nan"), evidence.confidence, positives, len(y), enough
        )
    (boot,) = _bootstrap(y, [scores], evidence)
    low, high = _interval(boot, evidence.confidence)
    return Estimate(point, low, high, evidence.confidence, positives, len(y), enough)
