"""Bulk writes of batch scores and labels: a whole chunk through a staging table.

SQLAlchemy's compiled executemany costs about as much per row as the score itself, and
the stages built one dict per row before that. Here the columns that vary per row
go into a temporary staging table by the driver's fastest path (COPY on PostgreSQL,
`executemany` of tuples on SQLite), the per-chunk constants (lineage, time) travel once
as parameters, and one `INSERT ... SELECT` moves the chunk into its table. Everything
happens on the caller's connection, so it is one transaction with the rest of the chunk.

A chunk none of whose records is stored yet (every first run) skips the staging table:
its rows go straight into `scores`, by COPY on PostgreSQL and one INSERT ... SELECT over
a JSON array of the rows on SQLite, with no conflict handling to pay for. Should a row
conflict after all (a concurrent writer, a repeated record in the chunk), the database
refuses the direct insert, the caller's transaction rolls back, and `store_batch` runs
again through the staging table, whose ON CONFLICT sorts it out (`DirectInsertRefused`).

Names in the SQL come from the schema (`pipeline.store.schema`) and the fixed staging
table names below, never from the data; every value is a parameter or COPY data.

Times travel as UTC text, `YYYY-MM-DD HH:MM:SS.ffffff`: exactly what SQLAlchemy stores
for an aware UTC datetime on SQLite, and cast to `timestamptz` as UTC on PostgreSQL, so
both paths store the same instant to the microsecond.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipeline.errors import CrispError
from pipeline.store.schema import labels, scores

STAGE_SCORES = "crispml_stage_scores"
STAGE_LABELS = "crispml_stage_labels"
BATCH_CHANNEL = "batch"
# The key of `ux_scores_batch_record` beside its predicate channel = 'batch'.
BATCH_KEY = ("environment", "model_name", "model_version")


class DirectInsertRefused(CrispError):
    """The direct insert of a chunk met a row already stored: retry it through staging.

    Raised inside the caller's transaction, which must roll back (the database has
    refused the statement) before the chunk is written again with `direct=False`.
    """


# How each kind of column is staged and cast on PostgreSQL: (staging type, target cast).
_PG_KIND = {
    "text": ("text", "text"),
    "int": ("int8", "integer"),
    "float": ("float8", "double precision"),
    "bool": ("bool", "boolean"),
    "time": ("text", "timestamptz"),
}


# The binary COPY type of each kind, as the columns of `scores` and `labels` declare them.
_PG_COPY_TYPE = {
    "text": "text",
    "int": "int4",
    "float": "float8",
    "bool": "bool",
    "time": "timestamptz",
}


def _kind(column: sa.Column) -> str:
    """The column's kind, read off the schema so that a new column is staged right."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return "time"
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, sa.Float):
        return "float"
    if isinstance(kind, sa.Integer):
        return "int"
    if isinstance(kind, sa.String):
        return "text"
    raise TypeError(f"score store: no bulk path for column {column.name} of type {kind}")


SCORE_KINDS = {c.name: _kind(c) for c in scores.columns}
LABEL_KINDS = {c.name: _kind(c) for c in labels.columns}


# --------------------------------------------------------------------------- values


def utc_text(value: datetime) -> str:
    """One time as the store's UTC text; a naive time is refused, it names no instant."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CrispError(f"score store: {value!r} is not a timezone-aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def utc_texts(values: pd.Series, name: str) -> list[str | None]:
    """A column of times as the store's UTC text (None where missing), vectorised.

    Aware values only: a naive time would be stored as whatever clock wrote it.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        aware = values
    else:
        if pd.api.types.is_datetime64_dtype(values.dtype):
            raise CrispError(f"score store: column {name} holds naive times; give them a zone")
        present = values.dropna()
        if any(getattr(v, "tzinfo", None) is None for v in present):
            raise CrispError(f"score store: column {name} holds values that are not aware times")
        aware = pd.to_datetime(values, utc=True)
    micros = aware.dt.tz_convert(UTC).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    missing = aware.isna().to_numpy()
    if len(micros) and not missing.any() and micros.min() == micros.max():
        # One time for the whole frame (an import's "now"): formatted once.
        return [str(np.datetime_as_string(micros[0], unit="us")).replace("T", " ")] * len(micros)
    text = np.strings.replace(np.datetime_as_string(micros, unit="us"), "T", " ").tolist()
    if missing.any():
        for index in np.flatnonzero(missing):
            text[index] = None
    return text


