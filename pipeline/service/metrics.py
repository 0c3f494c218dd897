"""Prometheus collectors of one service instance.

Each app gets its own `CollectorRegistry` instead of the process-global one, so two
apps in one process (tests, or a bench harness) never collide on metric names, and
/metrics shows exactly this service.

With several worker processes on one port (`crispml serve --workers N`), whichever
worker answers a scrape would show only its own share of the traffic. There the
workers run in prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a
fresh folder per `crispml serve`): counters and histograms are summed over every
worker that ran (a restarted worker's counts stay), the shadow backlog is summed over
the live workers, and `crispml_challenger_loaded` is 1 if any live worker scores a
challenger. Info and scrape-time collectors cannot be shared that way, so
`crispml_model_info` and the model and label ages describe the worker that answered
the scrape (all workers follow the same alias, so they differ only during a swap).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.98,
    0.99,
    1.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

CONTENT_TYPE = CONTENT_TYPE_LATEST

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
MODEL_AGE = "crispml_model_age_seconds"
LABEL_AGE = "crispml_labelled_data_age_seconds"


@dataclass(frozen=True)
class Freshness:
    """What the staleness gauges are computed from, for one role at one scrape."""

    role: str  # champion, challenger, or environment (labels only)
    model_version: str
    created_at: datetime | None
    newest_label_at: datetime | None


class StalenessCollector:
    """Model age and labelled-data age, computed at scrape time from `snapshot()`.

    Ages are seconds from a fixed instant to now, so they are computed when Prometheus
    scrapes rather than stored: a stored age would be stale itself between updates. A
    role with no model (no challenger), or a model without labels yet, has no sample.
    """

    def __init__(self, snapshot: Callable[[], list[Freshness]]) -> None:
        self._snapshot = snapshot

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                MODEL_AGE,
                "Seconds since the serving version (role champion or challenger) was registered.",
                labels=["role", "model_version"],
            ),
            GaugeMetricFamily(
                LABEL_AGE,
                "Seconds since the newest label arrived: for a record the version scored "
                "online (champion, challenger), or any record of the environment.",
                labels=["role", "model_version"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        model_age, label_age = self._families()
        now = time.time()
        for item in self._snapshot():
            labels = [item.role, item.model_version]
            if item.created_at is not None:
                model_age.add_metric(labels, max(0.0, now - item.created_at.timestamp()))
            if item.newest_label_at is not None:
                label_age.add_metric(labels, max(0.0, now - item.newest_label_at.timestamp()))
        yield model_age
        yield label_age


class ServiceMetrics:
    """Requests, latency, the score distribution, the serving model, and the write path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Multiprocess mode is fixed when prometheus_client is imported (by the variable);
        # a variable set later would make /metrics read files nobody writes.
        folder = os.environ.get(MULTIPROCESS_ENV)
        self.multiprocess_dir = (
            folder
            if folder and prometheus_values.ValueClass is not prometheus_values.MutexValue
            else None
        )
        # What only this process can tell (the Info and the ages): shown beside the
        # merged files, never merged.
        self._own = r if self.multiprocess_dir is None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "crispml_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "crispml_http_request_duration_seconds",
            "Time from request to response.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.scores = Histogram(
            "crispml_score",
            "Distribution of the scores answered (and stored).",
            ["model_version"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "crispml_decisions", "Decisions answered.", ["model_version", "decision"], registry=r
        )
        self.model = Info(
            "crispml_model", "The model version currently serving.", registry=self._own
        )
        self.reloads = Counter(
            "crispml_model_reloads",
            "Model swaps and failed reload attempts.",
            ["result"],
            registry=r,
        )
        self.stored = Counter("crispml_scores_stored", "Scores committed to the store.", registry=r)
        self.commit_rows = Histogram(
            "crispml_store_commit_rows",
            "Rows per group-commit transaction.",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "crispml_store_commit_duration_seconds",
            "Duration of one group commit.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_failures = Counter(
            "crispml_store_failures",
            "Group commits that failed (their requests got 503).",
            registry=r,
        )
        self.predict_rows = Histogram(
            "crispml_predict_batch_rows",
            "Rows per batched predict_proba call.",
            buckets=ROW_BUCKETS,
            registry=r,
        )

        # Champion/challenger: the challenger scores in shadow, never answers.
        self.shadow_scores = Counter(
            "crispml_shadow_scores",
            "Challenger scores stored in shadow (never answered).",
            ["model_version"],
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "crispml_shadow_disagreements",
            "Shadow scores whose decision differs from the champion's answered one.",
            ["model_version"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "crispml_shadow_failures",
            "Challenger work that failed, in rows (load: attempts). The champion's answer "
            "never waits for it.",
            ["stage"],
            registry=r,
        )
        self.shadow_backlog = Gauge(
            "crispml_shadow_backlog_rows",
            "Rows waiting for the challenger; above the limit new ones are dropped.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.challenger_loaded = Gauge(
            "crispml_challenger_loaded",
            "1 while a challenger is scored in shadow.",
            registry=r,
            multiprocess_mode="livemax",
        )

    def watch_staleness(self, snapshot: Callable[[], list[Freshness]]) -> None:
        self._own.register(StalenessCollector(snapshot))

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged) + generate_latest(self._own)

    def close(self) -> None:
        """A worker that stops takes its live gauges with it (its counters stay counted)."""
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)
