"""The score store: every score with its lineage, and the ground truth that arrives later.

One implementation for SQLite (the embedded default, in WAL mode) and PostgreSQL.
Writes are idempotent: a batch score is unique per (environment, model, version,
record) by a partial unique index (revision 0004) and inserted with ON CONFLICT DO
NOTHING, labels are upserted, so a re-run never duplicates a row. Score ids are random
for batch and online scores alike: an id must not be computable from a record id
someone knows, such as a transaction number. Online ids are uuid4; batch ids are UUIDv7
(RFC 9562: a millisecond time, then 74 random bits), because a chunk of random uuid4
keys lands all over the primary-key index, and time-ordered ones land at its end.

SQLite durability: the store runs in WAL mode with `PRAGMA synchronous=NORMAL` unless
the URL says otherwise with a `synchronous` query parameter,
`sqlite:///data/store/scores.db?synchronous=FULL`. NORMAL never corrupts the database,
but a power loss (not a crashed process) may undo the last transactions committed before
it; FULL syncs the WAL on every commit, so a committed score survives a power loss too,
at a cost per commit that bench/store_durability.py measures. The parameter travels
with the URL, so CRISPML_STORE_URL and every process that opens the store honour it.

Shadow scores (revision 0002): when a challenger runs beside the champion, the service
stores the challenger's score of every answered record as a row with `shadow` true and
`shadow_of` naming the champion's score_id. Its id is derived from that pair
(`shadow_score_id`), so it can never take the champion's id. Every reader that means
"the answered scores" leaves shadow rows out unless asked.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipeline.errors import ConfigError, CrispError, ServiceUnavailable
from pipeline.store import bulk
from pipeline.store.bulk import BATCH_CHANNEL
from pipeline.store.schema import labels, scores

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision under migrations/versions (tests/test_store.py checks it against
# Alembic's own head). A store already there is not handed to Alembic at all: importing
# and configuring Alembic costs about half a second, paid by every score and label stage.
HEAD_REVISION = "0004"
# The PostgreSQL advisory lock migrations take: a fixed 63-bit number from a fixed name.
MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"crispml.store.migrate").digest()[:8]) >> 1
SCORE_COLUMNS = [c.name for c in scores.columns]
LABEL_COLUMNS = [c.name for c in labels.columns]
# What the score stage computes per row, and what it knows per chunk (`store_batch_frame`).
BATCH_FRAME_COLUMNS = ["record_id", "score", "decision", "score_id"]
BATCH_LINEAGE = [
    "frame",
    "threshold",
    "model_name",
    "model_version",
    "run_id",
    "git_commit",
    "environment",
    "channel",
    "source",
]


def new_score_id() -> str:
    """A random id, for batch and online scores alike: unguessable from the record."""
    return uuid.uuid4().hex


def new_batch_score_ids(count: int, now_ms: int | None = None) -> list[str]:
    """`count` random UUIDv7 ids (32 hex digits) for one chunk of batch scores.

    As unguessable as uuid4 where it matters (74 random bits from the operating system's
    CSPRNG, nothing derived from the record), and ordered by time: the ids of a chunk all
    go to the right edge of the primary-key index instead of one random page each, which
    made bulk inserts of 50,000 rows 1.2-1.5x faster on both stores
    (bench/store_throughput.py).
    """
    if count <= 0:
        return []
    stamp = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) & (2**48 - 1)
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, :6] = np.frombuffer(stamp.to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    text = raw.tobytes().hex()
    return [text[i : i + 32] for i in range(0, 32 * count, 32)]


def shadow_score_id(champion_score_id: str, model_version: str) -> str:
    """The id of a challenger's shadow score of the answered score `champion_score_id`.

    Derived, so storing the same shadow twice is a no-op, and namespaced with "shadow",
    so it is never the id of an answered score (a random uuid). Derived from a random
    id, it is as unguessable as that id.
    """
    key = f"{champion_score_id}|{model_version}|shadow"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware_utc(value: Any) -> Any:
    """A time as aware UTC, a naive one taken as UTC: every writer of the store writes
    UTC, and SQLite hands stored times back naive. Anything else passes unchanged."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def as_utc(values: pd.Series) -> pd.Series:
    """Stored times as aware UTC: SQLite hands back naive ones (the store writes UTC)."""
    return pd.to_datetime(values, utc=True)


