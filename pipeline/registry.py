"""Aliases with a memory: who held `@dev`, `@qa` or `@prod`, when, and why.

MLflow keeps only the current holder of an alias. Governance needs the history too
(for audit and for rollback), so every move is appended to a registered-model tag.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
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


# --------------------------------------------------------------------------- version identity
#
# Two facts recorded as tags on every model version at registration, so that later
# pipelines can find a version by what it is rather than by the commit that made it:
#
# * `artifact.sha256`: the model artifact train wrote (data/models/model). register reuses
#   a version of the same environment with the same artifact instead of registering an
#   identical model again (a re-run, a schedule that retrained nothing new).
# * `lineage.*`: git hashes of what decides a model: the pipeline code (`pipeline/`, a git
#   tree hash), `params.yaml` (without its `env:` line, which CI sets per environment),
#   `dvc.yaml`, and the data behind the source (`data/source.json`, the `source` stage's
#   fingerprint). prod's fallback takes the QA model when these match, whatever commit
#   built it: a README-only commit does not disqualify it, a code or data change does.

ARTIFACT_TAG = "artifact.sha256"
LINEAGE_PREFIX = "lineage."
LINEAGE_PATHS = ("pipeline", "params.yaml", "dvc.yaml", "data/source.json")
# MLmodel's fields that change on every save of the same model.
_VOLATILE_MLMODEL_KEYS = ("utc_time_created", "model_uuid", "run_id", "artifact_path")
_IGNORED_NAMES = {"__pycache__", ".DS_Store"}
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def _git_object(kind: str, payload: bytes) -> str:
    import hashlib

    return hashlib.sha1(f"{kind} {len(payload)}\0".encode() + payload).hexdigest()


def git_blob_hash(data: bytes) -> str:
    """What `git hash-object` prints for a file with these bytes."""
    return _git_object("blob", data)


def git_tree_hash(folder: Path) -> str:
    """What `git rev-parse HEAD:<folder>` prints when the folder is committed as it is.

    Computed from the files (no `.git` needed: CI copies and containers may lack it);
    Python caches and build metadata are left out, as `.gitignore` leaves them out.
    """
    import os

    entries = []
    for entry in os.scandir(folder):
        if entry.name in _IGNORED_NAMES or entry.name.endswith(_IGNORED_SUFFIXES):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            mode, digest = "120000", git_blob_hash(os.readlink(path).encode())
        elif entry.is_dir():
            if not any(path.iterdir()):
                continue  # git does not keep empty folders
            mode, digest = "40000", git_tree_hash(path)
        else:
            mode = "100755" if os.access(path, os.X_OK) else "100644"
            digest = git_blob_hash(path.read_bytes())
        # git sorts a tree's entries by name, folders as if their name ended with "/".
        key = entry.name + ("/" if mode == "40000" else "")
        entries.append((key.encode(), mode, entry.name, digest))
    payload = b"".join(
        f"{mode} {name}\0".encode() + bytes.fromhex(digest)
        for _, mode, name, digest in sorted(entries)
    )
    return _git_object("tree", payload)


def _without_env_line(text: str) -> bytes:
    import re

    return re.sub(r"(?m)^env:[^\n]*\n?", "", text).encode()


def lineage_keys(root: Path) -> dict[str, str]:
    """The git hashes that say two models come from the same code, params and data."""
    root = Path(root)
    keys: dict[str, str] = {}
    for relative in LINEAGE_PATHS:
        path = root / relative
        if path.is_dir():
            value = git_tree_hash(path)
        elif path.is_file():
            data = path.read_bytes()
            if relative == "params.yaml":
                data = _without_env_line(data.decode("utf-8"))
            value = git_blob_hash(data)
        else:
            value = "missing"
        keys[LINEAGE_PREFIX + relative] = value
    return keys


def lineage_differences(tags: dict[str, str], keys: dict[str, str]) -> list[str]:
    """Which lineage keys a version's tags lack or hold differently (empty: same lineage)."""
    return [
        f"{key[len(LINEAGE_PREFIX) :]} ({str(tags.get(key, 'not recorded'))[:12]} vs {value[:12]})"
        for key, value in sorted(keys.items())
        if tags.get(key) != value
    ]


def artifact_hash(model_dir: Path) -> str:
    """sha256 of an MLflow model folder's content, blind to the fields a re-save changes.

    Every file counts, by relative path and bytes, except MLmodel's timestamp, uuid and
    run fields: the same trained model saved twice hashes the same.
    """
    import hashlib

    import yaml

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a model folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if any(part in _IGNORED_NAMES for part in path.parts):
            continue
        data = path.read_bytes()
        if relative == "MLmodel":
            meta = yaml.safe_load(data) or {}
            for key in _VOLATILE_MLMODEL_KEYS:
                meta.pop(key, None)
            data = yaml.safe_dump(meta, sort_keys=True).encode()
        digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def versions_tagged(client: Any, name: str, **tags: str) -> list[Any]:
    """Versions of `name` whose tags hold every given value, newest first."""
    import re

    from mlflow.exceptions import MlflowException

    query = [f"name = '{name}'"]
    for key, value in tags.items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key) or "'" in str(value):
            raise ValueError(f"unsafe tag filter {key}={value!r}")
        query.append(f"tags.`{key}` = '{value}'")
    try:
        found = client.search_model_versions(" and ".join(query), max_results=1000)
    except MlflowException:
        return []
    # The filter is the registry's; the check here keeps a store that ignores a clause honest.
    matching = [v for v in found if all(v.tags.get(k) == str(x) for k, x in tags.items())]
    return sorted(matching, key=lambda v: int(v.version), reverse=True)
