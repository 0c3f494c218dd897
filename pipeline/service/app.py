"""The FastAPI application: thin routes over the contract models, the batchers and the store.

The write path of POST /v1/score, and why it is shaped this way:

1. FastAPI validates the body against the model generated from the data contract;
   a bad record is a 422 before anything else happens, so nothing is stored. So is a
   batch that repeats a unique id, and a body not sent as JSON is a 415.
2. The request takes the serving model holder once (`models.current`) and keeps it.
3. Its rows go to the *scorer* batcher: concurrent requests share one
   `predict_proba` call, per holder, in the scorer's own thread. A record without an
   id gets one derived from its content (`pipeline.service.ids`).
4. Its score rows go to the *writer* batcher: concurrent requests share one
   transaction (`ScoreStore.insert_scores`), in the writer's own thread - a group
   commit. Scoring of the next batch overlaps with the commit of this one.
5. Only when its commit succeeded does the request answer 200. A failed or timed-out
   commit answers 503: never a 200 for an unstored score. A failed shared commit is
   retried request by request, so a request whose rows the database refuses fails
   alone instead of taking its neighbours in the transaction with it.
6. When a challenger is loaded (`@<alias>-challenger`), the answered rows are handed to
   the *shadow* path after the answer is settled: the challenger scores them in its own
   batcher thread, and its rows (`shadow` true, `shadow_of` the champion's score id) ride
   in the next group commit. The answer never waits for the challenger; a failing,
   slow or missing challenger costs a log line and a metric, never a request. The
   backlog is bounded (`shadow_max_backlog` rows): above it, shadow work is dropped
   and counted rather than queued without end.

No `from __future__ import annotations` here: FastAPI must see the real types of the
route parameters, and some of them are built at run time from the contract.
"""

import asyncio
import contextlib
import email.message
import logging
import math
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import Settings
from pipeline.errors import CrispError, ServiceUnavailable
from pipeline.service import errors as service_errors
from pipeline.service.batching import MicroBatcher
from pipeline.service.config import (
    ROLES,
    STRICT_ENVIRONMENTS,
    TOKEN_ENV,
    TOKENS_ENV,
    ServiceConfig,
)
from pipeline.service.contract import (
    SCORE_ID_MAX_LENGTH,
    FieldError,
    Health,
    LabelResult,
    ModelInfo,
    OnlineDay,
    Problem,
    QualityReport,
    Readiness,
    RecordSchema,
    ReloadResult,
    ScoreResult,
    ShadowReport,
    StoredScore,
    ValidationProblem,
    label_request_model,
    record_schema,
    score_request_type,
    text_type,
)
from pipeline.service.errors import safe_text
from pipeline.service.ids import derive_record_ids
from pipeline.service.metrics import CONTENT_TYPE, Freshness, ServiceMetrics
from pipeline.service.middleware import BodyLimit, RequestMetrics
from pipeline.service.model import (
    ModelLoader,
    ModelManager,
    ServingModel,
    challenger_ref,
    default_model_uri,
    parse_model_uri,
)
from pipeline.store import ScoreStore, new_score_id, shadow_score_id, utcnow
from pipeline.store.schema import labels as labels_table
from pipeline.store.schema import scores as scores_table

log = logging.getLogger("pipeline.service")

API_CHANNEL = "api"
API_SOURCE = "api:/v1/score"
SHADOW_SOURCE = "api:/v1/score#shadow"
_TOKEN_VARS = (TOKEN_ENV, TOKENS_ENV)
LOG_EVERY = 60.0  # seconds between two warnings about the same shadow failure
FIRST_LOAD_RETRY = 5.0  # seconds between attempts to load the first model


class ShadowNotStored(Exception):
    """The shadow rows of one request were left out of a group commit that failed."""


@dataclass(frozen=True)
class _ScoreJob:
    """One request's rows for the scorer, with the model holder the request took."""

    model: ServingModel
    rows: Sequence[tuple[Any, ...]]


Frame = Callable[[Sequence[tuple[Any, ...]]], pd.DataFrame]


def _scores(model: ServingModel, rows: Sequence[tuple[Any, ...]], to_frame: Frame) -> np.ndarray:
    scores = model.predict(to_frame(rows))
    if len(scores) != len(rows):
        raise ValueError(
            f"model version {model.version} returned {len(scores)} scores for {len(rows)} rows"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"model version {model.version} returned non-finite scores")
    return scores