def column_values(values: pd.Series, kind: str, name: str) -> list[Any]:
    """A frame's column as the Python values the drivers take, None for missing.

    pandas' missing markers (NaN, NaT, pd.NA) would otherwise reach the database as a
    float NaN or the text 'NaT' instead of NULL, and slip past NOT NULL.
    """
    if kind == "time":
        return utc_texts(values, name)
    if kind == "int" and not pd.api.types.is_integer_dtype(values.dtype):
        try:
            values = values.astype("Int64")  # refuses 0.5, keeps 1.0 as 1
        except (TypeError, ValueError) as error:
            raise CrispError(f"score store: column {name} is not integer: {error}") from None
    elif kind == "float" and not pd.api.types.is_float_dtype(values.dtype):
        try:
            values = values.astype("float64")
        except (TypeError, ValueError) as error:
            raise CrispError(f"score store: column {name} is not numeric: {error}") from None
    if kind != "float" and values.isna().any():
        # Float NaN stays: SQLite binds it as NULL, PostgreSQL stores NaN, as before.
        values = values.astype(object).where(values.notna(), None)
    out = values.tolist()
    if kind == "text" and not isinstance(values.dtype, pd.StringDtype):
        # A version given as 3 is the text '3', as the column's type made it before.
        out = [v if v is None or isinstance(v, str) else str(v) for v in out]
    return out


def constant_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "time":
        return utc_text(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return str(value)


# --------------------------------------------------------------------------- dialects


class _Dialect:
    """The few places where SQLite and PostgreSQL differ: staging, placeholders, casts."""

    name: str
    temp: str

    def __init__(self, connection: sa.Connection) -> None:
        self.raw = connection.connection.driver_connection

    def param(self, name: str, kind: str) -> str:
        raise NotImplementedError

    def staged(self, column: str, kind: str) -> str:
        raise NotImplementedError

    def stage(self, table: str, kinds: Mapping[str, str], rows: list[tuple], names: list[str]):
        raise NotImplementedError

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple]:
        raise NotImplementedError

    def drop(self, table: str) -> None:
        raise NotImplementedError

    def insert_direct(
        self,
        table: str,
        kinds: Mapping[str, str],
        per_row: Mapping[str, list[Any]],
        constants: Mapping[str, Any],
    ) -> None:
        """A chunk straight into `table`, in input order: every column of `kinds` is
        either a list in `per_row` or one value in `constants`."""
        raise NotImplementedError


class _SQLite(_Dialect):
    name = "sqlite"
    temp = "temp."

    def param(self, name: str, kind: str) -> str:
        # No cast: the target column's affinity converts, as it does for the dict path.
        return f":{name}"

    def staged(self, column: str, kind: str) -> str:
        return f"st.{column}"

    def stage(self, table: str, kinds: Mapping[str, str], rows: list[tuple], names: list[str]):
        cursor = self.raw.cursor()
        try:
            # Untyped columns: a value keeps its type until the target column's affinity
            # converts it, once, as an INSERT straight into that table would.
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {table} ({', '.join(['ord', *kinds])})"
            )
            cursor.execute(f"DELETE FROM temp.{table}")
            cursor.executemany(
                f"INSERT INTO temp.{table} ({', '.join(names)}) "
                f"VALUES ({', '.join('?' for _ in names)})",
                rows,
            )
        finally:
            cursor.close()

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple]:
        cursor = self.raw.cursor()
        try:
            return cursor.execute(sql, dict(params)).fetchall()
        finally:
            cursor.close()

    def drop(self, table: str) -> None:
        # The table stays for the connection's next chunk; its rows go with this one.
        self.raw.execute(f"DELETE FROM temp.{table}")

    def insert_direct(
        self,
        table: str,
        kinds: Mapping[str, str],
        per_row: Mapping[str, list[Any]],
        constants: Mapping[str, Any],
    ) -> None:
        # One statement for the whole chunk: the per-row columns travel as one JSON
        # array of rows that SQLite's json_each walks in C, the constants as plain
        # parameters. An executemany binds all sixteen columns again for every row,
        # which cost about a third of the insert (bench/store_throughput.py).
        # json_extract gives back text, integer and real as they went in (a float's
        # shortest repr parses back to the same double) and JSON null as NULL.
        position = {name: index for index, name in enumerate(per_row)}
        values = ", ".join(
            f"json_extract(j.value, '$[{position[name]}]')" if name in per_row else f":{name}"
            for name in kinds
        )
        params = {
            name: constant_value(constants.get(name), kind)
            for name, kind in kinds.items()
            if name not in per_row
        }
        params["rows"] = _json_rows(per_row, kinds)
        cursor = self.raw.cursor()
        try:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(kinds)}) "
                f"SELECT {values} FROM json_each(:rows) AS j ORDER BY j.key",
                params,
            )
        finally:
            cursor.close()


