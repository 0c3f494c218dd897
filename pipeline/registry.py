"""Aliases with a memory: who held `@dev`, `@qa` or `@prod`, when, and why.

MLflow keeps only the current holder of an alias. Governance needs the history too
(for audit and for rollback), so every move is appended to a registered-model tag.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

HISTORY_TAG = "crispml.alias_history.{alias}"
HISTORY_LIMIT = 40  # keeps the tag well under MLflow's tag value limit


def alias_holder(client: Any, name: str, alias: str) -> Any | None:
    """The model version holding `alias`, or None when nobody does (or the model is new)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_history(client: Any, name: str, alias: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    raw = model.tags.get(HISTORY_TAG.format(alias=alias))
    return json.loads(raw) if raw else []


def move_alias(
    client: Any, name: str, alias: str, version: str, reason: str, actor: str = "pipeline"
) -> dict:
    """Point `alias` at `version` and append the move to the alias history."""
    previous = alias_holder(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    event = {
        "version": str(version),
        "previous": str(previous.version) if previous else None,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason,
        "actor": actor,
    }
    history = [*alias_history(client, name, alias), event][-HISTORY_LIMIT:]
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))
    return event