def labelled(source: Any, record: Any = None) -> sa.Join:
    """`source` left-joined with the label, if any, of the record scored in `record`.

    `record` is the scores table or an alias of it, and defaults to `source` itself.
    """
    record = source if record is None else record
    return source.outerjoin(
        labels,
        sa.and_(
            labels.c.environment == record.c.environment,
            labels.c.record_id == record.c.record_id,
        ),
    )


def _narrowed(
    query: sa.Select,
    table: Any,
    *,
    equal: dict[str, Any],
    scored_from: datetime | None,
    scored_to: datetime | None,
    labeled_only: bool,
) -> sa.Select:
    """The filters every score reader offers; a None value means "any".

    Versions are compared as text because the registry hands them out as strings.
    """
    for column, value in equal.items():
        if value is not None:
            query = query.where(
                table.c[column] == (str(value) if column == "model_version" else value)
            )
    if scored_from is not None:
        query = query.where(table.c.scored_at >= scored_from)
    if scored_to is not None:
        query = query.where(table.c.scored_at < scored_to)
    if labeled_only:
        query = query.where(labels.c.label.is_not(None))
    return query


# Columns a writer may leave out: every row of one INSERT must name the same columns.
_SCORE_DEFAULTS = {"shadow": False, "shadow_of": None}
ONLINE_CHANNEL = "api"


# SQLite's `synchronous` levels a store may ask for. OFF is left out: it trades the
# database's integrity, not only its newest commits, for speed.
SQLITE_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
DEFAULT_SQLITE_SYNCHRONOUS = "NORMAL"


def sqlite_synchronous(url: sa.URL) -> tuple[sa.URL, str]:
    """The URL without its `synchronous` query parameter, and the level it asked for.

    The parameter is the store's, not the driver's (sqlite3.connect would refuse it),
    so it is taken off before the engine sees the URL.
    """
    raw = url.query.get("synchronous", DEFAULT_SQLITE_SYNCHRONOUS)
    if isinstance(raw, tuple):  # ?synchronous=A&synchronous=B
        raise ConfigError(f"score store URL: synchronous given {len(raw)} times")
    level = raw.upper()
    if level not in SQLITE_SYNCHRONOUS:
        raise ConfigError(
            f"score store URL: synchronous={raw!r} is not one of "
            f"{', '.join(SQLITE_SYNCHRONOUS)} (FULL survives a power loss, NORMAL is the "
            "default)"
        )
    return url.difference_update_query(["synchronous"]), level