class _PostgreSQL(_Dialect):
    name = "postgresql"
    temp = "pg_temp."

    def param(self, name: str, kind: str) -> str:
        # A bare parameter in a SELECT list is text to PostgreSQL (NULL included), which
        # an integer or boolean column refuses: say what it is.
        return self._cast(f"%({name})s", kind)

    def staged(self, column: str, kind: str) -> str:
        return self._cast(f"st.{column}", kind) if kind == "time" else f"st.{column}"

    @staticmethod
    def _cast(value: str, kind: str) -> str:
        if kind == "time":
            # UTC text read as UTC, whatever the session's TimeZone: a plain cast to
            # timestamptz would read it in the session's zone.
            return f"(CAST({value} AS timestamp) AT TIME ZONE 'UTC')"
        return f"CAST({value} AS {_PG_KIND[kind][1]})"

    def stage(self, table: str, kinds: Mapping[str, str], rows: list[tuple], names: list[str]):
        types = {"ord": "int8", **{c: _PG_KIND[k][0] for c, k in kinds.items()}}
        with self.raw.cursor() as cursor:
            # Dropped at commit or rollback: nothing of it outlives the transaction.
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {table} "
                f"({', '.join(f'{c} {t}' for c, t in types.items())}) ON COMMIT DROP"
            )
            cursor.execute(f"TRUNCATE pg_temp.{table}")
            statement = f"COPY pg_temp.{table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
            with cursor.copy(statement) as copy:
                copy.set_types([types[n] for n in names])
                for row in rows:
                    copy.write_row(row)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple]:
        with self.raw.cursor() as cursor:
            cursor.execute(sql, dict(params))
            return cursor.fetchall() if cursor.description else []

    def drop(self, table: str) -> None:
        with self.raw.cursor() as cursor:
            cursor.execute(f"DROP TABLE pg_temp.{table}")

    def insert_direct(
        self,
        table: str,
        kinds: Mapping[str, str],
        per_row: Mapping[str, list[Any]],
        constants: Mapping[str, Any],
    ) -> None:
        # Binary COPY wants each value in its column's own type: integer columns are
        # int4 here, and times go as aware datetimes (see `_copy_rows`).
        types = [_PG_COPY_TYPE[kind] for kind in kinds.values()]
        rows = _copy_rows(kinds, per_row, constants)
        statement = f"COPY {table} ({', '.join(kinds)}) FROM STDIN (FORMAT BINARY)"
        with self.raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


def dialect_of(connection: sa.Connection) -> _Dialect:
    name = connection.dialect.name
    if name == "sqlite":
        return _SQLite(connection)
    if name == "postgresql":
        return _PostgreSQL(connection)
    raise CrispError(f"score store: no bulk path for dialect {name!r}")


@contextmanager
def translated(connection: sa.Connection, what: str) -> Iterator[None]:
    """Driver errors as SQLAlchemy's (IntegrityError, OperationalError, ...).

    The bulk path talks to the driver directly; its callers, and the service's error
    handling, know the errors SQLAlchemy raises for the same refusal on the dict path.
    """
    dbapi = connection.dialect.dbapi
    try:
        yield
    except dbapi.Error as error:
        raise sa.exc.DBAPIError.instance(
            what, None, error, dbapi.Error, dialect=connection.dialect
        ) from error


# --------------------------------------------------------------------------- writers


