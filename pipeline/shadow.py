"""Champion and challenger: the shadow comparison and the promotion it allows.

While `@<alias>-challenger` (`registry.challenger_alias`) is held, the scoring service
scores every request with the champion `@<alias>` and, in shadow, with the challenger.
It answers with the champion only and stores both scores; the challenger's row has
`shadow` true and `shadow_of` naming the champion's score (pipeline.store). Once
labels arrive, the pairs compare the two models on the very same records:

* `compare_pairs` (pure): counts, PR-AUC of each side on the labelled pairs, and the
  paired bootstrap of `pipeline.evidence.compare_models` - the challenger passes when,
  at `gates.evidence.confidence`, it is not worse than the champion by more than
  `gates.register.max_pr_auc_drop`;
* `crispml shadow report`: that comparison for the versions the aliases hold now;
* `crispml shadow promote`: moves `@<alias>` to the challenger's version (the move is
  recorded in the alias history, kept in the same store as the shadow scores, with its
  reason) and removes the challenger alias. Both are compare-and-sets against the
  versions the comparison was made for: an alias moved meanwhile refuses the promotion.
  With `--manual --reason ...` a person decides; without, it promotes only when
  `registry.shadow.auto_promote` is on, at least `registry.shadow.min_labelled_scores`
  labelled pairs exist and the comparison passes. Otherwise it exits 5 with the counts
  and the interval. `crispml alias rollback` undoes a promotion like any other move.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli import ROOT_OPTION, env_option, fail, settings_for
from pipeline.errors import ConfigError, CrispError, GateFailed

if TYPE_CHECKING:  # nothing heavy at import: `crispml --help` must stay instant
    import pandas as pd

    from pipeline.config import Settings

MANUAL_PREFIX = "shadow promote (manual)"
AUTOMATIC_PREFIX = "shadow promote (automatic)"


def evidence_of(settings: Settings) -> Any:
    from pipeline.evidence import Evidence

    return Evidence.of(settings)


def margin_of(settings: Settings) -> float:
    return float(settings.environment.gates.registration.max_pr_auc_drop)


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def compare_pairs(
    pairs: pd.DataFrame,
    champion_version: str,
    challenger_version: str,
    margin: float,
    evidence: Any,
) -> dict[str, Any]:
    """Summarise the pairs of `ScoreStore.shadow_pairs` (one champion and one challenger
    version): counts, each side's PR-AUC on the labelled pairs, and the paired bootstrap.

    The result has the fields of the service's `ShadowReport`; `verdict` is None when
    no pair is labelled yet, else passed, failed or insufficient_evidence.
    """
    from pipeline.evidence import compare_models, pr_auc

    labelled = pairs[pairs["label"].notna()]
    y = labelled["label"].to_numpy(dtype=int)
    positives = int(y.sum())
    both_classes = 0 < positives < len(y)

    def side(prefix: str, version: str) -> dict[str, Any]:
        scores = labelled[f"{prefix}_score"].to_numpy(dtype=float)
        return {
            "model_version": str(version),
            "scores": len(pairs),
            "labelled": len(labelled),
            "pr_auc": pr_auc(y, scores) if both_classes else None,
            "flagged": int(pairs[f"{prefix}_decision"].sum()),
        }

    out: dict[str, Any] = {
        "champion": side("champion", champion_version),
        "challenger": side("challenger", challenger_version),
        "pairs": len(pairs),
        "labelled_pairs": len(labelled),
        "positives": positives,
        "disagreements": int((pairs["champion_decision"] != pairs["challenger_decision"]).sum()),
        "verdict": None,
        "difference": None,
        "low": None,
        "high": None,
        "confidence": evidence.confidence,
        "margin": margin,
    }
    if labelled.empty:
        out["reason"] = (
            f"no labelled pairs yet: {len(pairs)} shadow scores of challenger version "
            f"{challenger_version} beside champion version {champion_version}, none labelled"
        )
        return out
    comparison = compare_models(
        y,
        labelled["challenger_score"].to_numpy(dtype=float),
        labelled["champion_score"].to_numpy(dtype=float),
        margin,
        evidence,
        names=(f"challenger v{challenger_version}", f"champion v{champion_version}"),
    )
    out.update(
        verdict=comparison.verdict,
        difference=_finite(comparison.difference),
        low=_finite(comparison.low),
        high=_finite(comparison.high),
        reason=comparison.reason,
    )
    return out


# --------------------------------------------------------------------------- registry side


def _client(settings: Settings) -> Any:
    from pipeline import tracking

    return tracking.configure(settings)


def _holder_version(client: Any, name: str, alias: str) -> str | None:
    from pipeline.registry import alias_holder

    holder = alias_holder(client, name, alias)
    return None if holder is None else str(holder.version)


def report(
    settings: Settings,
    client: Any,
    store: Any,
    *,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The comparison for the versions the aliases hold now (or the ones named)."""
    name = settings.registration.model_name
    registry = settings.environment.registry
    champion_version = champion_version or _holder_version(client, name, registry.alias)
    challenger_version = challenger_version or _holder_version(client, name, registry.challenger)
    if champion_version is None:
        raise CrispError(f"no version of {name!r} holds @{registry.alias}: nothing to compare")
    if challenger_version is None:
        raise CrispError(
            f"no version of {name!r} holds @{registry.challenger}: no challenger to compare "
            "(name an earlier one with --challenger-version)"
        )
    pairs = store.shadow_pairs(
        settings.env,
        name,
        champion_version=champion_version,
        challenger_version=challenger_version,
        scored_from=since,
        scored_to=until,
    )
    summary = compare_pairs(
        pairs, champion_version, challenger_version, margin_of(settings), evidence_of(settings)
    )
    return {
        "environment": settings.env,
        "model_name": name,
        "champion_alias": registry.alias,
        "challenger_alias": registry.challenger,
        "min_labelled_scores": registry.shadow.min_labelled_scores,
        "auto_promote": registry.shadow.auto_promote,
        **summary,
    }


