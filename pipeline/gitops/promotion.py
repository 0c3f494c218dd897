"""`crispml alias promote`: move an environment's alias to the version `register` decided on.

Promotion is the act of an environment branch's pipeline, never of a merge request, so
it is a job of its own. Three checks keep it safe when pipelines interleave or receipts
go stale:

* compare-and-set: `register` records which version held the alias when its gate
  judged the candidate (`alias_seen` in reports/registered.json). When the alias holds
  another version now (a concurrent pipeline promoted meanwhile), the verdict compared
  against a champion that no longer serves, and promote refuses. The move itself is a
  second compare-and-set (`pipeline.registry.move_alias`, `expected`): the alias it
  moves must still hold what promote read at its start, checked under the history's
  lock, so a promotion landing in between is refused rather than recorded out of order;
* the version must come from this commit, or from the same lineage (pipeline code,
  params, dvc.yaml and data hashes, see `pipeline.registry.lineage_keys`);
* an environment's own candidate must have been registered for that environment.

Where the environment has a challenger alias (prod: `@prod-challenger`), promote moves
the challenger, not the champion: the model first runs in shadow, and
`crispml shadow promote` makes it the champion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import CrispError
from pipeline.gitops.common import short
from pipeline.registered import Registered

_UNCHECKED = object()


@dataclass(frozen=True)
class Decision:
    """What the environment should serve after this pipeline, as `register` decided it."""

    kind: Literal["candidate", "fallback", "none"]
    version: str | None
    candidate_version: str | None
    gate_reasons: list[str] = field(default_factory=list)
    from_alias: str | None = None
    fallback_reason: str | None = None
    # The alias holder the gate compared with (None: the alias held nothing), and whether
    # register recorded it at all (receipts of older registers did not).
    alias_seen: str | None = None
    alias_seen_recorded: bool = False
    # The fallback model scored against the champion on this environment's test frame.
    fallback_evidence: str | None = None


def decide(receipt: Registered) -> Decision:
    """Read register's receipt: candidate, fallback, or nothing."""
    seen = receipt.alias_seen
    common = {
        "alias_seen": seen.version if seen else None,
        "alias_seen_recorded": seen is not None,
    }
    reasons = list(receipt.gate.reasons)
    kind = receipt.decision
    if kind == "candidate":
        return Decision("candidate", receipt.candidate_version, receipt.candidate_version, **common)
    fallback = receipt.fallback
    if kind == "fallback" and fallback is not None:
        return Decision(
            "fallback",
            fallback.version,
            receipt.candidate_version,
            reasons,
            fallback.from_alias,
            fallback_evidence=(fallback.comparison or {}).get("reason"),
            **common,
        )
    return Decision(
        "none",
        None,
        receipt.candidate_version,
        reasons,
        fallback_reason=fallback.reason if fallback else None,
        **common,
    )


def _check_origin(
    version: Any,
    decision: Decision,
    alias: str,
    env: str,
    commit: str,
    lineage: Mapping[str, str] | None,
) -> str:
    """Why this version may serve this commit ("commit" or "lineage"), or a refusal."""
    from pipeline.registry import lineage_differences

    tagged = version.tags.get("git_commit")
    if tagged == commit:
        origin = "commit"
    elif lineage and not lineage_differences(version.tags, dict(lineage)):
        origin = "lineage"
    else:
        differs = (
            "; it differs in " + ", ".join(lineage_differences(version.tags, dict(lineage)))
            if lineage
            else ""
        )
        raise CrispError(
            f"refusing to point @{alias} at version {decision.version}: it was built from "
            f"commit {short(tagged)}, this pipeline builds {short(commit)}{differs} (a stale "
            "reports/registered.json?)"
        )
    if decision.kind == "candidate" and version.tags.get("environment") != env:
        raise CrispError(
            f"refusing to point @{alias} at version {decision.version}: it was registered "
            f"for environment {version.tags.get('environment')!r}, not {env!r}"
        )
    return origin