def store_batch(
    connection: sa.Connection,
    per_row: Mapping[str, list[Any]],
    constants: Mapping[str, Any],
    *,
    direct: bool = False,
) -> tuple[int, list[str]]:
    """Store batch scores once each on `connection`; rows added and the stored ids.

    `per_row` holds the columns that vary (Python values, times as UTC text), one list
    per column in input order, `score_id` and `record_id` among them; `constants` the
    rest, each with one value for the whole chunk. Together they name every column.

    Rows go in input order, so of two rows of one record the first is stored and the
    second answers with its id, as one executemany would have it. A row whose record
    this model version already scored here answers with the stored id. A row neither
    stored nor found (its score id taken by another record) raises, and the caller's
    transaction stores nothing.

    `direct=True` first tries the chunk as plain inserts, skipping the staging table,
    when its first record is not stored yet. A conflict then raises
    `DirectInsertRefused`: roll the transaction back and call again without `direct`.
    """
    if set(per_row) & set(constants) or set(per_row) | set(constants) != set(SCORE_KINDS):
        raise CrispError(
            "score store: a bulk write names each column once, per row or per chunk: "
            f"per row {sorted(per_row)}, per chunk {sorted(constants)}"
        )
    if constants.get("channel", BATCH_CHANNEL) != BATCH_CHANNEL or (
        "channel" in per_row and any(c != BATCH_CHANNEL for c in per_row["channel"])
    ):
        raise CrispError("score store: the batch path takes batch scores only (channel 'batch')")
    ids = [str(score_id) for score_id in per_row["score_id"]]
    count = len(ids)
    if count == 0:
        return 0, []
    db = dialect_of(connection)
    if direct and _none_stored(db, per_row, constants):
        try:
            with translated(connection, "bulk insert of batch scores"):
                db.insert_direct("scores", SCORE_KINDS, per_row, constants)
        except sa.exc.IntegrityError as error:
            raise DirectInsertRefused(f"score store: direct insert refused: {error.orig}") from None
        return count, ids
    with translated(connection, "bulk insert of batch scores"):
        return _store_batch(db, per_row, constants, ids)


def _none_stored(
    db: _Dialect, per_row: Mapping[str, list[Any]], constants: Mapping[str, Any]
) -> bool:
    """Whether the chunk's first record is not stored yet for its model version.

    A re-run (or a run resumed after a crash) meets whole chunks that were stored, so
    their first record says which way to go, in one index lookup; a chunk that is new
    except for some rows (a concurrent writer) is caught by the database instead.
    """
    key = {
        c: per_row[c][0] if c in per_row else constants.get(c) for c in (*BATCH_KEY, "record_id")
    }
    if any(v is None for v in key.values()):
        return False  # the staging path reports what is missing
    params = {c: constant_value(v, SCORE_KINDS[c]) for c, v in key.items()}
    match = " AND ".join(f"{c} = {db.param(c, SCORE_KINDS[c])}" for c in key)
    found = db.query(
        f"SELECT 1 FROM scores WHERE channel = '{BATCH_CHANNEL}' AND {match} LIMIT 1", params
    )
    return not found


def _copy_rows(
    kinds: Mapping[str, str], per_row: Mapping[str, list[Any]], constants: Mapping[str, Any]
) -> Iterator[tuple]:
    """One tuple per row for binary COPY, every column of `kinds` in its order,
    constants repeated and times as aware datetimes."""
    columns = []
    for name, kind in kinds.items():
        if name in per_row:
            values = per_row[name]
            if kind == "time":
                values = [None if v is None else _utc_datetime(v) for v in values]
            columns.append(values)
        else:
            value = constant_value(constants.get(name), kind)
            if kind == "time" and value is not None:
                value = _utc_datetime(value)
            columns.append(repeat(value))
    # score_id and record_id are always per row, so zip ends with the chunk.
    return zip(*columns, strict=False)


def _json_rows(per_row: Mapping[str, list[Any]], kinds: Mapping[str, str]) -> str:
    """The per-row columns as one JSON array of rows, for SQLite's json_each.

    A float NaN becomes null, so that NOT NULL refuses it as it refuses a bound NaN
    (SQLite binds NaN as NULL); JSON itself has no NaN.
    """
    columns = [
        [None if v != v else v for v in values] if kinds[name] == "float" else values
        for name, values in per_row.items()
    ]
    return json.dumps(list(zip(*columns, strict=True)), allow_nan=False)