def predict_jobs(jobs: list[_ScoreJob], to_frame: Frame) -> list[np.ndarray | Exception]:
    """Score every job, one `predict_proba` per distinct holder, in job order.

    Jobs that took different holders (a reload happened between them) are scored by
    their own model: grouping is by holder identity, never by "the current one".
    `to_frame` turns rows into the model's input frame (`RecordSchema.frame`).

    A job's result is its scores, or the exception scoring it raised: when a shared call
    fails, each of its jobs is scored alone, so one request the model cannot score (a
    model that breaks on some value) fails that request only, not its neighbours.
    """
    groups: dict[int, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(id(job.model), []).append(index)
    out: list[np.ndarray | Exception] = [np.empty(0)] * len(jobs)
    for indices in groups.values():
        model = jobs[indices[0]].model
        rows = [row for i in indices for row in jobs[i].rows]
        try:
            scores = _scores(model, rows, to_frame)
        except Exception as error:
            if len(indices) == 1:
                out[indices[0]] = error
                continue
            for i in indices:
                try:
                    out[i] = _scores(model, jobs[i].rows, to_frame)
                except Exception as alone:
                    out[i] = alone
            continue
        start = 0
        for i in indices:
            out[i] = scores[start : start + len(jobs[i].rows)]
            start += len(jobs[i].rows)
    return out


def _pseudonymiser(settings: Settings) -> Callable[[Sequence[str]], list[str]]:
    """Record ids as the store holds them: keyed exactly as `prepare` keys batch ids."""
    privacy = settings.environment.privacy
    if not privacy.pseudonymise_ids:
        return list
    from pipeline.privacy import pseudonymisation_key, pseudonymise

    key = pseudonymisation_key(privacy)  # fails at start-up, not at the first request
    return lambda ids: pseudonymise(pd.Series(list(ids), dtype=object), key).tolist()


def _iso_datetime(value: Any) -> datetime:
    """Only ISO 8601 text: pydantic would also read 0.5 as a Unix time, which nobody means."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise PydanticCustomError(
        "iso_datetime", "Input should be an ISO 8601 date-time such as 2026-11-22T08:00:00Z"
    )


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime)]
# A score id in a path: the rules of every id (no control characters, not blank).
ScoreIdText = text_type(is_id=True, min_length=1, max_length=SCORE_ID_MAX_LENGTH)


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _field_error(
            422, name, "datetime_range", "is outside the representable range", value.isoformat()
        ) from None


def _is_json(content_type: str | None) -> bool:
    """The media types FastAPI reads as JSON: application/json and application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json(request: Request) -> None:
    """415 for a body not declared as JSON (text/plain, a form, no Content-Type at all).

    FastAPI hands such a body to validation as raw bytes, and the client got a 422 about
    the record's shape for what is a media type mistake. A dependency runs before the
    body's validation errors are raised, so the 415 wins. An empty body keeps the 422
    that says the body is missing.
    """
    if _is_json(request.headers.get("content-type")) or not await request.body():
        return
    raise HTTPException(
        415, "the request body must be JSON: send it with Content-Type: application/json"
    )


def duplicate_ids(record_ids: Sequence[str], id_column: str) -> HTTPException | None:
    """A 422 naming every record whose id an earlier record of the same request has.

    The contract says the id is unique; stored twice, one record would have two scores
    and each label by record id would land on both. Derived ids take part too: a sent id
    that equals another record's derived id is the same clash.
    """
    first: dict[str, int] = {}
    problems = []
    for index, record_id in enumerate(record_ids):
        earlier = first.setdefault(record_id, index)
        if earlier == index:
            continue
        problems.append(
            FieldError(
                loc=["body", index, id_column],
                field=f"[{index}].{id_column}",
                rule="duplicate_id",
                msg=f"record [{earlier}] of this request has the same id; ids are unique",
                value=record_id,
            ).model_dump()
        )
    return HTTPException(422, detail=problems) if problems else None


def _field_error(status: int, field: str, rule: str, msg: str, value: Any = None) -> HTTPException:
    entry = FieldError(loc=[field], field=field, rule=rule, msg=msg, value=value).model_dump()
    return HTTPException(status, detail=[entry])


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
        self.shadow_scorer: MicroBatcher[_ScoreJob, np.ndarray | Exception] = MicroBatcher(
            self._predict_shadow,
            name="shadow",
            max_size=config.predict_max_rows,
            size_of=lambda job: len(job.rows),
        )
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._shadow_backlog = 0
        self._warned: dict[str, float] = {}
        # Newest label per (role, version): refreshed by /metrics at most every TTL.
        self._label_times: dict[tuple[str, str], Any] = {}
        self._label_times_at = -math.inf
        self._label_refresh: asyncio.Lock | None = None
        self.metrics.watch_staleness(self._freshness)
        self.scorer: MicroBatcher[_ScoreJob, np.ndarray | Exception] = MicroBatcher(
            self._predict,
            name="scorer",
            max_size=config.predict_max_rows,
            size_of=lambda job: len(job.rows),
        )
        self.writer: MicroBatcher[list[dict[str, Any]], int | Exception] = MicroBatcher(
            self._commit,
            name="group-commit",
            max_size=config.commit_max_rows,
            max_wait=config.commit_wait_ms / 1000.0,
            size_of=len,
        )
        self.report_lock = asyncio.Semaphore(1)
        self.prepared = False
        # Set by `prepare` for an alias: `start` then loads it in the background.
        self._first_load_pending = False
        self._first_load: asyncio.Task[None] | None = None

    # -- set-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Blocking start-up work: migrate the store; load a model that cannot move.

        A pinned version or a local folder is loaded here, and failing is fatal (a typo
        will not fix itself). An alias (and its challenger) is loaded in the background
        once the service listens (`_load_first`): a registry that is down or slow must
        never delay listening, since Kubernetes would restart a pod that does not answer
        /healthz, while one that answers /readyz 503 just gets no traffic until ready.
        """
        self.store.migrate()
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
                    self._warn("first-load", "no model loaded yet (not ready): %s", error)
            if not challenger_done and self.challenger is not None:
                try:
                    await self.challenger.refresh()
                    challenger_done = True
                except Exception as error:
                    challenger_done = self.challenger.failed_version is not None
                    self._warn(
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

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """A warning at most every LOG_EVERY seconds per key: a broken challenger must not
        flood the log at the request rate (the metric counts every failure)."""
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= LOG_EVERY:
            self._warned[key] = now
            log.warning(message, *args)

    # -- staleness ---------------------------------------------------------------------

    def _roles(self) -> list[tuple[str, ServingModel]]:
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
            for role, model in self._roles()
        ]
        environment = self._label_times.get(("environment", ""))
        if environment is not None:
            out.append(Freshness("environment", "", None, environment))
        return out

    def _read_label_times(self) -> dict[tuple[str, str], Any]:
        times: dict[tuple[str, str], Any] = {
            ("environment", ""): self.store.newest_label_at(self.environment)
        }
        for role, model in self._roles():
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
                self._warn(
                    "label-age",
                    "labelled-data age not refreshed: %s",
                    error or type(error).__name__,
                )
                return
            self._label_times = times
            self._label_times_at = time.monotonic()

    def labels_arrived(self) -> None:
        self._label_times_at = -math.inf

    # -- the two batched calls (run in their own threads) --------------------------------

    def _predict(self, jobs: list[_ScoreJob]) -> list[np.ndarray | Exception]:
        self.metrics.predict_rows.observe(sum(len(j.rows) for j in jobs))
        return predict_jobs(jobs, self.schema.frame)

    def _predict_shadow(self, jobs: list[_ScoreJob]) -> list[np.ndarray | Exception]:
        return predict_jobs(jobs, self.schema.frame)

    def _commit(self, batches: list[list[dict[str, Any]]]) -> list[int | Exception]:
        """One transaction for every request in the batch; should it fail, one per request.

        The shared transaction is all or nothing, so one row the database refuses would
        fail every request that happened to share it: an attacker's request would cost
        honest clients their answers. After a failed shared commit, each request's rows
        are therefore tried again in a transaction of their own, answered requests first
        and shadow rows last (a challenger's rows can never cost a champion's answer).
        A request whose own commit fails gets its error as its result (503); a failed
        shadow request gets `ShadowNotStored`.

        A store that is down would fail every retry, each after its own wait: once a
        retry fails on the connection (`_store_down`), the requests not yet retried get
        that error without another attempt.
        """
        rows = [row for batch in batches for row in batch]
        with self.metrics.commit_seconds.time():
            try:
                self.store.insert_scores(rows)
            except Exception as error:
                if len(batches) == 1:
                    self.metrics.store_failures.inc()
                    raise
                self._warn(
                    "group-commit",
                    "group commit of %d requests failed (%s); committing each request alone",
                    len(batches),
                    _brief(error),
                )
                return self._commit_each(batches)
        self.metrics.commit_rows.observe(len(rows))
        self.metrics.stored.inc(len(rows))
        return [len(batch) for batch in batches]

    def _commit_each(self, batches: list[list[dict[str, Any]]]) -> list[int | Exception]:
        """Each request's rows in a transaction of their own, answered requests first."""
        order = sorted(range(len(batches)), key=lambda i: _is_shadow(batches[i]))
        results: list[int | Exception] = [0] * len(batches)
        down: Exception | None = None
        for index in order:
            batch = batches[index]
            try:
                if down is not None:
                    raise down
                self.store.insert_scores(batch)
            except Exception as error:
                if _store_down(error):
                    down = error
                results[index] = ShadowNotStored(_brief(error)) if _is_shadow(batch) else error
                continue
            self.metrics.commit_rows.observe(len(batch))
            self.metrics.stored.inc(len(batch))
            results[index] = len(batch)
        if any(isinstance(r, Exception) and not isinstance(r, ShadowNotStored) for r in results):
            self.metrics.store_failures.inc()
        return results

    # -- the shadow path -----------------------------------------------------------------

    def offer_shadow(
        self,
        challenger: ServingModel,
        rows: Sequence[tuple[Any, ...]],
        answered: list[dict[str, Any]],
    ) -> None:
        """Hand answered rows to the challenger; returns at once (never awaited by the
        request). Above the backlog limit the work is dropped and counted."""
        size = len(rows)
        if self._shadow_backlog + size > self.config.shadow_max_backlog:
            self.metrics.shadow_failures.labels("dropped").inc(size)
            self._warn(
                "shadow-dropped",
                "challenger backlog full (%d rows): shadow scores dropped",
                self._shadow_backlog,
            )
            return
        self._shadow_backlog += size
        self.metrics.shadow_backlog.set(self._shadow_backlog)
        task = asyncio.create_task(self._shadow(challenger, rows, answered))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        challenger: ServingModel,
        rows: Sequence[tuple[Any, ...]],
        answered: list[dict[str, Any]],
    ) -> None:
        try:
            scores = await self.shadow_scorer.submit(_ScoreJob(challenger, rows))
            if isinstance(scores, Exception):
                raise scores
        except Exception as error:
            self.metrics.shadow_failures.labels("predict").inc(len(rows))
            self._warn(
                "shadow-predict",
                "challenger version %s failed to score: %s: %s",
                challenger.version,
                type(error).__name__,
                error,
            )
            self._shadow_done(len(rows))
            return
        threshold = challenger.threshold
        shadow_rows = []
        disagreements = 0
        for champion, value in zip(answered, scores.tolist(), strict=True):
            decision = int(value >= threshold)
            disagreements += decision != champion["decision"]
            shadow_rows.append(
                {
                    **champion,
                    "score_id": shadow_score_id(champion["score_id"], challenger.version),
                    "score": value,
                    "decision": decision,
                    "threshold": threshold,
                    "model_name": challenger.name,
                    "model_version": challenger.version,
                    "run_id": challenger.run_id,
                    "git_commit": challenger.git_commit,
                    "source": SHADOW_SOURCE,
                    "shadow": True,
                    "shadow_of": champion["score_id"],
                }
            )
        try:
            stored = await asyncio.wait_for(
                self.writer.submit(shadow_rows), self.config.store_timeout
            )
            if isinstance(stored, Exception):
                raise stored
        except Exception as error:
            self.metrics.shadow_failures.labels("store").inc(len(rows))
            self._warn(
                "shadow-store-failed", "shadow scores not stored: %s", error or type(error).__name__
            )
        else:
            self.metrics.shadow_scores.labels(challenger.version).inc(len(shadow_rows))
            self.metrics.shadow_disagreements.labels(challenger.version).inc(disagreements)
        finally:
            self._shadow_done(len(rows))

    def _shadow_done(self, size: int) -> None:
        self._shadow_backlog -= size
        self.metrics.shadow_backlog.set(self._shadow_backlog)

    # -- lifespan ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.prepared:
            await asyncio.to_thread(self.prepare)
        await self.scorer.start()
        await self.shadow_scorer.start()
        await self.writer.start()
        if self._first_load_pending:
            self._first_load_pending = False
            self._first_load = asyncio.create_task(self._load_first(), name="first-model-load")
        self.models.start_polling(self.config.reload_interval)
        if self.challenger is not None:
            self.challenger.start_polling(self.config.reload_interval)

    async def refresh_models(self) -> tuple[Any, ServingModel | None]:
        """Re-read both aliases now; the champion's failure is the caller's error, the
        challenger's is logged and counted only."""
        outcome = await self.models.refresh()
        if self.challenger is not None:
            try:
                await self.challenger.refresh()
            except Exception as error:
                log.warning("challenger reload failed: %s", error)
        return outcome, self.challenger_model

    async def stop(self) -> None:
        if self._first_load is not None:
            self._first_load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._first_load
        await self.models.stop()
        if self.challenger is not None:
            await self.challenger.stop()
        await self.scorer.stop()
        if self._shadow_tasks:  # answered requests' shadows: finish them, within reason
            await asyncio.wait(set(self._shadow_tasks), timeout=self.config.store_timeout)
        await self.shadow_scorer.stop()
        await self.writer.stop()
        self.store.dispose()


