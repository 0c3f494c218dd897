"""GET /v1/report: realised quality of the stored scores of a window, against their labels.

Blocking work (database reads, Evidently), run by the route in a worker thread, one
report at a time. Nothing here speaks HTTP: the route turns `NoReport` into a 404 and
an HTML page (a str) into an HTML answer.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pipeline.service.contract import OnlineDay, QualityReport, ShadowReport
from pipeline.service.state import ServiceState
from pipeline.store.schema import labels as labels_table
from pipeline.store.schema import scores as scores_table


class NoReport(Exception):
    """An HTML report was asked for, and the window gives none (no labelled scores, or
    Evidently could not build one)."""


def _online_days(
    state: ServiceState, start: datetime | None, end: datetime | None
) -> list[OnlineDay]:
    """The serving versions' online scores per UTC day of scoring, answered and shadow apart."""
    from pipeline.evidence import pr_auc

    out: list[OnlineDay] = []
    seen: set[tuple[str, str]] = set()
    for _role, model in state.roles():
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


def build_report(
    state: ServiceState, start: datetime, end: datetime, output: str
) -> QualityReport | str:
    """Blocking: read the window's scores and labels, summarise with Evidently; for
    `output` html, Evidently's page as text.

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
        raise NoReport("no labelled scores in this window: nothing to report")
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
                raise NoReport(f"no HTML report for this window: {summary.get('reason')}")
            return path.read_text(encoding="utf-8")
    fields = set(QualityReport.model_fields) - set(base)
    return QualityReport(**base, **{k: v for k, v in summary.items() if k in fields})
