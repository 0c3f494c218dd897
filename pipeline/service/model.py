"""Which model serves, how it is loaded, and how it is swapped without dropping a request.

The serving model is an immutable `ServingModel`: the fitted pipeline together with
its name, version, run, threshold and git commit. A request reads
`ModelManager.current` once and uses that object to the end, so its score, its
decision and the lineage stored with it always come from the same version, even when
a reload swaps `current` halfway through. The swap is one attribute assignment; the
old model stays alive for as long as a request still holds it.

The model is named by a URI:

* `models:/<name>@<alias>` (the default: the environment's alias). The alias is
  polled; when a promotion or rollback moves it, the new version is loaded and
  warmed up in a thread, and only then swapped in;
* `models:/<name>/<version>`: one pinned version, never reloaded;
* a local folder holding an MLflow model (e.g. data/models/model after `crispml
  train`): never reloaded; its threshold comes from reports/metrics.json.

Beside an alias `@<alias>` the service also follows the challenger alias
(`@<alias>-challenger` by default, `registry.challenger_alias`): a second manager with
`optional=True`, for which "nobody holds the alias" is a normal state (no challenger),
not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: what to load and whether it can move."""

    kind: Literal["alias", "version", "path"]
    uri: str
    name: str
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def movable(self) -> bool:
        return self.kind == "alias"


def parse_model_uri(uri: str, root: Path, default_name: str) -> ModelRef:
    """Understand `--model-uri`; anything else is a ConfigError that lists the forms."""
    if match := _ALIAS.match(uri):
        return ModelRef("alias", uri, match["name"], alias=match["alias"])
    if match := _VERSION.match(uri):
        return ModelRef("version", uri, match["name"], version=match["version"])
    raw = uri.removeprefix("file://")
    path = Path(raw) if Path(raw).is_absolute() else root / raw
    if "://" not in raw and not raw.startswith("models:/") and (path / "MLmodel").is_file():
        return ModelRef("path", uri, default_name, path=path.resolve())
    raise ConfigError(
        f"model URI {uri!r}: expected models:/<name>@<alias>, models:/<name>/<version> or a "
        "local folder holding an MLmodel file"
    )


def default_model_uri(settings: Settings) -> str:
    return f"models:/{settings.registration.model_name}@{settings.alias}"


def challenger_ref(ref: ModelRef, settings: Settings) -> ModelRef | None:
    """The challenger beside an alias: the environment's challenger alias when `ref` is the
    environment's alias, else `<alias>-challenger`. None for a pinned version or a folder,
    which never move and so never get a shadow."""
    if ref.kind != "alias":
        return None
    registry = settings.environment.registry
    alias = registry.challenger if ref.alias == registry.alias else f"{ref.alias}-challenger"
    return ModelRef("alias", f"models:/{ref.name}@{alias}", ref.name, alias=alias)


