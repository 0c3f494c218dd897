"""Everything one running service holds, and its life: start-up, model loading, shutdown.

`ServiceState` owns the long-lived parts (store, model managers, metrics, the scoring
path) and the order they start and stop in; the routers only read from it. It is
`app.state.service`, so an operator's script or a test can reach every part of a
running app from the app alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Settings
from pipeline.service.config import ServiceConfig
from pipeline.service.contract import RecordSchema, record_schema
from pipeline.service.metrics import Freshness, ServiceMetrics
from pipeline.service.model import (
    ModelLoader,
    ModelManager,
    ServingModel,
    challenger_ref,
    default_model_uri,
    parse_model_uri,
)
from pipeline.service.scoring import API_CHANNEL, ScoringService, WarningThrottle
from pipeline.store import ScoreStore

log = logging.getLogger("pipeline.service")

FIRST_LOAD_RETRY = 5.0  # seconds between attempts to load the first model
# How often a worker looks whether another worker was asked to reload: a local file
# read, so it is cheap enough to make an admin reload reach every worker at once.
BROADCAST_POLL = 0.25


class ReloadBroadcast:
    """An admin reload, passed on to the sibling workers of one `crispml serve --workers N`.

    POST /v1/admin/reload reaches the one worker the kernel handed the connection to.
    That worker writes a new token into a file of the folder the workers share; every
    worker reads the file every `BROADCAST_POLL` seconds and re-reads its aliases when
    the token changed. A file suffices because the workers of one port are on one
    machine; replicas on other machines keep polling the alias on their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._read()

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def send(self) -> None:
        token = uuid.uuid4().hex
        scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        scratch.write_text(token)
        os.replace(scratch, self.path)  # atomic: a reader sees the old token or the new
        self._seen = token

    def received(self) -> bool:
        """True once per token written by another worker since the last look."""
        token = self._read()
        if token == self._seen:
            return False
        self._seen = token
        return True


def _pseudonymiser(settings: Settings) -> Callable[[Sequence[str]], list[str]]:
    """Record ids as the store holds them: keyed exactly as `prepare` keys batch ids."""
    privacy = settings.environment.privacy
    if not privacy.pseudonymise_ids:
        return list
    from pipeline.privacy import pseudonymisation_key, pseudonymise

    key = pseudonymisation_key(privacy)  # fails at start-up, not at the first request
    return lambda ids: pseudonymise(pd.Series(list(ids), dtype=object), key).tolist()