def _is_shadow(batch: list[dict[str, Any]]) -> bool:
    return bool(batch) and bool(batch[0].get("shadow"))


def _store_down(error: Exception) -> bool:
    """The store, not one request's rows, is the problem: the connection or the server
    failed (SQLAlchemy's OperationalError, InterfaceError, pool timeout). A row the
    database refuses is a DataError, IntegrityError or a StatementError from the driver."""
    return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def _brief(error: Exception) -> str:
    """The first line of an error: SQLAlchemy's carry the statement and every parameter,
    which belong neither in a warning at request rate nor in a client's answer."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def create_app(
    settings: Settings, config: ServiceConfig | None = None, model_uri: str | None = None
) -> FastAPI:
    """Build the app for one environment. Nothing blocking happens until its lifespan starts
    (or `app.state.service.prepare()` is called, as `crispml serve` does first)."""
    config = config or ServiceConfig.from_env()
    state = ServiceState(settings, config, model_uri)
    schema = state.schema

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("crispml")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        app_version = "0"
    app = FastAPI(
        title="CrispML scoring service",
        version=app_version,
        description=(
            f"Online scoring for environment **{settings.env}**. Every answered score is "
            "stored, with its lineage, before the answer is sent. Records follow the data "
            "contract of params.yaml; endpoints need a bearer token with their role "
            "(score, read, label, admin), except where this deployment leaves them open."
        ),
        lifespan=lifespan,
        # qa/prod: no endpoint but the probes and /metrics answers without a token, so
        # the schema and its pages (/openapi.json, /docs, /redoc) are not served there.
        openapi_url=None if settings.env in STRICT_ENVIRONMENTS else "/openapi.json",
    )
    app.state.service = state

    # ------------------------------------------------------------------ security

    bearer = HTTPBearer(
        auto_error=False, description=f"A token of {TOKEN_ENV} or {TOKENS_ENV} with the role."
    )
    config.check_for(settings.env)  # qa/prod: refuse to start with a role nobody holds
    open_roles = config.open_roles(settings.env)

    def requires(role: str) -> list[Any]:
        """The dependency guarding an endpoint of `role`; none for an open role, so that
        the OpenAPI schema shows exactly the endpoints that need a token."""
        if role in open_roles:
            return []

        def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> None:
            if not config.has_token_for(role):
                raise HTTPException(
                    503,
                    f"this endpoint is disabled: the server has no token for role {role!r} "
                    f"({TOKEN_ENV} is unset and {TOKENS_ENV} names none)",
                )
            granted = config.roles_of(credentials.credentials if credentials else "")
            if not granted:
                raise HTTPException(
                    401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
            if role not in granted:
                raise HTTPException(403, f"this token does not have the role {role!r}")

        return [Depends(check)]

    def auth_responses(role: str) -> dict[int | str, dict[str, Any]]:
        if role in open_roles:
            return {}
        return {
            401: {"model": Problem, "description": "Missing or unknown bearer token."},
            403: {"model": Problem, "description": f"The token lacks the role {role!r}."},
            503: {"model": Problem, "description": "No token configured, or a dependency is down."},
        }

    invalid: dict[int | str, dict[str, Any]] = {
        413: {"model": Problem, "description": "Request body above the size limit."},
        415: {"model": Problem, "description": "The body is not sent as application/json."},
        422: {"model": ValidationProblem, "description": "A field breaks a rule of the contract."},
    }

    # ------------------------------------------------------------------ errors

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Whatever the input, the answer is a 422: an entry that still cannot be rendered
        # (it should not exist: `field_errors` makes every string safe) costs its detail,
        # never a 500 with a trace.
        try:
            entries = service_errors.field_errors(exc.errors())
            return JSONResponse(
                {"error": service_errors.summary(entries), "detail": entries}, status_code=422
            )
        except Exception as error:
            log.warning("validation errors not rendered: %s", type(error).__name__)
            return JSONResponse({"error": "invalid request", "detail": []}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): for a JSON
            # API that is malformed JSON, answered like any other malformed JSON.
            entry = {
                "loc": ["body"],
                "field": "body",
                "rule": "json_invalid",
                "msg": f"the body is not valid JSON: {type(exc.__cause__).__name__}",
                "value": None,
            }
            return JSONResponse(
                {"error": service_errors.summary([entry]), "detail": [entry]}, status_code=422
            )
        if isinstance(exc.detail, list):  # field errors raised by a route (e.g. labels)
            entries = [service_errors.safe_entry(entry) for entry in exc.detail]
            return JSONResponse(
                {"error": service_errors.summary(entries), "detail": entries},
                status_code=exc.status_code,
                headers=exc.headers,
            )
        detail = exc.detail if not isinstance(exc.detail, str) else safe_text(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(CrispError)
    async def _crisp(_request: Request, exc: CrispError) -> JSONResponse:
        status = 503 if isinstance(exc, ServiceUnavailable) else 500
        log.warning("request failed: %s", exc)
        return JSONResponse({"detail": str(exc) if status == 503 else "internal error"}, status)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log under an id; the client gets the id, never the trace.
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error %s", error_id, exc_info=exc)
        return JSONResponse({"detail": f"internal error (id {error_id})"}, status_code=500)

    # ------------------------------------------------------------------ scoring

    score_body = score_request_type(schema, config.max_batch)
    json_body = [Depends(require_json)]
    score_dependencies = [*requires("score"), *json_body]
    score_responses: dict[int | str, dict[str, Any]] = {
        **invalid,
        **auth_responses("score"),
        503: {
            "model": Problem,
            "description": "No model loaded, or the store did not confirm "
            "the write: nothing was answered, retry.",
        },
    }

    @app.post(
        "/v1/score",
        response_model=ScoreResult | list[ScoreResult],
        dependencies=score_dependencies,
        responses=score_responses,
        tags=["scoring"],
        summary="Score one record or a batch; every score is stored before the answer",
    )
    async def score(
        body: Annotated[
            score_body,  # type: ignore[valid-type]
            Body(description=f"One record, or a JSON array of 1 to {config.max_batch} records."),
        ],
    ) -> Any:
        """Send a record (object) to get one result, or an array to get an array back.

        The answer is sent only after the score is committed to the score store. 503 means
        nothing was answered and the request may be retried.
        """
        model = state.models.current  # taken once: this request's version, whatever happens
        challenger = state.challenger_model  # likewise for its shadow
        records = body if isinstance(body, list) else [body]
        pairs = [schema.values(record) for record in records]
        rows = [values for _, values in pairs]
        record_ids = derive_record_ids(schema.inputs, rows, [record_id for record_id, _ in pairs])
        if schema.id_unique and schema.id_column is not None and len(record_ids) > 1:
            clash = duplicate_ids(record_ids, schema.id_column)
            if clash is not None:
                raise clash
        if model is None:
            raise HTTPException(503, f"no model is loaded: {state.models.last_error}")
        scores = await state.scorer.submit(_ScoreJob(model, rows))
        if isinstance(scores, Exception):
            raise scores  # the model could not score this request: 500, trace in the log
        stored_ids = state.pseudonymise(record_ids)
        now = utcnow()
        stored: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        threshold = model.threshold
        answers = zip(record_ids, stored_ids, scores.tolist(), strict=True)
        for record_id, stored_id, value in answers:
            score_id = new_score_id()
            decision = int(value >= threshold)
            stored.append(
                {
                    "score_id": score_id,
                    "record_id": stored_id,
                    "frame": None,
                    "score": value,
                    "decision": decision,
                    "threshold": threshold,
                    "model_name": model.name,
                    "model_version": model.version,
                    "run_id": model.run_id,
                    "git_commit": model.git_commit,
                    "environment": state.environment,
                    "channel": API_CHANNEL,
                    "source": API_SOURCE,
                    "scored_at": now,
                    "shadow": False,
                    "shadow_of": None,
                }
            )
            results.append(
                {
                    "score_id": score_id,
                    "record_id": record_id,
                    "score": value,
                    "decision": decision,
                    "threshold": threshold,
                    "model_name": model.name,
                    "model_version": model.version,
                }
            )
        try:
            committed = await asyncio.wait_for(state.writer.submit(stored), config.store_timeout)
            if isinstance(committed, Exception):  # this request's own commit failed
                raise committed
        except Exception as error:
            # The first line only: SQLAlchemy's text carries every row's parameters.
            log.warning("score not stored, answering 503: %s", _brief(error))
            raise HTTPException(
                503, "the score store did not confirm the write, so no score is answered; retry"
            ) from None
        histogram = state.metrics.scores.labels(model.version)
        flagged = 0
        for result in results:
            histogram.observe(result["score"])
            flagged += result["decision"]
        state.metrics.decisions.labels(model.version, "1").inc(flagged)
        state.metrics.decisions.labels(model.version, "0").inc(len(results) - flagged)
        if challenger is not None and challenger.version != model.version:
            state.offer_shadow(challenger, rows, stored)
        return results if isinstance(body, list) else results[0]

    # ------------------------------------------------------------------ labels

    label_request = label_request_model(settings.contract, config.max_labels)

    @app.post(
        "/v1/labels",
        response_model=LabelResult,
        dependencies=[*requires("label"), *json_body],
        responses={
            **invalid,
            **auth_responses("label"),
            404: {
                "model": ValidationProblem,
                "description": "A score_id names no stored score of this environment; "
                "nothing was stored.",
            },
        },
        tags=["ground truth"],
        summary="Ground truth for stored scores (by score id or record id); idempotent",
    )
    async def labels(body: label_request) -> LabelResult:  # type: ignore[valid-type]
        """Upsert labels: sending the same labels again changes nothing, a new label for
        the same record replaces the old one. One unknown score id rejects the whole
        request (404), so a batch of labels is stored entirely or not at all."""
        items = body.labels
        score_ids = [getattr(item, "score_id", None) for item in items]
        wanted = [score_id for score_id in score_ids if score_id is not None]
        known = await asyncio.to_thread(state.store.record_ids_for_scores, wanted) if wanted else {}
        by_record_ids = state.pseudonymise(
            [
                item.record_id
                for item, score_id in zip(items, score_ids, strict=True)
                if score_id is None
            ]
        )
        problems: list[dict[str, Any]] = []
        rows: dict[str, dict[str, Any]] = {}
        now = utcnow()
        source = API_CHANNEL if body.source == API_CHANNEL else f"{API_CHANNEL}:{body.source}"
        next_record = iter(by_record_ids)
        for index, (item, score_id) in enumerate(zip(items, score_ids, strict=True)):
            if score_id is not None:
                found = known.get(score_id)
                where = {
                    "loc": ["body", "labels", index, "score_id"],
                    "field": f"labels[{index}].score_id",
                    "value": score_id,
                }
                if found is None:
                    problems.append(
                        FieldError(
                            rule="unknown_score_id",
                            msg="no stored score has this id",
                            **where,
                        ).model_dump()
                    )
                    continue
                if found[0] != state.environment:
                    problems.append(
                        FieldError(
                            rule="other_environment",
                            msg=f"the score belongs to environment {found[0]!r}, not "
                            f"{state.environment!r}",
                            **where,
                        ).model_dump()
                    )
                    continue
                record_id = found[1]
            else:
                record_id = next(next_record)
            # The newest word on a record wins, also within one request.
            rows[record_id] = {
                "environment": state.environment,
                "record_id": record_id,
                "label": item.label,
                "source": source,
                "labeled_at": now,
            }
        if problems:
            # 404: the request is well-formed, but names scores this service does not hold.
            raise HTTPException(404, detail=problems)
        stored = await asyncio.to_thread(state.store.upsert_labels, list(rows.values()))
        state.labels_arrived()
        return LabelResult(
            stored=stored,
            environment=state.environment,
            by_score_id=len(wanted),
            by_record_id=len(by_record_ids),
        )

    # ------------------------------------------------------------------ audit and verification

    @app.get(
        "/v1/scores/{score_id}",
        response_model=StoredScore,
        dependencies=requires("read"),
        responses={
            **auth_responses("read"),
            404: {
                "model": Problem,
                "description": "No stored score of this environment has this id.",
            },
            422: invalid[422],
        },
        tags=["audit"],
        summary="A stored score with its lineage and, once known, its label",
    )
    async def get_score(
        score_id: Annotated[ScoreIdText, PathParam()],  # type: ignore[valid-type]
    ) -> Any:
        """A stored score of this service's environment; any other id, including one of a
        score of another environment, is a 404."""
        # Environments may share a store: a dev service must neither read a prod score and
        # its label, nor tell that the id exists (the same answer as for an unknown id).
        row = await asyncio.to_thread(state.store.get_score, score_id)
        if row is None or row["environment"] != state.environment:
            raise HTTPException(404, f"no stored score has id {score_id!r}")
        return row

    @app.get(
        "/v1/report",
        response_model=QualityReport,
        dependencies=requires("read"),
        responses={
            **auth_responses("read"),
            200: {"content": {"text/html": {}}, "description": "JSON, or HTML with format=html."},
            404: {
                "model": Problem,
                "description": "format=html, and no labelled scores in "
                "the window or Evidently could not build a report from them.",
            },
            422: {"model": ValidationProblem, "description": "Bad window or format."},
        },
        tags=["audit"],
        summary="Realised quality of the stored scores against their labels",
    )
    async def report(
        scored_from: Annotated[
            IsoDatetime, Query(alias="from", description="Scored at or after (ISO 8601).")
        ],
        scored_to: Annotated[
            IsoDatetime, Query(alias="to", description="Scored before (ISO 8601).")
        ],
        output: Annotated[Literal["json", "html"], Query(alias="format")] = "json",
    ) -> Any:
        """Verification of the stored scores in a window against the labels imported so
        far. `format=html` returns Evidently's report for people.

        The window is required: "everything ever stored" grows without end, and one
        request must not make the service read all of it. Above
        CRISPML_SERVICE_REPORT_MAX_ROWS scores in the window the report is computed on a
        random sample of that many (`sampled`, with the window's true count in `scores`).
        The read and the computation run in a worker thread, never on the event loop.
        """
        start, end = _utc(scored_from, "from"), _utc(scored_to, "to")
        assert start is not None and end is not None  # both are required parameters
        if start >= end:
            raise _field_error(
                422, "to", "after_from", "must be later than 'from'", end.isoformat()
            )
        async with state.report_lock:  # Evidently is CPU-heavy: one report at a time
            return await asyncio.to_thread(_build_report, state, start, end, output)

    # ------------------------------------------------------------------ operations

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadResult,
        dependencies=requires("admin"),
        responses=auth_responses("admin"),
        tags=["operations"],
        summary="Re-read the model reference now (instead of waiting for the next poll)",
    )
    async def reload() -> ReloadResult:
        try:
            outcome, challenger = await state.refresh_models()
        except Exception as error:
            current = state.models.current
            still = f"; still serving version {current.version}" if current else ""
            raise HTTPException(503, f"reload failed: {error}{still}") from None
        return ReloadResult(
            changed=outcome.changed,
            previous_version=outcome.previous_version,
            model=None if outcome.current is None else ModelInfo(**outcome.current.info()),
            challenger=None if challenger is None else ModelInfo(**challenger.info()),
        )

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready; reasons say why."}},
        tags=["operations"],
        summary="Ready: a model is loaded and the score store answers",
    )
    async def readyz() -> JSONResponse:
        reasons = []
        model = state.models.current
        if model is None:
            reasons.append(f"no model loaded: {state.models.last_error}")
        try:
            reachable = await asyncio.wait_for(asyncio.to_thread(state.store.ping), 5.0)
        except TimeoutError:
            reachable = False
        if not reachable:
            reasons.append(f"score store {state.store.safe_url} does not answer")
        if not (state.scorer.running and state.writer.running):
            reasons.append("the scoring or write path is stopped")
        body = Readiness(
            status="not ready" if reasons else "ready",
            reasons=reasons,
            model=None if model is None else ModelInfo(**model.info()),
            challenger=None
            if (shadow := state.challenger_model) is None
            else ModelInfo(**shadow.info()),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=503 if reasons else 200)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
        tags=["operations"],
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        await state.refresh_label_times()
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    closed = [role for role in ROLES if role not in open_roles]
    if disabled := [role for role in closed if not config.has_token_for(role)]:
        log.warning("no token for roles %s (%s, %s): they answer 503", disabled, *_TOKEN_VARS)
    log.info("open without a token: %s", sorted(open_roles) or "nothing (but the probes)")
    return app


def _online_days(
    state: ServiceState, start: datetime | None, end: datetime | None
) -> list[OnlineDay]:
    """The serving versions' online scores per UTC day of scoring, answered and shadow apart."""
    from pipeline.evidence import pr_auc

    out: list[OnlineDay] = []
    seen: set[tuple[str, str]] = set()
    for _role, model in state._roles():
        if (model.name, model.version) in seen:
            continue
        seen.add((model.name, model.version))
        frame = state.store.online_scores_with_labels(
            state.environment,
            model.name,
            model.version,
            since=start,
            until=end,
            labeled_only=False,
        )
        for (day, shadow), group in frame.groupby(["day", "shadow"], sort=True):
            labelled = group[group["label"].notna()]
            y = labelled["label"].to_numpy(dtype=int)
            positives = int(y.sum())
            out.append(
                OnlineDay(
                    day=day,
                    model_version=model.version,
                    shadow=bool(shadow),
                    scores=len(group),
                    labelled=len(labelled),
                    positives=positives,
                    flagged=int(group["decision"].sum()),
                    pr_auc=pr_auc(y, labelled["score"].to_numpy(dtype=float))
                    if 0 < positives < len(y)
                    else None,
                )
            )
    return out


def _shadow_report(
    state: ServiceState, start: datetime | None, end: datetime | None
) -> ShadowReport | None:
    """Champion against the loaded challenger on the pairs scored in the window."""
    from pipeline import shadow

    champion, challenger = state.models.current, state.challenger_model
    if champion is None or challenger is None or champion.version == challenger.version:
        return None
    pairs = state.store.shadow_pairs(
        state.environment,
        champion.name,
        champion_version=champion.version,
        challenger_version=challenger.version,
        scored_from=start,
        scored_to=end,
    )
    summary = shadow.compare_pairs(
        pairs,
        champion.version,
        challenger.version,
        shadow.margin_of(state.settings),
        shadow.evidence_of(state.settings),
    )
    return ShadowReport(**summary)


def _window_counts(state: ServiceState, start: datetime, end: datetime) -> tuple[int, int]:
    """(every score row, answered scores) of this environment scored in [start, end).

    Counted in the database, so that the report knows before reading whether the window
    fits under the cap. Shadow rows count towards the cap: the per-day and shadow parts
    of the report read them too.
    """
    answered = sa.case((scores_table.c.shadow.is_(False), 1), else_=0)
    query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(answered), 0)).where(
        scores_table.c.environment == state.environment,
        scores_table.c.scored_at >= start,
        scores_table.c.scored_at < end,
    )
    with state.store.engine.connect() as conn:
        total, answered_count = conn.execute(query).one()
    return int(total), int(answered_count)


