"""The score store: every score with its lineage, and the ground truth that arrives later.

One implementation for SQLite (the embedded default, in WAL mode) and PostgreSQL.
Writes are idempotent: batch scores have deterministic ids and are inserted with
ON CONFLICT DO NOTHING, labels are upserted, so a re-run never duplicates a row.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pipeline.errors import ServiceUnavailable
from pipeline.store.schema import labels, scores

MIGRATIONS = Path(__file__).with_name("migrations")
SCORE_COLUMNS = [c.name for c in scores.columns]


def batch_score_id(environment: str, model_name: str, model_version: str, record_id: str) -> str:
    """Same record, same model, same environment: same id. That is what makes re-runs no-ops."""
    key = f"{environment}|{model_name}|{model_version}|{record_id}|batch"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def new_score_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _insert(dialect: str, table: sa.Table):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ServiceUnavailable(f"score store: dialect {dialect!r} is not supported")
    return insert(table)


class ScoreStore:
    """A thin, typed door to the two tables; the only code that writes SQL for them."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> str:
        """Bring the schema to the newest Alembic revision; returns that revision."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            with self.engine.connect() as connection:
                return str(MigrationContext.configure(connection).get_current_revision())
        except sa.exc.OperationalError as exc:
            raise ServiceUnavailable(f"score store {self.safe_url}: {exc.orig}") from None

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def insert_scores(
        self, rows: Sequence[dict[str, Any]], connection: sa.Connection | None = None
    ) -> int:
        """Insert in one transaction; rows whose score_id exists are skipped. Returns rows added."""
        if not rows:
            return 0
        # RETURNING yields exactly the rows added (a conflict returns nothing); rowcount
        # is -1 for executemany on psycopg, so it cannot be trusted across drivers.
        statement = (
            _insert(self.dialect, scores)
            .on_conflict_do_nothing(index_elements=["score_id"])
            .returning(scores.c.score_id)
        )
        if connection is not None:
            return len(connection.execute(statement, list(rows)).all())
        with self.engine.begin() as conn:
            return len(conn.execute(statement, list(rows)).all())

    def upsert_labels(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert or overwrite ground truth; the newest word on a record wins."""
        # One row per record: PostgreSQL refuses to update the same row twice in one
        # statement, and within one call the last word is the one that counts.
        rows = list({(r["environment"], r["record_id"]): r for r in rows}.values())
        if not rows:
            return 0
        insert = _insert(self.dialect, labels)
        statement = insert.on_conflict_do_update(
            index_elements=["environment", "record_id"],
            set_={
                "label": insert.excluded.label,
                "source": insert.excluded.source,
                "labeled_at": insert.excluded.labeled_at,
            },
        )
        with self.engine.begin() as conn:
            conn.execute(statement, rows)
        return len(rows)

    def record_ids_for_scores(self, score_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """score_id -> (environment, record_id), for labels that arrive by score id."""
        if not score_ids:
            return {}
        query = sa.select(scores.c.score_id, scores.c.environment, scores.c.record_id).where(
            scores.c.score_id.in_(list(score_ids))
        )
        with self.engine.connect() as conn:
            return {row.score_id: (row.environment, row.record_id) for row in conn.execute(query)}

    def get_score(self, score_id: str) -> dict[str, Any] | None:
        query = (
            sa.select(scores, labels.c.label, labels.c.labeled_at)
            .select_from(
                scores.outerjoin(
                    labels,
                    sa.and_(
                        labels.c.environment == scores.c.environment,
                        labels.c.record_id == scores.c.record_id,
                    ),
                )
            )
            .where(scores.c.score_id == score_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def count_scores(self, **filters: Any) -> int:
        query = sa.select(sa.func.count()).select_from(scores)
        for column, value in filters.items():
            query = query.where(scores.c[column] == value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def scores_with_labels(
        self,
        environment: str,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        frame: int | None = None,
        frames: Sequence[int] | None = None,
        scored_from: datetime | None = None,
        scored_to: datetime | None = None,
        labeled_only: bool = True,
    ) -> pd.DataFrame:
        """Stored scores joined with their labels: the input of every verification."""
        join = scores.outerjoin(
            labels,
            sa.and_(
                labels.c.environment == scores.c.environment,
                labels.c.record_id == scores.c.record_id,
            ),
        )
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
                scores.c.scored_at,
                labels.c.label,
            )
            .select_from(join)
            .where(scores.c.environment == environment)
        )
        if model_name is not None:
            query = query.where(scores.c.model_name == model_name)
        if model_version is not None:
            query = query.where(scores.c.model_version == str(model_version))
        if frame is not None:
            query = query.where(scores.c.frame == frame)
        if frames is not None:
            query = query.where(scores.c.frame.in_(list(frames)))
        if scored_from is not None:
            query = query.where(scores.c.scored_at >= scored_from)
        if scored_to is not None:
            query = query.where(scores.c.scored_at < scored_to)
        if labeled_only:
            query = query.where(labels.c.label.is_not(None))
        with self.engine.connect() as conn:
            return pd.read_sql_query(query, conn)

    def dispose(self) -> None:
        self.engine.dispose()
