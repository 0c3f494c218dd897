"""Validate, score, store: the write path of POST /v1/score, without HTTP.

The path lives in `ScoringService` rather than in the route so that it can be driven and
tested without a server or a test client (its tests call it directly), and so that the
route is left with what is HTTP's alone: the body type for FastAPI and the OpenAPI
schema, and turning a refusal into a status code. Why it is shaped this way:

1. Records are validated against the model generated from the data contract (FastAPI
   does it for the route, `validate` for anyone else, with the same type); a bad record
   refuses the request before anything else happens, so nothing is stored. So does a
   request that repeats a unique id (`RecordsRefused`).
2. The request takes the serving model holder once (`models.current`) and keeps it.
3. Its rows go to the *scorer* batcher: concurrent requests share one `predict_proba`
   call, per holder, in the scorer's own thread. A record without an id gets one
   derived from its content (`pipeline.service.ids`).
4. Its score rows go to the *writer* batcher: concurrent requests share one transaction
   (`ScoreStore.insert_scores`), in the writer's own thread - a group commit. Scoring of
   the next batch overlaps with the commit of this one.
5. Only when its commit succeeded does the request get its scores. A failed or timed-out
   commit is `ScoringUnavailable` (the API's 503): never an answer for an unstored
   score. A failed shared commit is retried request by request, so a request whose rows
   the database refuses fails alone instead of taking its neighbours in the transaction
   with it.
6. When a challenger is loaded, the answered rows are handed to the *shadow* path after
   the answer is settled: the challenger scores them in its own batcher thread, and its
   rows (`shadow` true, `shadow_of` the champion's score id) ride in the next group
   commit. The answer never waits for the challenger; a failing, slow or missing
   challenger costs a log line and a metric, never a request. The backlog is bounded
   (`shadow_max_backlog` rows): above it, shadow work is dropped and counted rather
   than queued without end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.service import errors as service_errors
from pipeline.service.batching import MicroBatcher
from pipeline.service.config import ServiceConfig
from pipeline.service.contract import FieldError, RecordSchema, score_request_type
from pipeline.service.ids import derive_record_ids
from pipeline.service.metrics import ServiceMetrics
from pipeline.service.model import ServingModel
from pipeline.store import ScoreStore, new_score_id, shadow_score_id, utcnow

log = logging.getLogger("pipeline.service")

API_CHANNEL = "api"
API_SOURCE = "api:/v1/score"
SHADOW_SOURCE = "api:/v1/score#shadow"
LOG_EVERY = 60.0  # seconds between two warnings about the same failure


class ShadowNotStored(Exception):
    """The shadow rows of one request were left out of a group commit that failed."""


class RecordsRefused(Exception):
    """The request breaks a rule of the contract; nothing of it was scored or stored.

    `problems` are error entries naming field, rule and value, as the API answers them.
    """

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(service_errors.summary(problems))
        self.problems = problems


class ScoringUnavailable(Exception):
    """No answer now, and nothing was answered: no model is loaded, or the store did not
    confirm the write. The request may be retried."""


class ModelSource(Protocol):
    """What serves now: a `ModelManager`, or any holder with the same two attributes."""

    current: ServingModel | None
    last_error: str | None


class WarningThrottle:
    """A warning at most every LOG_EVERY seconds per key: a broken challenger or store
    must not flood the log at the request rate (metrics count every failure)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) >= LOG_EVERY:
            self._last[key] = now
            log.warning(message, *args)


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