def _sampled_scores(state: ServiceState, start: datetime, end: datetime, size: int) -> pd.DataFrame:
    """A uniform random sample of `size` answered scores of the window, with their labels:
    the columns of `ScoreStore.scores_with_labels`. ORDER BY random() LIMIT keeps the
    sort in the database (a top-N sort) and sends only `size` rows to the service."""
    join = scores_table.outerjoin(
        labels_table,
        sa.and_(
            labels_table.c.environment == scores_table.c.environment,
            labels_table.c.record_id == scores_table.c.record_id,
        ),
    )
    columns = [
        scores_table.c[name]
        for name in (
            "score_id",
            "record_id",
            "frame",
            "score",
            "decision",
            "threshold",
            "model_name",
            "model_version",
            "scored_at",
        )
    ]
    query = (
        sa.select(*columns, labels_table.c.label)
        .select_from(join)
        .where(
            scores_table.c.environment == state.environment,
            scores_table.c.shadow.is_(False),
            scores_table.c.scored_at >= start,
            scores_table.c.scored_at < end,
        )
        .order_by(sa.func.random())
        .limit(size)
    )
    with state.store.engine.connect() as conn:
        return pd.read_sql_query(query, conn)


def _build_report(state: ServiceState, start: datetime, end: datetime, output: str) -> Any:
    """Blocking: read the window's scores and labels, summarise with Evidently.

    At most `report_max_rows` score rows are read: a window that holds more is reported
    on a random sample of that many answered scores, says so (`sampled`), and leaves out
    the per-day and shadow parts, which would need every row of the window.
    """
    cap = state.config.report_max_rows
    total, answered = _window_counts(state, start, end)
    sampled = total > cap
    if sampled:
        frame = _sampled_scores(state, start, end, cap)
    else:
        frame = state.store.scores_with_labels(
            state.environment, scored_from=start, scored_to=end, labeled_only=False
        )
    labelled = frame[frame["label"].notna()]
    base: dict[str, Any] = {
        "environment": state.environment,
        "scored_from": start,
        "scored_to": end,
        "scores": answered if sampled else len(frame),
        "rows": len(labelled),
        "sampled": sampled,
        "sampled_scores": len(frame) if sampled else None,
        "sample_reason": (
            f"the window holds {total} score rows, more than the cap of {cap} "
            f"(CRISPML_SERVICE_REPORT_MAX_ROWS): quality is computed on a random sample of "
            f"{len(frame)} answered scores; the per-day and shadow parts are left out. "
            "Narrow the window for an exact report."
        )
        if sampled
        else None,
    }
    if labelled.empty and output == "html":
        raise HTTPException(404, "no labelled scores in this window: nothing to report")
    if output == "json" and not sampled:
        base["online"] = _online_days(state, start, end)
        base["shadow"] = _shadow_report(state, start, end)
    if labelled.empty:
        return QualityReport(**base, reason="no labelled scores in this window")
    from pipeline.drift_and_quality import quality_summary

    with tempfile.TemporaryDirectory(prefix="crispml-report-") as folder:
        path = Path(folder) / "quality.html"
        summary = quality_summary(labelled, path if output == "html" else None)
        if output == "html":
            if summary.get("html") is None:  # Evidently could not build it (e.g. one class)
                raise HTTPException(404, f"no HTML report for this window: {summary.get('reason')}")
            return HTMLResponse(path.read_text(encoding="utf-8"))
    fields = set(QualityReport.model_fields) - set(base)
    return QualityReport(**base, **{k: v for k, v in summary.items() if k in fields})
