"""Aliases with a memory: who held `@dev`, `@qa` or `@prod`, when, and why.

MLflow keeps only the current holder of an alias. Governance needs the history too (for
audit and for rollback), so every move is recorded in the environment's store
(`pipeline.store.aliases`), in the same transaction that serialises the move:

1. lock the alias's head row (PostgreSQL: `FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`);
2. read the registry's holder under that lock, and compare it with `expected`, the
   holder the caller based its decision on;
3. insert the event, move the MLflow alias, commit.

Compare-and-set, decided thus: when the caller says what it saw (`expected`) and the
alias holds something else, the move is refused with `AliasMoved`, naming the alias,
the expected and the found version, and nothing changes. A gate verdict, a rollback
target or a shadow comparison was computed against the holder it saw; acting on it
after another promotion would be acting on a stale decision, so retrying is the
caller's (or a person's) call, never a silent one. A caller whose decision does not
depend on the holder (a replay, a test fixture) passes `ANY_HOLDER`: the holder is then
read under the lock and recorded as the event's `previous`, deliberately. Either way the
event is written while no other crispml move of the alias can run, so none is lost and
the history replays to the registry's holder.

A move made outside crispml (or by a crispml whose history went to another store) is
noticed at the next move: the registry's holder is not where the history leaves the
alias, and an `outside` event from one to the other is recorded first, so the history
still replays to the holder and the gap is visible.

The history used to be a JSON registered-model tag, appended to after the move (which
lost events under concurrent promotions). Registries in use hold their past there, and
rollback needs it, so the tag is read, never written: the first move of an alias in a
store imports the tag's events (kind `imported`) in the same transaction, and until then
`alias_history` shows them read-only. Once every environment has moved its aliases
since, the tag can be deleted and `legacy_history` with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeline.errors import CrispError
from pipeline.saved_model import IGNORED_NAMES

if TYPE_CHECKING:
    from pipeline.store import ScoreStore

LEGACY_HISTORY_TAG = "crispml.alias_history.{alias}"
OUTSIDE_ACTOR = "unknown (outside crispml)"


class _AnyHolder:
    """The type of ANY_HOLDER: a caller that did not decide against the current holder."""

    def __repr__(self) -> str:
        return "ANY_HOLDER"


ANY_HOLDER: Final = _AnyHolder()


def _named(version: str | None) -> str:
    return "nothing" if version is None else f"version {version}"


class AliasMoved(CrispError):
    """The alias holds another version than the caller decided against (compare-and-set)."""

    def __init__(self, name: str, alias: str, expected: str | None, found: str | None) -> None:
        self.alias, self.expected, self.found = alias, expected, found
        super().__init__(
            f"@{alias} of model {name!r} moved meanwhile: expected {_named(expected)}, found "
            f"{_named(found)} (another promotion or rollback moved it); nothing was changed. "
            "The decision was made against a holder that no longer serves: look again "
            "(`crispml alias history`) and re-run"
        )


@contextmanager
def history_store(settings: Any) -> Iterator[ScoreStore]:
    """The environment's store, migrated, for alias moves and history reads.

    The history lives beside the environment's scores (`settings.store_url`), so it has
    the same durability and the same owner; migrating here lets an alias command run
    against a store no stage has opened yet.
    """
    from pipeline.store import ScoreStore

    store = ScoreStore(settings.store_url)
    try:
        store.migrate()
        yield store
    finally:
        store.dispose()


def alias_holder(client: Any, name: str, alias: str) -> Any | None:
    """The model version holding `alias`, or None when nobody does (or the model is new)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _holder_version(client: Any, name: str, alias: str) -> str | None:
    holder = alias_holder(client, name, alias)
    return None if holder is None else str(holder.version)