def duplicate_ids(record_ids: Sequence[str], id_column: str) -> list[dict[str, Any]]:
    """An entry for every record whose id an earlier record of the same request has.

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
    return problems


def _is_shadow(batch: list[dict[str, Any]]) -> bool:
    return bool(batch) and bool(batch[0].get("shadow"))


def _store_down(error: Exception) -> bool:
    """The store, not one request's rows, is the problem: the connection or the server
    failed (SQLAlchemy's OperationalError, InterfaceError, pool timeout). A row the
    database refuses is a DataError, IntegrityError or a StatementError from the driver."""
    return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def brief(error: Exception) -> str:
    """The first line of an error: SQLAlchemy's carry the statement and every parameter,
    which belong neither in a warning at request rate nor in a client's answer."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class ScoringService:
    """Records in, stored scores out, for one environment's champion (and challenger).

    The model managers are shared with whoever loads and polls them (`ServiceState`);
    this class only reads `current` once per request. `start` and `stop` run its three
    batchers (scorer, shadow scorer, group commit) on the running event loop.
    """

    def __init__(
        self,
        *,
        schema: RecordSchema,
        store: ScoreStore,
        metrics: ServiceMetrics,
        config: ServiceConfig,
        environment: str,
        pseudonymise: Callable[[Sequence[str]], list[str]],
        models: ModelSource,
        challenger: ModelSource | None = None,
    ) -> None:
        self.schema = schema
        self.store = store
        self.metrics = metrics
        self.config = config
        self.environment = environment
        self.pseudonymise = pseudonymise
        self.models = models
        self.challenger = challenger
        self._warnings = WarningThrottle()
        self._request_type: TypeAdapter[Any] | None = None
        self.scorer: MicroBatcher[_ScoreJob, np.ndarray | Exception] = MicroBatcher(
            self._predict,
            name="scorer",
            max_size=config.predict_max_rows,
            size_of=lambda job: len(job.rows),
        )
        self.shadow_scorer: MicroBatcher[_ScoreJob, np.ndarray | Exception] = MicroBatcher(
            self._predict_shadow,
            name="shadow",
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
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._shadow_backlog = 0

    @property
    def running(self) -> bool:
        return self.scorer.running and self.writer.running

    @property
    def challenger_model(self) -> ServingModel | None:
        return None if self.challenger is None else self.challenger.current

    # -- the path ----------------------------------------------------------------------

    def validate(self, payload: Any) -> list[BaseModel]:
        """The records of a JSON-like body (one record, or a list of up to `max_batch`),
        checked with the type the API validates its body with; `RecordsRefused` names
        the offending fields exactly as the API's 422 does."""
        if self._request_type is None:
            self._request_type = TypeAdapter(score_request_type(self.schema, self.config.max_batch))
        try:
            body = self._request_type.validate_python(payload)
        except ValidationError as error:
            located = [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
            raise RecordsRefused(service_errors.field_errors(located)) from None
        return body if isinstance(body, list) else [body]

    async def score(self, records: Sequence[BaseModel]) -> list[dict[str, Any]]:
        """Score validated records and store every score; the results, in record order,
        only once the store confirmed the write."""
        schema = self.schema
        model = self.models.current  # taken once: this request's version, whatever happens
        challenger = self.challenger_model  # likewise for its shadow
        pairs = [schema.values(record) for record in records]
        rows = [values for _, values in pairs]
        record_ids = derive_record_ids(schema.inputs, rows, [record_id for record_id, _ in pairs])
        if schema.id_unique and schema.id_column is not None and len(record_ids) > 1:
            clash = duplicate_ids(record_ids, schema.id_column)
            if clash:
                raise RecordsRefused(clash)
        if model is None:
            raise ScoringUnavailable(f"no model is loaded: {self.models.last_error}")
        scores = await self.scorer.submit(_ScoreJob(model, rows))
        if isinstance(scores, Exception):
            raise scores  # the model could not score this request: the API's 500
        stored_ids = self.pseudonymise(record_ids)
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
                    "environment": self.environment,
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
            committed = await asyncio.wait_for(
                self.writer.submit(stored), self.config.store_timeout
            )
            if isinstance(committed, Exception):  # this request's own commit failed
                raise committed
        except Exception as error:
            # The first line only: SQLAlchemy's text carries every row's parameters.
            log.warning("score not stored, answering 503: %s", brief(error))
            raise ScoringUnavailable(
                "the score store did not confirm the write, so no score is answered; retry"
            ) from None
        histogram = self.metrics.scores.labels(model.version)
        flagged = 0
        for result in results:
            histogram.observe(result["score"])
            flagged += result["decision"]
        self.metrics.decisions.labels(model.version, "1").inc(flagged)
        self.metrics.decisions.labels(model.version, "0").inc(len(results) - flagged)
        if challenger is not None and challenger.version != model.version:
            self.offer_shadow(challenger, rows, stored)
        return results

    # -- the batched calls (run in their own threads) ------------------------------------

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
                self._warnings.warn(
                    "group-commit",
                    "group commit of %d requests failed (%s); committing each request alone",
                    len(batches),
                    brief(error),
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
                results[index] = ShadowNotStored(brief(error)) if _is_shadow(batch) else error
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
            self._warnings.warn(
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
            self._warnings.warn(
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
            self._warnings.warn(
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
        await self.scorer.start()
        await self.shadow_scorer.start()
        await self.writer.start()

    async def stop(self) -> None:
        """Finish what was accepted: queued scoring, answered requests' shadows (within the
        store timeout), then the last commits."""
        await self.scorer.stop()
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=self.config.store_timeout)
        await self.shadow_scorer.stop()
        await self.writer.stop()