def promote(
    settings: Settings,
    client: Any,
    store: Any,
    *,
    actor: str,
    manual: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Move `@<alias>` to the challenger and remove the challenger alias.

    Manual: a person decided (`reason` required); the comparison is computed for the
    record when the store answers, never as a condition. Automatic: GateFailed unless
    auto-promotion is on, enough labelled pairs exist and the comparison passed.
    `store` holds the shadow scores and the alias history (migrated).
    """
    from pipeline.registry import move_alias, remove_alias

    name = settings.registration.model_name
    registry = settings.environment.registry
    alias, challenger_alias = registry.alias, registry.challenger
    challenger = _holder_version(client, name, challenger_alias)
    if challenger is None:
        raise CrispError(f"no version of {name!r} holds @{challenger_alias}: nothing to promote")
    champion = _holder_version(client, name, alias)
    summary: dict[str, Any] | None = None
    if manual:
        if not (reason or "").strip():
            raise ConfigError("a manual promotion needs --reason (who decided, and why)")
        if champion is not None and champion != challenger:
            try:
                summary = report(settings, client, store)
            except Exception as error:  # a person decided: the record is best effort
                summary = {"reason": f"comparison not available: {error}"}
        event_reason = f"{MANUAL_PREFIX}: {reason}"
    else:
        if not registry.shadow.auto_promote:
            raise GateFailed(
                f"not promoted: automatic promotion is off in {settings.env} "
                "(registry.shadow.auto_promote); a person promotes with "
                "`crispml shadow promote --manual --reason ...`"
            )
        if champion is None:
            raise GateFailed(
                f"not promoted: @{alias} holds no version, so there is nothing to compare "
                "the challenger with; promote with --manual"
            )
        summary = report(settings, client, store)
        needed = registry.shadow.min_labelled_scores
        counts = (
            f"{summary['labelled_pairs']} labelled shadow scores ({summary['positives']} "
            f"positives) of challenger version {challenger} beside champion version {champion}"
        )
        if summary["labelled_pairs"] < needed:
            raise GateFailed(f"not promoted: {counts}; at least {needed} are needed")
        if summary["verdict"] != "passed":
            raise GateFailed(f"not promoted: {counts}; {summary['reason']}")
        event_reason = f"{AUTOMATIC_PREFIX}: {counts}; {summary['reason']}"
    event = move_alias(
        client, store, name, alias, challenger, reason=event_reason, actor=actor, expected=champion
    )
    remove_alias(
        client,
        store,
        name,
        challenger_alias,
        f"promoted to @{alias} (version {challenger})",
        actor,
        expected=challenger,
    )
    return {
        "status": "promoted",
        "mode": "manual" if manual else "automatic",
        "model_name": name,
        "alias": alias,
        "from": champion,
        "to": challenger,
        "removed_alias": challenger_alias,
        "event": event,
        "comparison": summary,
    }


# --------------------------------------------------------------------------- commands


ROOT = ROOT_OPTION
ENV = env_option("Environment whose aliases to use (default: the active one in params.yaml).")


def _json(value: Any) -> str:
    import numpy as np

    def default(item: Any) -> Any:
        if isinstance(item, np.generic):
            return item.item()
        return str(item)

    return json.dumps(value, indent=2, default=default)


@click.group("shadow")
def shadow_group() -> None:
    """Champion/challenger: compare the challenger's shadow scores, promote it."""


@shadow_group.command("report")
@ROOT
@ENV
@click.option("--champion-version", default=None, help="Default: the holder of @<alias>.")
@click.option(
    "--challenger-version", default=None, help="Default: the holder of the challenger alias."
)
@click.option("--since", type=click.DateTime(), default=None, help="Scored at or after (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Scored before (UTC).")
def report_command(
    root: Path | None,
    env: str | None,
    champion_version: str | None,
    challenger_version: str | None,
    since: datetime | None,
    until: datetime | None,
) -> None:
    """Counts, PR-AUC of each and the paired bootstrap on the labelled pairs (JSON)."""
    from datetime import UTC

    from pipeline.store import ScoreStore

    try:
        settings = settings_for(root, env)
        store = ScoreStore(settings.store_url)
        try:
            result = report(
                settings,
                _client(settings),
                store,
                champion_version=champion_version,
                challenger_version=challenger_version,
                since=since.replace(tzinfo=UTC) if since else None,
                until=until.replace(tzinfo=UTC) if until else None,
            )
        finally:
            store.dispose()
        click.echo(_json(result))
    except CrispError as error:
        fail(error)


@shadow_group.command("promote")
@ROOT
@ENV
@click.option("--manual", is_flag=True, help="A person decides: promote without the gate.")
@click.option("--reason", default=None, help="Why (required with --manual): recorded in history.")
def promote_command(root: Path | None, env: str | None, manual: bool, reason: str | None) -> None:
    """Move @<alias> to the challenger and remove the challenger alias.

    Without --manual: only with registry.shadow.auto_promote on, at least
    registry.shadow.min_labelled_scores labelled shadow scores, and a paired bootstrap
    that passes; otherwise exit 5 with the counts and the interval.
    """
    from pipeline.gitops import actor_from
    from pipeline.store import ScoreStore

    try:
        settings = settings_for(root, env)
        store = ScoreStore(settings.store_url)
        try:
            store.migrate()  # the alias history's tables
            result = promote(
                settings,
                _client(settings),
                store,
                actor=actor_from(os.environ),
                manual=manual,
                reason=reason,
            )
        finally:
            store.dispose()
        click.echo(_json(result))
        click.echo(
            f"PROMOTED ({result['mode']}): @{result['alias']} version {result['from']} -> "
            f"version {result['to']}; @{result['removed_alias']} removed",
            err=True,
        )
    except CrispError as error:
        fail(error)


def add_commands(cli: click.Group) -> None:
    """Attach `crispml shadow ...` (called once from pipeline.cli)."""
    cli.add_command(shadow_group)
