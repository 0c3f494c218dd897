"""Who serves where, what each alias went through, and the console's rollback.

Blocking (MLflow and store calls): the router runs these in worker threads.

The rollback is the one `crispml alias rollback` performs - the version before the
current one on the replayed history (`serving_stack`), a reason that starts with
"rollback" so later rollbacks walk further back, and `move_alias`, which locks the
alias, records the event and moves the registry as one act - with one difference:
the compare-and-set is against the version the *page* showed (`expected`), not the one
found when the form arrives. A page rendered before another promotion or rollback
must not undo it unseen; it gets `Stale`, saying what moved, and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import CrispError
from pipeline.store import ScoreStore


class Stale(CrispError):
    """The alias (or its history) moved since the page was rendered: nothing changed."""


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback of `alias` would do now, or why there is none (`why`)."""

    alias: str
    current: str | None
    target: str | None
    why: str | None


def registry_client(settings: Settings) -> Any:
    """A client of the service's registry, without touching MLflow's process-wide URIs."""
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _environments(root: Path) -> list[tuple[str, str, str]]:
    """(environment, alias, challenger alias) of every overlay in environments/."""
    from pipeline.config.environment import Environment
    from pipeline.config.loader import ENVIRONMENTS_DIR, environment_path, read_yaml

    out = []
    for folder in sorted((root / ENVIRONMENTS_DIR).glob("*/")):
        path = environment_path(root, folder.name)
        if not path.is_file():
            continue
        try:
            registry = Environment.model_validate(read_yaml(path)).registry
        except Exception:  # an overlay this console cannot read is left out, not fatal
            continue
        out.append((folder.name, registry.alias, registry.challenger))
    return out


def _holder(client: Any, name: str, alias: str) -> dict[str, Any] | None:
    from pipeline.registry import alias_holder

    holder = alias_holder(client, name, alias)
    if holder is None:
        return None
    tags = dict(holder.tags or {})
    return {
        "version": str(holder.version),
        "run_id": holder.run_id,
        "git_commit": tags.get("git_commit"),
        "pr_auc": tags.get("pr_auc"),
    }


def _when(value: Any) -> str:
    """An event's ISO time as the page shows every time: UTC, to the second."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value or "")


def _event(raw: dict[str, Any]) -> dict[str, Any]:
    """Every key a page reads, present: events imported from the old registry tag may
    lack some."""
    return {
        "seq": raw.get("seq"),
        "at": _when(raw.get("at")),
        "kind": str(raw.get("kind") or "move"),
        "previous": raw.get("previous"),
        "version": raw.get("version"),
        "actor": str(raw.get("actor") or "unknown"),
        "reason": str(raw.get("reason") or ""),
        "git_commit": raw.get("git_commit"),
    }


def plan_rollback(history: list[dict[str, Any]], alias: str, current: str | None) -> RollbackPlan:
    """The version a rollback moves `alias` back to, as `crispml alias rollback` decides."""
    from pipeline.gitops.rollbacks import serving_stack

    if current is None:
        return RollbackPlan(alias, None, None, f"@{alias} holds no version: nothing to roll back")
    stack = serving_stack(history)
    if not stack or stack[-1] != current:
        return RollbackPlan(
            alias,
            current,
            None,
            f"@{alias} holds version {current} but its history ends with "
            f"{stack[-1] if stack else 'nothing'}: use `crispml alias rollback --to`",
        )
    if len(stack) < 2:
        return RollbackPlan(alias, current, None, f"@{alias} has served only version {current}")
    return RollbackPlan(alias, current, stack[-2], None)


def overview(settings: Settings, store: ScoreStore) -> dict[str, Any]:
    """Each environment's serving and challenger version, with the history this store
    keeps of each alias (another environment's history lives in its own store), and the
    rollback the page offers for this service's own alias."""
    from pipeline.registry import alias_history

    client = registry_client(settings)
    name = settings.registration.model_name
    environments = _environments(settings.root)
    if settings.env not in {env for env, _, _ in environments}:
        environments.insert(
            0, (settings.env, settings.alias, settings.environment.registry.challenger)
        )
    rows, histories = [], []
    for env, alias, challenger in environments:
        serving = _holder(client, name, alias)
        shadow = _holder(client, name, challenger)
        rows.append(
            {
                "environment": env,
                "alias": alias,
                "serving": serving,
                "challenger_alias": challenger,
                "challenger": shadow,
                "own": env == settings.env,
            }
        )
        for each in (alias, challenger):
            events = [_event(e) for e in alias_history(client, store, name, each)]
            if events or env == settings.env:
                histories.append(
                    {"alias": each, "environment": env, "events": list(reversed(events))}
                )
    own = next(r for r in rows if r["own"])
    own_history = next(h for h in histories if h["alias"] == settings.alias)
    current = own["serving"]["version"] if own["serving"] else None
    plan = plan_rollback(list(reversed(own_history["events"])), settings.alias, current)
    return {"model_name": name, "environments": rows, "histories": histories, "plan": plan}


def rollback(
    settings: Settings,
    store: ScoreStore,
    *,
    expected: str,
    target: str,
    note: str,
    actor: str,
) -> dict[str, Any]:
    """Roll the service's alias back from `expected` to `target`, both as the page showed
    them; `Stale` when either no longer holds, and nothing is changed then."""
    from mlflow.exceptions import MlflowException

    from pipeline.gitops.rollbacks import ROLLBACK_PREFIX
    from pipeline.registry import AliasMoved, alias_history, move_alias

    client = registry_client(settings)
    name, alias = settings.registration.model_name, settings.alias
    holder = _holder(client, name, alias)
    current = holder["version"] if holder else None
    if current != expected:
        raise Stale(
            f"@{alias} moved since this page was loaded: it showed version {expected}, the "
            f"registry now holds {'nothing' if current is None else f'version {current}'}. "
            "Nothing was changed; look at the page again before deciding."
        )
    plan = plan_rollback(alias_history(client, store, name, alias), alias, current)
    if plan.target != target:
        now = plan.why or f"would go back to version {plan.target}"
        raise Stale(
            f"@{alias}'s history changed since this page was loaded: the page offered version "
            f"{target}, a rollback now {now}. Nothing was changed; look at the page again."
        )
    try:
        client.get_model_version(name, target)
    except MlflowException as error:
        raise CrispError(f"version {target} of model {name!r} cannot be used: {error}") from None
    reason = f"{ROLLBACK_PREFIX}: from version {expected} to version {target} ({note})"
    try:
        return move_alias(
            client, store, name, alias, target, reason=reason, actor=actor, expected=expected
        )
    except AliasMoved as moved:
        raise Stale(
            f"@{alias} moved while the rollback was being made: expected version "
            f"{moved.expected}, found {moved.found}. Nothing was changed."
        ) from None
