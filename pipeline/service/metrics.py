"""Prometheus collectors of one service instance.

Each app gets its own `CollectorRegistry` instead of the process-global one, so two
apps in one process (tests, or a bench harness) never collide on metric names, and
/metrics shows exactly this service.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Requests, latency, the score distribution, the serving model, and the write path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "crispml_http_requests", "HTTP requests answered.", ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "crispml_http_request_duration_seconds", "Time from request to response.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.scores = Histogram(
            "crispml_score", "Distribution of the scores answered (and stored).",
            ["model_version"], buckets=SCORE_BUCKETS, registry=r,
        )
        self.decisions = Counter(
            "crispml_decisions", "Decisions answered.", ["model_version", "decision"], registry=r
        )
        self.model = Info("crispml_model", "The model version currently serving.", registry=r)
        self.reloads = Counter(
            "crispml_model_reloads", "Model swaps and failed reload attempts.", ["result"],
            registry=r,
        )
        self.stored = Counter("crispml_scores_stored", "Scores committed to the store.", registry=r)
        self.commit_rows = Histogram(
            "crispml_store_commit_rows", "Rows per group-commit transaction.",
            buckets=ROW_BUCKETS, registry=r,
        )
        self.commit_seconds = Histogram(
            "crispml_store_commit_duration_seconds", "Duration of one group commit.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.store_failures = Counter(
            "crispml_store_failures", "Group commits that failed (their requests got 503).",
            registry=r,
        )
        self.predict_rows = Histogram(
            "crispml_predict_batch_rows", "Rows per batched predict_proba call.",
            buckets=ROW_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
