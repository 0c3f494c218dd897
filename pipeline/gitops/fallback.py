"""prod's fallback: serve the model the fallback alias (@qa) validated, when it is the same.

"The same" is what decides a model, not the commit that happened to build it: the git
hashes of the pipeline code, params.yaml, dvc.yaml and the data behind the source
(`pipeline.registry.lineage_keys`, recorded as `lineage.*` tags on every version at
registration). A README-only commit keeps QA's model eligible; a code, params or data
change does not.

Eligible is not enough: the fallback model is scored on this environment's own test
frame (the curated test split, as the register gate scores the champion) against the
current champion, with the register gate's paired bootstrap and margin
(`gates.register.max_pr_auc_drop`, `gates.evidence`), and refused when it is worse
beyond that margin, or when there is not enough evidence to tell. The comparison goes
into reports/registered.json, the job log and the alias history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.registered import Fallback


def model_scores(settings, name: str, version: str, test) -> Any:
    """Positive-class probabilities of a registered version on the test frame."""
    from pipeline.saved_model import load_model
    from pipeline.train import predict_proba

    model = load_model(f"models:/{name}/{version}")
    return predict_proba(model, test, settings.model_inputs)


def choose_fallback(
    client: Any,
    settings,
    alias: str,
    fallback_alias: str,
    lineage: Mapping[str, str],
    test,
    scorer: Callable[[Any, str, str, Any], Any] = model_scores,
) -> Fallback:
    """Decide whether `alias` may fall back to `fallback_alias`'s model, and say why.

    Never moves an alias: the caller (register, or the promote job) does.
    """
    from pipeline import registry
    from pipeline.evidence import FAILED, INSUFFICIENT, Evidence, compare_models

    name = settings.registration.model_name
    holder = registry.alias_holder(client, name, fallback_alias)
    if holder is None:
        return Fallback(
            used=False,
            from_alias=fallback_alias,
            reason=f"@{fallback_alias} holds no version of {name!r}; @{alias} stays where it was",
        )
    version = str(holder.version)
    differences = registry.lineage_differences(holder.tags, dict(lineage))
    if differences:
        return Fallback(
            used=False,
            version=version,
            from_alias=fallback_alias,
            reason=(
                f"@{fallback_alias} holds version {version}, built from other code, params or "
                f"data than this pipeline: it differs in {', '.join(differences)}; "
                f"@{alias} stays where it was"
            ),
        )
    matched = {k: v for k, v in lineage.items()}
    champion = registry.alias_holder(client, name, alias)
    if champion is None or str(champion.version) == version:
        note = (
            f"@{alias} holds no version: nothing to compare with"
            if champion is None
            else f"@{alias} already holds version {version}"
        )
        return Fallback(
            used=True, version=version, from_alias=fallback_alias, reason=note, lineage=matched
        )
    target = settings.contract.target
    y = test[target].to_numpy()
    try:
        fallback_scores = scorer(settings, name, version, test)
        champion_scores = scorer(settings, name, str(champion.version), test)
    except Exception as error:  # a model that cannot score these rows cannot serve them
        return Fallback(
            used=False,
            version=version,
            from_alias=fallback_alias,
            reason=(
                f"the @{fallback_alias} model (version {version}) or the @{alias} model "
                f"(version {champion.version}) cannot score {settings.env}'s test frame: "
                f"{type(error).__name__}: {error}"
            ),
            lineage=matched,
        )
    comparison = compare_models(
        y,
        fallback_scores,
        champion_scores,
        settings.environment.gates.registration.max_pr_auc_drop,
        Evidence.of(settings),
        names=(f"@{fallback_alias} version {version}", f"@{alias} version {champion.version}"),
    )
    refused = comparison.verdict in (FAILED, INSUFFICIENT)
    reason = comparison.reason
    if refused:
        reason = f"the fallback is refused, @{alias} stays on version {champion.version}: {reason}"
    return Fallback(
        used=not refused,
        version=version,
        from_alias=fallback_alias,
        reason=reason,
        comparison=comparison.as_dict(),
        lineage=matched,
    )