def promote(
    client: Any,
    store: Any,
    name: str,
    alias: str,
    env: str,
    decision: Decision,
    commit: str,
    actor: str,
    pipeline_url: str | None = None,
    *,
    challenger_alias: str | None = None,
    lineage: Mapping[str, str] | None = None,
) -> dict:
    """Point the alias (or its challenger) at the decided version, once.

    `alias` is the environment's champion alias: the one the gate compared with, and the
    one the compare-and-set checks. With `challenger_alias`, that alias is moved instead.
    `store` keeps the alias history (`pipeline.registry.history_store`).
    Idempotent: when the moved alias already holds the version (a re-run) nothing is
    written, so the history gains no duplicate event.
    """
    from pipeline import registry

    holder = registry.alias_holder(client, name, alias)
    current = str(holder.version) if holder else None
    moves = challenger_alias or alias
    if moves != alias:
        target_holder = registry.alias_holder(client, name, moves)
        target_current = str(target_holder.version) if target_holder else None
    else:
        target_current = current
    common = {
        "alias": moves,
        "champion_alias": alias,
        "champion_version": current,
        "candidate_version": decision.candidate_version,
        "reasons": decision.gate_reasons,
        "commit": commit,
    }
    if decision.kind == "none" or decision.version is None:
        # What keeps serving is the champion: name it, not the challenger.
        return {
            **common,
            "alias": alias,
            "status": "not_promoted",
            "version": current,
            "fallback_reason": decision.fallback_reason,
        }
    if (
        decision.alias_seen_recorded
        and current != decision.alias_seen
        and target_current != str(decision.version)
    ):
        raise CrispError(
            f"refusing to move @{moves}: @{alias} held "
            f"{'version ' + decision.alias_seen if decision.alias_seen else 'nothing'} when "
            f"the gate judged version {decision.candidate_version}, and holds "
            f"{'version ' + current if current else 'nothing'} now (another pipeline moved it "
            "meanwhile); the verdict compared against a model that no longer serves: re-run "
            "this pipeline"
        )
    version = client.get_model_version(name, decision.version)
    origin = _check_origin(version, decision, moves, env, commit, lineage)
    if decision.kind == "candidate":
        reason = f"gate passed in {env}"
    else:
        reason = (
            f"fallback: own model version {decision.candidate_version} failed its gate; "
            f"serving the @{decision.from_alias} model of the same "
            f"{'commit' if origin == 'commit' else 'code, params and data'}"
        )
        if decision.fallback_evidence:
            reason += f"; on this environment's test frame: {decision.fallback_evidence}"
    if moves != alias:
        reason += f" (challenger of @{alias}, in shadow)"
    if pipeline_url:
        reason += f" ({pipeline_url})"
    # A version that is the champion already needs no shadow run beside itself.
    moved = target_current != str(decision.version) and current != str(decision.version)
    if moved:
        registry.move_alias(
            client,
            store,
            name,
            moves,
            str(decision.version),
            reason=reason,
            actor=actor,
            expected=target_current,
            git_commit=commit,
            pipeline=pipeline_url,
        )
    return {
        **common,
        "status": "promoted" if decision.kind == "candidate" else "fallback",
        "version": str(decision.version),
        "previous": target_current,
        "moved_now": moved,
        "from_alias": decision.from_alias,
        "version_environment": version.tags.get("environment"),
        "version_commit": version.tags.get("git_commit"),
        "matched_by": origin,
        "shadow": moves != alias,
        "fallback_evidence": decision.fallback_evidence,
    }


def promotion_message(result: Mapping[str, Any], env: str) -> str:
    """One line a person reads in the job log; FALLBACK and NOT PROMOTED say why."""
    alias, commit = result["alias"], short(result.get("commit"))
    shadow = (
        f"; it runs in shadow beside @{result['champion_alias']} until `crispml shadow "
        "promote` makes it the champion"
        if result.get("shadow")
        else ""
    )
    if result["status"] == "promoted":
        return (
            f"PROMOTED: @{alias} -> version {result['version']} (environment {env}, "
            f"commit {commit}); its gate passed{shadow}"
        )
    if result["status"] == "fallback":
        same = (
            "commit" if result.get("matched_by", "commit") == "commit" else "code, params and data"
        )
        return (
            f"FALLBACK: @{alias} -> version {result['version']}, the model "
            f"@{result['from_alias']} validated for the same {same} as commit {commit}, "
            f"because {env}'s own model (version {result['candidate_version']}) failed its "
            "gate: "
            + "; ".join(result.get("reasons") or ["(no reason recorded)"])
            + (
                f". Fallback model on {env}'s test frame: {result['fallback_evidence']}"
                if result.get("fallback_evidence")
                else ""
            )
            + shadow
        )
    stays = f"stays on version {result['version']}" if result.get("version") else "holds no version"
    why = "; ".join(result.get("reasons") or ["(no reason recorded)"])
    extra = f" No fallback: {result['fallback_reason']}" if result.get("fallback_reason") else ""
    return (
        f"NOT PROMOTED: @{alias} {stays}; candidate version {result.get('candidate_version')} "
        f"of commit {commit} failed its gate: {why}.{extra}"
    )


def deploy_variables(name: str, alias: str, result: Mapping[str, Any]) -> dict[str, str]:
    """What the deploy job needs, as a GitLab dotenv report (artifacts:reports:dotenv).

    The service follows the champion alias; a challenger (prod) is named beside it.
    """
    champion = result.get("champion_alias") or alias
    variables = {
        "CRISPML_MODEL_NAME": name,
        "CRISPML_MODEL_ALIAS": champion,
        "CRISPML_MODEL_URI": f"models:/{name}@{champion}",
        "CRISPML_MODEL_VERSION": str(
            (result.get("champion_version") if result.get("shadow") else result.get("version"))
            or ""
        ),
        "CRISPML_PROMOTION": str(result["status"]),
        "CRISPML_CHALLENGER_URI": "",
        "CRISPML_CHALLENGER_VERSION": "",
    }
    if result.get("shadow"):
        variables["CRISPML_CHALLENGER_URI"] = f"models:/{name}@{result['alias']}"
        variables["CRISPML_CHALLENGER_VERSION"] = str(result.get("version") or "")
    return variables
