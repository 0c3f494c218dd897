"""What the console reads from the score store and from the service's own metrics.

Read-only SQL of the console's own, kept here rather than in `pipeline.store` so the
store's writers and their tests stay untouched. Both queries are bounded (a row limit, a
window of days, aggregation in the database), since a page view must not read a
store that holds millions of batch scores.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pipeline.service.metrics import ServiceMetrics
from pipeline.store import ScoreStore, aware_utc, labelled, utcnow
from pipeline.store.schema import labels, scores

RECENT_SCORES = 25
COVERAGE_DAYS = 30
# Routes whose traffic is the console's own (its page and its polling), not the service's.
CONSOLE_PREFIX = "/console"


def recent_scores(store: ScoreStore, environment: str, limit: int = RECENT_SCORES) -> list[dict]:
    """The newest scores of the environment, answered and shadow, with lineage and label."""
    query = (
        sa.select(
            scores.c.score_id,
            scores.c.record_id,
            scores.c.frame,
            scores.c.score,
            scores.c.decision,
            scores.c.threshold,
            scores.c.model_name,
            scores.c.model_version,
            scores.c.run_id,
            scores.c.git_commit,
            scores.c.channel,
            scores.c.source,
            scores.c.shadow,
            scores.c.scored_at,
            labels.c.label,
        )
        .select_from(labelled(scores))
        .where(scores.c.environment == environment)
        .order_by(scores.c.scored_at.desc(), scores.c.score_id)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {**row, "scored_at": aware_utc(row["scored_at"]), "shadow": bool(row["shadow"])}
        for row in rows
    ]


def label_coverage(
    store: ScoreStore, environment: str, days: int = COVERAGE_DAYS, now: datetime | None = None
) -> list[dict]:
    """Answered scores per UTC day of scoring and channel, and how many have a label yet.

    Newest day first, over the last `days` days. Counted in the database.
    """
    scored_at = scores.c.scored_at
    # SQLite stores UTC text; PostgreSQL a timestamptz, whose date depends on the
    # session's time zone unless it is taken in UTC first.
    day = sa.func.date(
        scored_at if store.dialect == "sqlite" else sa.func.timezone("UTC", scored_at)
    )
    has_label = sa.case((labels.c.label.is_not(None), 1), else_=0)
    positive = sa.case((labels.c.label == 1, 1), else_=0)
    since = (now or utcnow()) - timedelta(days=days)
    query = (
        sa.select(
            day.label("day"),
            scores.c.channel,
            sa.func.count().label("scores"),
            sa.func.sum(has_label).label("labelled"),
            sa.func.sum(positive).label("positives"),
        )
        .select_from(labelled(scores))
        .where(
            scores.c.environment == environment,
            scores.c.shadow.is_(False),
            scored_at >= since,
        )
        .group_by(day, scores.c.channel)
        .order_by(day.desc(), scores.c.channel)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        total, done = int(row.scores), int(row.labelled or 0)
        out.append(
            {
                "day": str(row.day),
                "channel": row.channel,
                "scores": total,
                "labelled": done,
                "positives": int(row.positives or 0),
                "coverage": done / total if total else None,
            }
        )
    return out


# --------------------------------------------------------------------------- metrics


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class _Totals:
    requests: dict[str, dict[str, float]]  # route -> {"total", "4xx", "5xx"}
    buckets: dict[str, dict[float, float]]  # route -> {le: cumulative count}
    seconds: dict[str, float]  # route -> summed duration


def _families(metrics: ServiceMetrics) -> Any:
    """The collectors /metrics shows: with several workers sharing a port (prometheus'
    multiprocess mode, `multiprocess_dir`), the sum over all of them, as a scrape sees it;
    otherwise this process's own registry."""
    folder = getattr(metrics, "multiprocess_dir", None)
    if not folder:
        return metrics.registry.collect()
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=folder)
    return merged.collect()