def _utc_datetime(text: str) -> datetime:
    """The store's UTC text back as an aware datetime, for PostgreSQL's binary COPY."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _store_batch(
    db: _Dialect,
    per_row: Mapping[str, list[Any]],
    constants: Mapping[str, Any],
    ids: list[str],
) -> tuple[int, list[str]]:
    count = len(ids)
    names = ["ord", *per_row]
    rows = list(zip(range(count), *per_row.values(), strict=True))
    db.stage(STAGE_SCORES, SCORE_KINDS, rows, names)
    params = {name: constant_value(v, SCORE_KINDS[name]) for name, v in constants.items()}

    def value(column: str) -> str:
        kind = SCORE_KINDS[column]
        return db.staged(column, kind) if column in per_row else db.param(column, kind)

    table = f"{db.temp}{STAGE_SCORES}"
    # No conflict target: a conflict on either unique key (score_id, or the batch record)
    # skips the row. `WHERE true` keeps SQLite from reading ON CONFLICT as a join's ON.
    insert = (
        f"INSERT INTO scores ({', '.join(SCORE_KINDS)}) "
        f"SELECT {', '.join(value(c) for c in SCORE_KINDS)} FROM {table} AS st "
        "WHERE true ORDER BY st.ord ON CONFLICT DO NOTHING RETURNING score_id"
    )
    added = {row[0] for row in db.query(insert, params)}
    if len(added) < count:
        # The literal 'batch' lets both planners use the partial unique index.
        match = " AND ".join(f"sc.{c} = {value(c)}" for c in (*BATCH_KEY, "record_id"))
        # CROSS JOIN: SQLite then walks the staging table and searches the index, where it
        # would otherwise scan the staging table (no index, no statistics) per stored row.
        lookup = (
            f"SELECT st.ord, sc.score_id FROM {table} AS st CROSS JOIN scores AS sc "
            f"WHERE sc.channel = '{BATCH_CHANNEL}' AND {match}"
        )
        stored = dict(db.query(lookup, params))
        for index, score_id in enumerate(ids):
            if score_id not in added:
                found = stored.get(index)
                if found is None:
                    raise CrispError(
                        f"score store: batch score {score_id} of record "
                        f"{per_row['record_id'][index]!r} was neither stored nor found stored"
                    )
                ids[index] = str(found)
    db.drop(STAGE_SCORES)
    return len(added), ids


def upsert_labels(connection: sa.Connection, per_row: Mapping[str, list[Any]]) -> int:
    """Insert or overwrite one label per record on `connection`; returns rows written.

    `per_row` holds every label column (times as UTC text) with at most one row per
    (environment, record_id): PostgreSQL refuses to update one row twice in a statement.
    """
    if set(per_row) != set(LABEL_KINDS):
        raise CrispError(f"score store: labels need the columns {sorted(LABEL_KINDS)}")
    count = len(per_row["record_id"])
    if count == 0:
        return 0
    with translated(connection, "bulk upsert of labels"):
        _upsert_labels(dialect_of(connection), per_row, count)
    return count


def _upsert_labels(db: _Dialect, per_row: Mapping[str, list[Any]], count: int) -> None:
    names = ["ord", *per_row]
    rows = list(zip(range(count), *per_row.values(), strict=True))
    db.stage(STAGE_LABELS, LABEL_KINDS, rows, names)
    keys = [c.name for c in labels.primary_key.columns]
    updated = [c for c in LABEL_KINDS if c not in keys]
    insert = (
        f"INSERT INTO labels ({', '.join(LABEL_KINDS)}) "
        f"SELECT {', '.join(db.staged(c, k) for c, k in LABEL_KINDS.items())} "
        f"FROM {db.temp}{STAGE_LABELS} AS st WHERE true "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in updated)
    )
    db.query(insert, {})
    db.drop(STAGE_LABELS)


def frame_columns(frame: pd.DataFrame, kinds: Mapping[str, str]) -> dict[str, list[Any]]:
    return {name: column_values(frame[name], kinds[name], name) for name in kinds}


def split_constant(
    columns: Mapping[str, Sequence[Any]],
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Columns whose every value is the same (and of the same type) become constants.

    Rows of one chunk share their lineage and time: sent once, not once per row.
    """
    per_row: dict[str, list[Any]] = {}
    constants: dict[str, Any] = {}
    for name, values in columns.items():
        first = values[0]
        kind = type(first)
        if all(v is first or (type(v) is kind and v == first) for v in values):
            constants[name] = first
        else:
            per_row[name] = list(values)
    for name in ("score_id", "record_id"):
        if name in constants:  # the staging table and the lookup need them per row
            per_row[name] = [constants.pop(name)] * len(columns[name])
    return per_row, constants