class ServiceState:
    """Everything one running service holds, created once per app."""

    def __init__(self, settings: Settings, config: ServiceConfig, model_uri: str | None) -> None:
        self.settings = settings
        self.config = config
        self.environment = settings.env
        self.schema: RecordSchema = record_schema(settings.contract, settings.model_inputs)
        self.metrics = ServiceMetrics()
        self.store = ScoreStore(settings.store_url)
        self.pseudonymise = _pseudonymiser(settings)
        ref = parse_model_uri(
            model_uri or default_model_uri(settings),
            settings.root,
            settings.registration.model_name,
        )
        self.models = ModelManager(
            ModelLoader(settings, ref, warm_up=self._warm_up),
            on_change=self._model_changed,
            on_failure=lambda _error: self.metrics.reloads.labels("failed").inc(),
        )
        # The challenger, scored in shadow: only beside an alias (a pinned version or a
        # folder never moves, so it has no challenger either).
        shadow_ref = challenger_ref(ref, settings)
        self.challenger: ModelManager | None = None
        if shadow_ref is not None:
            self.challenger = ModelManager(
                ModelLoader(settings, shadow_ref, warm_up=self._warm_up),
                on_change=self._challenger_changed,
                on_failure=lambda _error: self.metrics.shadow_failures.labels("load").inc(),
                optional=True,
            )
        self.scoring = ScoringService(
            schema=self.schema,
            store=self.store,
            metrics=self.metrics,
            config=config,
            environment=self.environment,
            pseudonymise=self.pseudonymise,
            models=self.models,
            challenger=self.challenger,
        )
        self._warnings = WarningThrottle()
        # Newest label per (role, version): refreshed by /metrics at most every TTL.
        self._label_times: dict[tuple[str, str], Any] = {}
        self._label_times_at = -math.inf
        self._label_refresh: asyncio.Lock | None = None
        self.metrics.watch_staleness(self._freshness)
        self.report_lock = asyncio.Semaphore(1)
        self.prepared = False
        # Set by `prepare` for an alias: `start` then loads it in the background.
        self._first_load_pending = False
        self._first_load: asyncio.Task[None] | None = None
        # Set by `share_reloads` in a worker of `crispml serve --workers N`.
        self.broadcast: ReloadBroadcast | None = None
        self._following: asyncio.Task[None] | None = None

    # -- set-up ------------------------------------------------------------------------

    def prepare(self, migrate: bool = True) -> None:
        """Blocking start-up work: migrate the store; load a model that cannot move.

        `migrate=False`: the store was migrated already, once for all the workers of
        `crispml serve --workers N`, before any of them started.

        A pinned version or a local folder is loaded here, and failing is fatal (a typo
        will not fix itself). An alias (and its challenger) is loaded in the background
        once the service listens (`_load_first`): a registry that is down or slow must
        never delay listening, since Kubernetes would restart a pod that does not answer
        /healthz, while one that answers /readyz 503 just gets no traffic until ready.
        """
        if migrate:
            self.store.migrate()
        from pipeline.store.pseudonymise import require_pseudonymised

        # Keyed ids beside raw ones would never join: refuse to start (issue 9, item 3).
        require_pseudonymised(self.store, self.environment, self.settings.environment.privacy)
        loader = self.models.loader
        if loader.ref.movable:
            self.models.last_error = "the first model is still loading from the registry"
            self._first_load_pending = True
        else:
            version = loader.resolve()
            assert version is not None  # only an alias can be held by nobody
            model = loader.load(version)
            self.models.current = model
            self._model_changed(model)
        self.prepared = True

    async def _load_first(self) -> None:
        """Load the alias's model and the challenger, retrying until the registry answers.

        The regular poller may be off (reload interval 0) or slow; until a first model is
        loaded this loop keeps asking every `FIRST_LOAD_RETRY` seconds (or the reload
        interval, when shorter). An alias held by nobody is retried too: a promotion
        makes the service ready without a restart. The challenger is tried until its
        alias could be read once; a challenger version that fails to load is marked by
        its manager and not retried.
        """
        champion_done = self.models.current is not None
        challenger_done = self.challenger is None
        interval = self.config.reload_interval
        delay = min(interval, FIRST_LOAD_RETRY) if interval > 0 else FIRST_LOAD_RETRY
        while True:
            if not champion_done:
                try:
                    await self.models.refresh()
                    champion_done = self.models.current is not None
                except Exception as error:
                    self._warnings.warn("first-load", "no model loaded yet (not ready): %s", error)
            if not challenger_done and self.challenger is not None:
                try:
                    await self.challenger.refresh()
                    challenger_done = True
                except Exception as error:
                    challenger_done = self.challenger.failed_version is not None
                    self._warnings.warn(
                        "first-load-challenger",
                        "challenger @%s not loaded, serving without a shadow: %s",
                        self.challenger.loader.ref.alias,
                        error,
                    )
            if champion_done and challenger_done:
                return
            await asyncio.sleep(delay)

    def _warm_up(self, model: ServingModel) -> None:
        """Score the contract's example once: loads lazy code paths, and proves the model
        accepts the contract's inputs before it is allowed to serve - framed exactly as
        requests are, with a category nobody trained on and, for nullable inputs, nulls."""
        rows = self.schema.probe_rows()
        try:
            scores = model.predict(self.schema.frame(rows))
        except Exception as error:
            raise ValueError(
                f"model version {model.version} failed its warm-up prediction on the "
                f"contract's example (with an unseen category and null inputs): "
                f"{type(error).__name__}: {error}"
            ) from error
        if scores.shape != (len(rows),) or not all(math.isfinite(float(s)) for s in scores):
            raise ValueError(f"model version {model.version} failed its warm-up prediction")

    def _model_changed(self, model: ServingModel | None) -> None:
        if model is None:  # pragma: no cover - the champion's manager is not optional
            return
        self.metrics.model.info({k: str(v) for k, v in model.info().items()})
        self.metrics.reloads.labels("swapped").inc()
        self._label_times_at = -math.inf

    def _challenger_changed(self, model: ServingModel | None) -> None:
        self.metrics.challenger_loaded.set(0 if model is None else 1)
        self._label_times_at = -math.inf
        if model is not None:
            log.info(
                "scoring %s version %s in shadow (@%s)",
                model.name,
                model.version,
                self.challenger.loader.ref.alias if self.challenger else "?",
            )

    @property
    def challenger_model(self) -> ServingModel | None:
        return None if self.challenger is None else self.challenger.current

    # -- staleness ---------------------------------------------------------------------

    def roles(self) -> list[tuple[str, ServingModel]]:
        """The loaded models by role: champion, and challenger while one is loaded."""
        roles = []
        if self.models.current is not None:
            roles.append(("champion", self.models.current))
        if self.challenger_model is not None:
            roles.append(("challenger", self.challenger_model))
        return roles

    def _freshness(self) -> list[Freshness]:
        """Read at scrape time by the staleness collector (no I/O: cached label times)."""
        out = [
            Freshness(
                role, model.version, model.created_at, self._label_times.get((role, model.version))
            )
            for role, model in self.roles()
        ]
        environment = self._label_times.get(("environment", ""))
        if environment is not None:
            out.append(Freshness("environment", "", None, environment))
        return out

    def _read_label_times(self) -> dict[tuple[str, str], Any]:
        times: dict[tuple[str, str], Any] = {
            ("environment", ""): self.store.newest_label_at(self.environment)
        }
        for role, model in self.roles():
            times[(role, model.version)] = self.store.newest_label_at(
                self.environment,
                model_name=model.name,
                model_version=model.version,
                channel=API_CHANNEL,
            )
        return times

    async def refresh_label_times(self) -> None:
        """Ask the store for the newest labels when the cached answer is older than the TTL;
        a store that is slow or down leaves the last known values (and a log line)."""
        if time.monotonic() - self._label_times_at < self.config.label_age_ttl:
            return
        if self._label_refresh is None:
            self._label_refresh = asyncio.Lock()
        if self._label_refresh.locked():
            return  # another scrape is asking already
        async with self._label_refresh:
            try:
                times = await asyncio.wait_for(asyncio.to_thread(self._read_label_times), 5.0)
            except Exception as error:
                self._warnings.warn(
                    "label-age",
                    "labelled-data age not refreshed: %s",
                    error or type(error).__name__,
                )
                return
            self._label_times = times
            self._label_times_at = time.monotonic()

    def labels_arrived(self) -> None:
        self._label_times_at = -math.inf

    # -- lifespan ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.prepared:
            await asyncio.to_thread(self.prepare)
        await self.scoring.start()
        if self._first_load_pending:
            self._first_load_pending = False
            self._first_load = asyncio.create_task(self._load_first(), name="first-model-load")
        self.models.start_polling(self.config.reload_interval)
        if self.challenger is not None:
            self.challenger.start_polling(self.config.reload_interval)
        if self.broadcast is not None:
            self._following = asyncio.create_task(self._follow_reloads(), name="reload-follower")

    def share_reloads(self, path: Path) -> None:
        """Pass admin reloads on to (and take them from) the workers sharing `path`."""
        self.broadcast = ReloadBroadcast(path)

    async def _follow_reloads(self) -> None:
        assert self.broadcast is not None
        while True:
            await asyncio.sleep(BROADCAST_POLL)
            if not self.broadcast.received():
                continue
            try:
                outcome, _ = await self._refresh_both()
                if outcome.changed:
                    log.info(
                        "reload asked through another worker: now version %s",
                        outcome.current.version if outcome.current else None,
                    )
            except Exception as error:  # keep serving what we have, as the poller does
                log.warning("reload asked through another worker failed: %s", error)

    async def refresh_models(self) -> tuple[Any, ServingModel | None]:
        """Re-read both aliases now; the champion's failure is the caller's error, the
        challenger's is logged and counted only. Beside other workers, a successful
        reload is passed on to them (they reload within `BROADCAST_POLL` seconds)."""
        outcome = await self._refresh_both()
        if self.broadcast is not None:
            self.broadcast.send()
        return outcome

    async def _refresh_both(self) -> tuple[Any, ServingModel | None]:
        outcome = await self.models.refresh()
        if self.challenger is not None:
            try:
                await self.challenger.refresh()
            except Exception as error:
                log.warning("challenger reload failed: %s", error)
        return outcome, self.challenger_model

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        if self._first_load is not None:
            self._first_load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._first_load
        await self.models.stop()
        if self.challenger is not None:
            await self.challenger.stop()
        await self.scoring.stop()
        self.store.dispose()
        self.metrics.close()