def legacy_history(client: Any, name: str, alias: str) -> list[dict]:
    """The events the registered-model tag holds (the history before the store kept it)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    raw = model.tags.get(LEGACY_HISTORY_TAG.format(alias=alias))
    try:
        events = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def alias_history(client: Any, store: ScoreStore, name: str, alias: str) -> list[dict]:
    """Every recorded move of `alias`, oldest first (see `AliasEvent.as_dict`)."""
    from pipeline.store.aliases import read_history

    events = read_history(store, name, alias)
    if events is None:  # this store never moved the alias: the tag's past, read-only
        return [{**event, "kind": "imported"} for event in legacy_history(client, name, alias)]
    return [event.as_dict() for event in events]


def move_alias(
    client: Any,
    store: ScoreStore,
    name: str,
    alias: str,
    version: str,
    reason: str,
    actor: str = "pipeline",
    *,
    expected: str | _AnyHolder | None = ANY_HOLDER,
    git_commit: str | None = None,
    pipeline: str | None = None,
) -> dict:
    """Point `alias` at `version` and record the move, as one act (see the module's doc).

    `expected`: the version (None: no version) the caller saw holding the alias when it
    decided; AliasMoved when the alias holds another. `git_commit` and `pipeline`
    default to CI's variables (CI_COMMIT_SHA or CRISPML_GIT_COMMIT, CI_PIPELINE_URL or
    CI_PIPELINE_ID). Returns the event.
    """
    return _move(
        client, store, name, alias, str(version), reason, actor, expected, git_commit, pipeline
    )


def remove_alias(
    client: Any,
    store: ScoreStore,
    name: str,
    alias: str,
    reason: str,
    actor: str = "pipeline",
    *,
    expected: str | _AnyHolder | None = ANY_HOLDER,
    git_commit: str | None = None,
    pipeline: str | None = None,
) -> dict:
    """Delete `alias` and record that (an event whose version is None), as one act."""
    return _move(client, store, name, alias, None, reason, actor, expected, git_commit, pipeline)


def _import_legacy(head: Any, events: list[dict]) -> None:
    """The tag's events into the table, in order, as `imported` (the first move only)."""
    from pipeline.store import utcnow

    for event in events:
        try:
            at = datetime.fromisoformat(str(event.get("at")))
        except ValueError:
            at = utcnow()
        version, previous = event.get("version"), event.get("previous")
        head.append(
            "imported",
            None if previous is None else str(previous),
            None if version is None else str(version),
            str(event.get("actor") or "unknown"),
            str(event.get("reason") or ""),
            at=at,
        )


def _move(
    client: Any,
    store: ScoreStore,
    name: str,
    alias: str,
    target: str | None,
    reason: str,
    actor: str,
    expected: str | _AnyHolder | None,
    git_commit: str | None,
    pipeline: str | None,
) -> dict:
    from pipeline.store.aliases import locked_alias

    commit = git_commit or os.environ.get("CI_COMMIT_SHA") or os.environ.get("CRISPML_GIT_COMMIT")
    where = pipeline or os.environ.get("CI_PIPELINE_URL") or os.environ.get("CI_PIPELINE_ID")
    found: str | None = None
    moved = False
    try:
        with locked_alias(store, name, alias) as head:
            if head.created:
                _import_legacy(head, legacy_history(client, name, alias))
            found = _holder_version(client, name, alias)
            if not isinstance(expected, _AnyHolder):
                wanted = None if expected is None else str(expected)
                if found != wanted:
                    raise AliasMoved(name, alias, wanted, found)
            if head.version != found:
                head.append(
                    "outside",
                    head.version,
                    found,
                    OUTSIDE_ACTOR,
                    f"found @{alias} on {_named(found)} where its history left it on "
                    f"{_named(head.version)}: moved outside crispml, or by a crispml that "
                    "recorded its history in another store",
                )
            event = head.append("move", found, target, actor, reason, commit, where)
            # The registry moves last, so that nothing but the commit can fail after it.
            try:
                if target is not None:
                    client.set_registered_model_alias(name, alias, target)
                elif found is not None:
                    client.delete_registered_model_alias(name, alias)
            except BaseException as error:
                # A call that failed may still have moved it (a timeout after the server
                # acted): put it back while the lock still keeps other movers out.
                _restore(client, name, alias, found, error)
                raise
            moved = True
    except BaseException as error:
        if moved:  # the commit failed after the registry moved: put the holder back
            _restore(client, name, alias, found, error)
        raise
    return event.as_dict()


def _restore(client: Any, name: str, alias: str, version: str | None, error: BaseException) -> None:
    """Undo a registry move whose event could not be committed, so none goes unrecorded."""
    try:
        if _holder_version(client, name, alias) == version:
            return
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    except Exception as undo:
        raise CrispError(
            f"@{alias} of model {name!r} may have moved, but its history event could not "
            f"be recorded ({error}), and putting it back on {_named(version)} failed too "
            f"({undo}): check the alias and set it by hand"
        ) from error


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
        if entry.name in IGNORED_NAMES or entry.name.endswith(_IGNORED_SUFFIXES):
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
