"""`crispml alias rollback`: move an alias back to the version that served before.

The alias history (`pipeline.registry.move_alias`, kept in the environment's store) is
replayed to find that version, so rolling back twice walks two steps back instead of
flipping between two versions, and the rollback itself is one more event in the
history, never an erasure. The move is a compare-and-set against the holder the target
was computed from: a promotion landing in between makes the rollback fail, naming both
versions, instead of undoing that promotion unseen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import CrispError

# Alias history events whose reason starts with this are rollbacks; the history is
# replayed with them to find the version served before the current one.
ROLLBACK_PREFIX = "rollback"


def serving_stack(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Replay the alias history: the versions that served, oldest first, newest last.

    A normal move pushes its version; a rollback pops the version it replaced, so rolling
    back twice walks two steps back instead of flipping between two versions.
    """
    stack: list[str] = []
    for event in history:
        version = str(event["version"])
        if str(event.get("reason", "")).startswith(ROLLBACK_PREFIX) and stack:
            stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def rollback(
    client: Any,
    store: Any,
    name: str,
    alias: str,
    actor: str,
    to: str | None = None,
    note: str | None = None,
) -> dict:
    """Move `alias` back to the version that served before the current one (or to `to`)."""
    from mlflow.exceptions import MlflowException

    from pipeline import registry

    holder = registry.alias_holder(client, name, alias)
    if holder is None:
        raise CrispError(f"@{alias} of model {name!r} holds no version: nothing to roll back")
    current = str(holder.version)
    history = registry.alias_history(client, store, name, alias)
    stack = serving_stack(history)
    if to is None:
        if not stack or stack[-1] != current:
            raise CrispError(
                f"@{alias} holds version {current} but its history ends with "
                f"{stack[-1] if stack else 'nothing'} (moved outside crispml?); name the "
                "version to go back to with --to"
            )
        if len(stack) < 2:
            raise CrispError(f"@{alias} has served only version {current}: no earlier version")
        target = stack[-2]
    else:
        target = str(to)
        if target == current:
            raise CrispError(f"@{alias} already holds version {target}")
    try:
        client.get_model_version(name, target)
    except MlflowException as error:
        raise CrispError(f"version {target} of model {name!r} cannot be used: {error}") from None
    reason = f"{ROLLBACK_PREFIX}: from version {current} to version {target}"
    if note:
        reason += f" ({note})"
    event = registry.move_alias(
        client, store, name, alias, target, reason=reason, actor=actor, expected=current
    )
    return {"alias": alias, "from": current, "to": target, "event": event}