@dataclass(frozen=True)
class ServingModel:
    """One loaded model version and its lineage. Immutable: swapped whole, never edited."""

    model: Any = field(repr=False, compare=False)
    name: str
    version: str
    run_id: str
    threshold: float
    git_commit: str
    uri: str
    loaded_at: datetime
    # When the version was registered (a folder: when its MLmodel was written); the
    # model's age in /metrics counts from here.
    created_at: datetime | None = None

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of the positive class for each row, as float64."""
        return np.asarray(self.model.predict_proba(frame)[:, 1], dtype="float64")

    def info(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "run_id": self.run_id,
            "threshold": self.threshold,
            "git_commit": self.git_commit,
            "uri": self.uri,
            "loaded_at": self.loaded_at,
            "created_at": self.created_at,
        }


def _threshold(raw: str | None, where: str) -> float:
    try:
        value = float(raw) if raw is not None else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"{where}: threshold {raw!r} is missing or not in [0, 1]; register the model with "
            "`crispml register`, which sets it"
        )
    return value


class ModelLoader:
    """Blocking registry and load calls; the manager runs them in threads."""

    def __init__(
        self,
        settings: Settings,
        ref: ModelRef,
        warm_up: Callable[[ServingModel], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ref = ref
        self._warm_up = warm_up
        self._client: Any = None

    def _registry(self) -> Any:
        if self._client is None:
            from pipeline import tracking

            self._client = tracking.configure(self.settings)
        return self._client

    def resolve(self) -> str | None:
        """The version the reference points at now (None: the alias is held by nobody)."""
        if self.ref.kind == "path":
            return self._path_version()
        if self.ref.kind == "version":
            return self.ref.version
        from pipeline.registry import alias_holder

        holder = alias_holder(self._registry(), self.ref.name, str(self.ref.alias))
        return None if holder is None else str(holder.version)

    def _path_version(self) -> str:
        assert self.ref.path is not None
        digest = hashlib.sha256((self.ref.path / "MLmodel").read_bytes()).hexdigest()
        return f"local-{digest[:12]}"

    def load(self, version: str) -> ServingModel:
        """Load one version (pinned by number, so a moving alias cannot mix two versions)."""
        from pipeline import tracking
        from pipeline.saved_model import load_model
        from pipeline.store import utcnow

        if self.ref.kind == "path":
            assert self.ref.path is not None
            model = load_model(self.ref.path)
            serving = ServingModel(
                model=model,
                name=self.ref.name,
                version=version,
                run_id=self._path_run_id(),
                threshold=self._path_threshold(),
                git_commit=tracking.git_commit(self.settings.root),
                uri=self.ref.uri,
                loaded_at=utcnow(),
                created_at=self._path_created(),
            )
        else:
            client = self._registry()
            meta = client.get_model_version(self.ref.name, version)
            tags = dict(meta.tags or {})
            # Checked before the (slow) load: a version without a threshold cannot decide.
            where = f"model {self.ref.name} version {version}"
            threshold = _threshold(tags.get("threshold"), where)
            model = load_model(f"models:/{self.ref.name}/{version}")
            serving = ServingModel(
                model=model,
                name=self.ref.name,
                version=str(version),
                run_id=str(meta.run_id or tags.get("run_id") or "unknown"),
                threshold=threshold,
                git_commit=tags.get("git_commit") or tracking.git_commit(self.settings.root),
                uri=self.ref.uri,
                loaded_at=utcnow(),
                created_at=_from_millis(getattr(meta, "creation_timestamp", None)),
            )
        if self._warm_up is not None:
            self._warm_up(serving)
        return serving

    def _path_run_id(self) -> str:
        import yaml

        assert self.ref.path is not None
        meta = yaml.safe_load((self.ref.path / "MLmodel").read_text()) or {}
        return str(meta.get("run_id") or "none")

    def _path_created(self) -> datetime | None:
        import yaml

        assert self.ref.path is not None
        meta = yaml.safe_load((self.ref.path / "MLmodel").read_text()) or {}
        raw = meta.get("utc_time_created")
        try:
            return datetime.fromisoformat(str(raw)).replace(tzinfo=UTC) if raw else None
        except ValueError:
            return None

    def _path_threshold(self) -> float:
        from pipeline.layout import Layout

        metrics = Layout(self.settings.root).metrics
        if not metrics.is_file():
            raise ConfigError(
                f"model folder {self.ref.path}: its threshold comes from {metrics}, which does "
                "not exist; run `crispml report` first or serve a registered model"
            )
        return _threshold(json.loads(metrics.read_text()).get("threshold"), str(metrics))


def _from_millis(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class Reload:
    changed: bool
    previous_version: str | None
    current: ServingModel | None


class ModelManager:
    """Holds the serving model and replaces it when its reference moves.

    With `optional=True` (the challenger) an alias held by nobody is a normal state:
    `current` becomes None and `on_change(None)` is called. A version that failed to load
    or warm up is then dropped too (the alias no longer names the old one) and not
    loaded again until the alias moves, so a broken challenger costs one load, not one
    per poll.
    """

    def __init__(
        self,
        loader: ModelLoader,
        *,
        on_change: Callable[[ServingModel | None], None] | None = None,
        on_failure: Callable[[Exception], None] | None = None,
        optional: bool = False,
    ) -> None:
        self.loader = loader
        self.current: ServingModel | None = None
        self.last_error: str | None = None
        self.optional = optional
        self._failed_version: str | None = None
        self._on_change = on_change
        self._on_failure = on_failure
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    @property
    def failed_version(self) -> str | None:
        """Optional manager: the version that failed to load (None: no known failure)."""
        return self._failed_version

    def mark_failed(self, version: str | None) -> None:
        """Optional manager: `version` failed to load; wait for the alias to move."""
        if self.optional:
            self._failed_version = version

    def _drop(self, previous: ServingModel | None) -> Reload:
        """Optional manager: nothing (valid) holds the alias any more."""
        self.current = None
        if previous is not None:
            log.info(
                "no longer scoring %s version %s (@%s)",
                previous.name,
                previous.version,
                self.loader.ref.alias,
            )
            if self._on_change is not None:
                self._on_change(None)
        return Reload(previous is not None, previous.version if previous else None, None)

    async def refresh(self) -> Reload:
        """Resolve the reference; when it points elsewhere, load, warm up, then swap.

        Serialised by a lock, so a poll and an admin reload never load twice. While the
        new version loads, requests keep being served by the current one.
        """
        async with self._lock:
            previous = self.current
            try:
                version = await asyncio.to_thread(self.loader.resolve)
                if version is None and self.optional:
                    self.last_error = None
                    self._failed_version = None
                    return self._drop(previous)
                if version is None:
                    raise ServiceUnavailable(
                        f"no version of model {self.loader.ref.name!r} holds alias "
                        f"@{self.loader.ref.alias}"
                    )
                if previous is not None and previous.version == version:
                    self.last_error = None
                    return Reload(False, previous.version, previous)
                if self.optional and version == self._failed_version:
                    return Reload(False, None, None)  # known broken: wait for the alias to move
            except Exception as error:
                self.last_error = str(error)
                if self._on_failure is not None:
                    self._on_failure(error)
                raise
            try:
                loaded = await asyncio.to_thread(self.loader.load, version)
            except Exception as error:
                self.last_error = str(error)
                if self._on_failure is not None:
                    self._on_failure(error)
                if self.optional:
                    self._failed_version = version
                    self._drop(previous)
                raise
            self._failed_version = None
            self.current = loaded  # the atomic swap: new requests see the new version
            self.last_error = None
            if self._on_change is not None:
                self._on_change(loaded)
            log.info(
                "serving %s version %s (was %s)",
                loaded.name,
                loaded.version,
                previous.version if previous else None,
            )
            return Reload(True, previous.version if previous else None, loaded)

    def start_polling(self, interval: float) -> None:
        """Poll the alias every `interval` seconds; failures are logged, never fatal."""
        if interval <= 0 or not self.loader.ref.movable:
            return
        self._poller = asyncio.create_task(self._poll(interval), name="model-poller")

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as error:  # keep serving what we have
                current = self.current.version if self.current else None
                log.warning(
                    "reload of @%s failed (current version: %s): %s",
                    self.loader.ref.alias,
                    current,
                    error,
                )

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