def _read(metrics: ServiceMetrics) -> _Totals:
    requests: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[float, float]] = {}
    seconds: dict[str, float] = {}
    for family in _families(metrics):
        if family.name.removesuffix("_total") == "crispml_http_requests":
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                route = f"{sample.labels['method']} {sample.labels['route']}"
                entry = requests.setdefault(route, {"total": 0.0, "4xx": 0.0, "5xx": 0.0})
                entry["total"] += sample.value
                status = sample.labels.get("status", "")
                if status[:1] in ("4", "5"):
                    entry[f"{status[0]}xx"] += sample.value
        elif family.name == "crispml_http_request_duration_seconds":
            for sample in family.samples:
                route = f"{sample.labels['method']} {sample.labels['route']}"
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    per_route = buckets.setdefault(route, {})
                    per_route[le] = per_route.get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    seconds[route] = seconds.get(route, 0.0) + sample.value
    return _Totals(requests, buckets, seconds)


def _own(route: str) -> bool:
    return route.split(" ", 1)[-1].startswith(CONSOLE_PREFIX)


def _merged(buckets: dict[str, dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for route, per_route in buckets.items():
        if _own(route):
            continue
        for le, count in per_route.items():
            out[le] = out.get(le, 0.0) + count
    return out


class Traffic:
    """The service's throughput and latency, from its own Prometheus collectors.

    Counters only ever grow, so a rate needs two readings: `sample()` keeps one reading
    every `every` seconds at most (taken when the console asks, so an idle console costs
    nothing), for the last `keep` readings, and `series()` turns neighbouring readings
    into requests per second and latency percentiles of each interval. The console's own
    requests are left out of both.
    """

    def __init__(self, metrics: ServiceMetrics, every: float = 2.0, keep: int = 1800) -> None:
        self.metrics = metrics
        self.started = time.time()
        self.every = every
        self._samples: deque[tuple[float, float, dict[float, float]]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if self._samples and now - self._samples[-1][0] < self.every:
                return
            totals = _read(self.metrics)
            count = sum(v["total"] for r, v in totals.requests.items() if not _own(r))
            self._samples.append((now, count, _merged(totals.buckets)))

    def series(self) -> dict[str, list]:
        with self._lock:
            samples = list(self._samples)
        out: dict[str, list] = {"t": [], "rps": [], "p50_ms": [], "p95_ms": []}
        for (t0, n0, b0), (t1, n1, b1) in itertools.pairwise(samples):
            if t1 <= t0:
                continue
            delta = sorted((le, count - b0.get(le, 0.0)) for le, count in b1.items())
            out["t"].append(datetime.fromtimestamp(t1, UTC).isoformat(timespec="seconds"))
            out["rps"].append(round(max(0.0, n1 - n0) / (t1 - t0), 3))
            for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms")):
                value = _quantile(q, delta)
                out[key].append(None if value is None else round(value * 1000, 2))
        return out

    def summary(self) -> dict[str, Any]:
        """Totals per route since this process started, and for the service as a whole."""
        totals = _read(self.metrics)
        uptime = max(1e-9, time.time() - self.started)
        routes = []
        for route, counts in sorted(totals.requests.items()):
            if _own(route):
                continue
            ordered = sorted(totals.buckets.get(route, {}).items())
            count = counts["total"]
            routes.append(
                {
                    "route": route,
                    "requests": int(count),
                    "errors_4xx": int(counts["4xx"]),
                    "errors_5xx": int(counts["5xx"]),
                    "per_second": count / uptime,
                    "mean_ms": 1000 * totals.seconds.get(route, 0.0) / count if count else None,
                    **{
                        key: None if (v := _quantile(q, ordered)) is None else v * 1000
                        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms"))
                    },
                }
            )
        total = sum(r["requests"] for r in routes)
        merged = sorted(_merged(totals.buckets).items())
        p95 = _quantile(0.95, merged)
        return {
            "uptime_seconds": uptime,
            "requests": total,
            "per_second": total / uptime,
            "p95_ms": None if p95 is None else p95 * 1000,
            "routes": routes,
        }