def _sqlite_pragmas(synchronous: str):
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return on_connect


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, **kwargs)
    parsed, synchronous = sqlite_synchronous(parsed)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, **kwargs)
    sa.event.listen(engine, "connect", _sqlite_pragmas(synchronous))
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

    @property
    def sqlite_synchronous(self) -> str | None:
        """The `synchronous` level this SQLite store asked for; None on PostgreSQL."""
        if self.dialect != "sqlite":
            return None
        return sqlite_synchronous(sa.make_url(self.url))[1]

    def migrate(self) -> str:
        """Bring the schema to the newest Alembic revision; returns that revision.

        Every replica of the service migrates at start-up. On PostgreSQL the upgrade runs
        under a transaction-scoped advisory lock, so replicas starting together take
        turns: the first migrates, the others find the schema at head. Without it two of
        them create the same tables at once and one crashes.
        """
        if self.revision() == HEAD_REVISION:
            return HEAD_REVISION
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                    )
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            with self.engine.connect() as connection:
                return str(MigrationContext.configure(connection).get_current_revision())
        except sa.exc.OperationalError as exc:
            raise ServiceUnavailable(f"score store {self.safe_url}: {exc.orig}") from None

    def revision(self) -> str | None:
        """The schema's Alembic revision as stored, None for a store never migrated."""
        try:
            with self.engine.connect() as connection:
                if not sa.inspect(connection).has_table("alembic_version"):
                    return None
                found = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
                versions = [row[0] for row in found]
        except sa.exc.OperationalError as exc:
            raise ServiceUnavailable(f"score store {self.safe_url}: {exc.orig}") from None
        # Alembic keeps one row per head; anything but exactly one is Alembic's to sort out.
        return str(versions[0]) if len(versions) == 1 else None

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
        """Insert in one transaction; a row already stored is skipped. Returns rows added.

        "Already stored" is any unique key: the score_id (a shadow score stored twice),
        or, for a batch score, its record scored by the same model version in the same
        environment (`ux_scores_batch_record`).
        """
        if not rows:
            return 0
        if connection is not None:
            return len(self._insert_returning(connection, rows))
        with self.engine.begin() as conn:
            return len(self._insert_returning(conn, rows))

    def _insert_returning(self, connection: sa.Connection, rows: Sequence[dict[str, Any]]) -> set:
        if any(key not in row for row in rows for key in _SCORE_DEFAULTS):
            rows = [{**_SCORE_DEFAULTS, **row} for row in rows]
        # No conflict target: a conflict on either unique key skips the row (PostgreSQL
        # and SQLite alike), where a named target would raise on the other one. RETURNING
        # yields exactly the rows added; rowcount is -1 for executemany on psycopg.
        statement = (
            _insert(self.dialect, scores).on_conflict_do_nothing().returning(scores.c.score_id)
        )
        return {row.score_id for row in connection.execute(statement, list(rows))}

    def store_batch_frame(
        self, scored: pd.DataFrame, lineage: Mapping[str, Any], scored_at: datetime
    ) -> tuple[int, list[str]]:
        """Store one scored chunk once per record; rows added and, per row, its stored id.

        `scored` is what the score stage computed (record_id, score, decision, score_id);
        `lineage` and `scored_at` are the chunk's constants, sent once rather than once
        per row. A record this model version already scored in this environment is not
        stored again, and its id in the answer is the stored one, not the new random id
        it came with: a receipt must name scores that exist. One transaction; a failure
        anywhere in it, including a row neither stored nor found, stores nothing.
        """
        missing = [c for c in BATCH_FRAME_COLUMNS if c not in scored.columns]
        unknown = set(lineage) - set(BATCH_LINEAGE)
        absent = set(BATCH_LINEAGE) - set(lineage)
        if missing or unknown or absent:
            raise CrispError(
                "store_batch_frame: "
                + "; ".join(
                    part
                    for part in (
                        f"scored lacks {missing}" if missing else "",
                        f"lineage lacks {sorted(absent)}" if absent else "",
                        f"lineage has unknown {sorted(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        if lineage["channel"] != BATCH_CHANNEL:
            raise CrispError("store_batch_frame takes batch scores only (channel 'batch')")
        per_row = bulk.frame_columns(scored, {c: bulk.SCORE_KINDS[c] for c in BATCH_FRAME_COLUMNS})
        constants = {**lineage, **_SCORE_DEFAULTS, "scored_at": scored_at}
        return self._store_batch(per_row, constants)

    def _store_batch(
        self, per_row: dict[str, list[Any]], constants: dict[str, Any]
    ) -> tuple[int, list[str]]:
        """One chunk in one transaction: straight in when it is new, else through staging."""
        try:
            with self.engine.begin() as conn:
                return bulk.store_batch(conn, per_row, constants, direct=True)
        except bulk.DirectInsertRefused:
            # Rolled back by now; the staging path stores what is new and names the rest.
            with self.engine.begin() as conn:
                return bulk.store_batch(conn, per_row, constants)

    def store_batch_scores(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[str]]:
        """`store_batch_frame` for rows as dicts, for callers that have them.

        The rows of one chunk share their lineage and time, which then go once; a column
        that differs between rows is staged per row. One transaction.
        """
        if not rows:
            return 0, []
        if any(row.get("channel") != BATCH_CHANNEL for row in rows):
            raise CrispError("store_batch_scores takes batch scores only (channel 'batch')")
        try:
            columns = {
                name: [row.get(name, default) for row in rows]
                if name in _SCORE_DEFAULTS
                else [row[name] for row in rows]
                for name, default in ((c, _SCORE_DEFAULTS.get(c)) for c in SCORE_COLUMNS)
            }
        except KeyError as error:
            raise CrispError(f"store_batch_scores: a row lacks {error}") from None
        columns["scored_at"] = [aware_utc(v) for v in columns["scored_at"]]
        per_row, constants = bulk.split_constant(columns)
        per_row = {
            name: bulk.column_values(pd.Series(values, dtype=object), bulk.SCORE_KINDS[name], name)
            for name, values in per_row.items()
        }
        return self._store_batch(per_row, constants)

    def upsert_labels_frame(self, labels: pd.DataFrame) -> int:
        """Insert or overwrite ground truth; the newest word on a record wins.

        Within the frame the last row of a record is its newest word: PostgreSQL refuses
        to update one row twice in a statement, so the others never reach it. One
        transaction. Returns the number of records written.
        """
        missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
        if missing:
            raise CrispError(f"upsert_labels_frame: labels lack {missing}")
        newest = labels.drop_duplicates(["environment", "record_id"], keep="last")
        if newest.empty:
            return 0
        per_row = bulk.frame_columns(newest, bulk.LABEL_KINDS)
        with self.engine.begin() as conn:
            return bulk.upsert_labels(conn, per_row)

    def upsert_labels(self, rows: Iterable[dict[str, Any]]) -> int:
        """`upsert_labels_frame` for rows as dicts, for callers that have them."""
        rows = list({(r["environment"], r["record_id"]): r for r in rows}.values())
        if not rows:
            return 0
        frame = pd.DataFrame(
            {
                name: [aware_utc(r[name]) for r in rows]
                if name == "labeled_at"
                else [r[name] for r in rows]
                for name in LABEL_COLUMNS
            }
        )
        return self.upsert_labels_frame(frame)

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
            .select_from(labelled(scores))
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
        shadow: bool | None = False,
    ) -> pd.DataFrame:
        """Stored scores joined with their labels: the input of every verification.

        `shadow=False` (the default) reads the answered scores only, True the
        challengers' shadow scores only, None both (`online_scores_with_labels` has the
        flag as a column).
        """
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
            .select_from(labelled(scores))
            .where(scores.c.environment == environment)
        )
        if frames is not None:
            query = query.where(scores.c.frame.in_(list(frames)))
        query = _narrowed(
            query,
            scores,
            equal={
                "shadow": shadow,
                "model_name": model_name,
                "model_version": model_version,
                "frame": frame,
            },
            scored_from=scored_from,
            scored_to=scored_to,
            labeled_only=labeled_only,
        )
        with self.engine.connect() as conn:
            return pd.read_sql_query(query, conn)

    def online_scores_with_labels(
        self,
        environment: str,
        model_name: str,
        model_version: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        shadow: bool | None = None,
        labeled_only: bool = True,
    ) -> pd.DataFrame:
        """The online (service) scores of one model version, joined with their labels.

        Online means scored by the service (channel "api"), as opposed to the batch score
        stage. Rows are scored at `since` or later and before `until` (UTC); with
        `labeled_only` only scores whose record has a label. `shadow=None` returns both
        the version's answered scores and its shadow scores (as a challenger), False or
        True one kind. Columns, one row per score, sorted by scoring time:

        score_id, record_id, day (UTC date of scoring, a `datetime.date`), frame (None
        for the service unless it was given), scored_at (aware UTC), score, decision,
        threshold, shadow (bool), label (0/1; NaN when unlabelled).

        Group by `day` (or `frame`) for verification per day or per frame.
        """
        query = (
            sa.select(
                scores.c.score_id,
                scores.c.record_id,
                scores.c.frame,
                scores.c.scored_at,
                scores.c.score,
                scores.c.decision,
                scores.c.threshold,
                scores.c.shadow,
                labels.c.label,
            )
            .select_from(labelled(scores))
            .where(
                scores.c.environment == environment,
                scores.c.model_name == model_name,
                scores.c.model_version == str(model_version),
                scores.c.channel == ONLINE_CHANNEL,
            )
            .order_by(scores.c.scored_at, scores.c.score_id)
        )
        query = _narrowed(
            query,
            scores,
            equal={"shadow": shadow},
            scored_from=since,
            scored_to=until,
            labeled_only=labeled_only,
        )
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(query, conn)
        frame["scored_at"] = as_utc(frame["scored_at"])
        frame["shadow"] = frame["shadow"].astype(bool)
        frame.insert(2, "day", frame["scored_at"].dt.date)
        return frame

    def shadow_pairs(
        self,
        environment: str,
        model_name: str,
        *,
        champion_version: str | None = None,
        challenger_version: str | None = None,
        scored_from: datetime | None = None,
        scored_to: datetime | None = None,
        labeled_only: bool = False,
    ) -> pd.DataFrame:
        """Each shadow score beside the answered score it shadows, with the record's label.

        One row per pair, the same record scored in the same request by both models.
        Columns: score_id (the champion's), record_id, scored_at (aware UTC),
        champion_version, champion_score, champion_decision, challenger_version,
        challenger_score, challenger_decision, label (NaN when unlabelled).
        """
        champion = scores.alias("champion")
        challenger = scores.alias("challenger")
        pair = champion.join(challenger, champion.c.score_id == challenger.c.shadow_of)
        join = labelled(pair, record=champion)
        query = (
            sa.select(
                champion.c.score_id,
                champion.c.record_id,
                champion.c.scored_at,
                champion.c.model_version.label("champion_version"),
                champion.c.score.label("champion_score"),
                champion.c.decision.label("champion_decision"),
                challenger.c.model_version.label("challenger_version"),
                challenger.c.score.label("challenger_score"),
                challenger.c.decision.label("challenger_decision"),
                labels.c.label,
            )
            .select_from(join)
            .where(
                challenger.c.environment == environment,
                challenger.c.model_name == model_name,
                challenger.c.shadow.is_(True),
            )
            .order_by(champion.c.scored_at, champion.c.score_id)
        )
        if challenger_version is not None:
            query = query.where(challenger.c.model_version == str(challenger_version))
        query = _narrowed(
            query,
            champion,
            equal={"model_version": champion_version},
            scored_from=scored_from,
            scored_to=scored_to,
            labeled_only=labeled_only,
        )
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(query, conn)
        frame["scored_at"] = as_utc(frame["scored_at"])
        return frame

    def newest_label_at(
        self,
        environment: str,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        channel: Literal["api", "batch"] | None = None,
    ) -> datetime | None:
        """When the newest label arrived: of the environment, or (given a model and
        version) of a record that version scored. None when no label arrived yet."""
        query = sa.select(sa.func.max(labels.c.labeled_at)).where(
            labels.c.environment == environment
        )
        if model_name is not None or model_version is not None or channel is not None:
            scored = sa.select(scores.c.record_id).where(scores.c.environment == environment)
            if model_name is not None:
                scored = scored.where(scores.c.model_name == model_name)
            if model_version is not None:
                scored = scored.where(scores.c.model_version == str(model_version))
            if channel is not None:
                scored = scored.where(scores.c.channel == channel)
            query = query.where(labels.c.record_id.in_(scored))
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        if value is None:
            return None
        if isinstance(value, str):  # SQLite's max() of a DateTime column is text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def dispose(self) -> None:
        self.engine.dispose()
