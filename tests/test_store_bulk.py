"""Bulk writes of the store (`store_batch_frame`, `upsert_labels_frame`), on both dialects.

The frame path must store exactly what the dict path stored, byte for byte where the
dialect keeps text (SQLite's times), keep a re-run and a resumed run free of duplicates,
and leave nothing of a chunk that fails half-way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.errors import CrispError
from pipeline.store import ScoreStore, _insert, bulk, new_batch_score_ids, new_score_id, utcnow
from pipeline.store.schema import labels
from pipeline.store.writers import BatchWriters
from tests.conftest import postgres_url
from tests.test_store import _stores

LINEAGE = {
    "frame": 7,
    "threshold": 0.41,
    "model_name": "m",
    "model_version": "3",
    "run_id": "run",
    "git_commit": "c" * 40,
    "environment": "dev",
    "channel": "batch",
    "source": "generator(seed=42)",
}
AT = datetime(2026, 12, 2, 18, 5, 7, 123456, tzinfo=UTC)


@pytest.fixture(params=list(_stores()))
def open_store(request, tmp_path: Path) -> Iterator[Callable[[], ScoreStore]]:
    """Opens fresh, migrated stores of one dialect; each its own file or schema."""
    opened: list[ScoreStore] = []
    schemas: list[str] = []
    admin = sa.create_engine(postgres_url()) if request.param == "postgresql" else None

    def opener(options: str = "") -> ScoreStore:
        if admin is None:
            store = ScoreStore(f"sqlite:///{tmp_path / f'scores-{len(opened)}.db'}")
        else:
            schema = f"b_{uuid.uuid4().hex[:10]}"
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            schemas.append(schema)
            options = f"-csearch_path={schema} {options}".strip()
            store = ScoreStore(postgres_url(), connect_args={"options": options})
        opened.append(store)
        store.migrate()
        return store

    yield opener
    for store in opened:
        store.dispose()
    if admin is not None:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def store(open_store) -> ScoreStore:
    return open_store()


def scored(records: list[str], seed: int = 0) -> pd.DataFrame:
    """A chunk as score_rows hands it over, with fresh random ids."""
    score = np.random.default_rng(seed).random(len(records))
    return pd.DataFrame(
        {
            "record_id": pd.Series(records, dtype=str),
            "score": score.astype("float64"),
            "decision": (score >= 0.41).astype("int64"),
            "score_id": [new_score_id() for _ in records],
        }
    )


def as_dicts(frame: pd.DataFrame, at: datetime = AT) -> list[dict[str, Any]]:
    """The rows as the score stage built them before the frame path."""
    return [{**LINEAGE, **row, "scored_at": at} for row in frame.to_dict("records")]


def table(store: ScoreStore, name: str) -> list[tuple]:
    """Every row as the driver returns it: SQLite's stored text, not SQLAlchemy's reading."""
    order = "score_id" if name == "scores" else "environment, record_id"
    with store.engine.connect() as conn:
        return [
            tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {name} ORDER BY {order}")
        ]


def assert_same_tables(one: ScoreStore, other: ScoreStore, name: str) -> None:
    left, right = table(one, name), table(other, name)
    assert len(left) == len(right) and left
    with one.engine.connect() as conn:
        columns = list(conn.exec_driver_sql(f"SELECT * FROM {name}").keys())
    for index, column in enumerate(columns):
        assert [r[index] for r in left] == [r[index] for r in right], column


def old_upsert_labels(store: ScoreStore, rows: list[dict[str, Any]]) -> None:
    """The dict path's statement before the frame path: the oracle for labels."""
    rows = list({(r["environment"], r["record_id"]): r for r in rows}.values())
    insert = _insert(store.dialect, labels)
    statement = insert.on_conflict_do_update(
        index_elements=["environment", "record_id"],
        set_={c: insert.excluded[c] for c in ("label", "source", "labeled_at")},
    )
    with store.engine.begin() as conn:
        conn.execute(statement, rows)


# --------------------------------------------------------------------------- scores


def test_writing_a_frame_twice_adds_nothing_and_answers_the_stored_ids(store) -> None:
    first = scored([f"tx-{i}" for i in range(1500)])
    added, ids = store.store_batch_frame(first, LINEAGE, AT)
    assert added == 1500 and ids == list(first["score_id"])
    again = scored([f"tx-{i}" for i in range(1500)], seed=1)  # a re-run draws new ids
    assert store.store_batch_frame(again, LINEAGE, utcnow()) == (0, ids)
    assert store.count_scores() == 1500
    # Another model version scores the same records anew.
    added, other = store.store_batch_frame(again, {**LINEAGE, "model_version": "4"}, AT)
    assert added == 1500 and other == list(again["score_id"])


def test_a_resumed_run_completes_without_duplicates(store) -> None:
    records = [f"tx-{i}" for i in range(2000)]
    done = scored(records[:1000])
    store.store_batch_frame(done, LINEAGE, AT)  # the run that crashed after one chunk
    full = scored(records, seed=2)
    added, ids = store.store_batch_frame(full, LINEAGE, AT)
    assert added == 1000 and store.count_scores() == 2000
    assert ids[:1000] == list(done["score_id"])
    assert ids[1000:] == list(full["score_id"][1000:])
    assert len(set(ids)) == 2000


def test_the_frame_path_stores_what_the_dict_path_stored(open_store) -> None:
    by_dicts, by_frame, by_old_method = open_store(), open_store(), open_store()
    chunk = scored([f"tx-{i}" for i in range(700)] + ["tab\there", "quote'\"\\", "ünï"])
    rows = as_dicts(chunk)
    assert by_dicts.insert_scores(rows) == len(rows)  # the compiled executemany of before
    assert by_frame.store_batch_frame(chunk, LINEAGE, AT) == (len(rows), list(chunk.score_id))
    assert by_old_method.store_batch_scores(rows) == (len(rows), list(chunk.score_id))
    assert_same_tables(by_dicts, by_frame, "scores")
    assert_same_tables(by_dicts, by_old_method, "scores")
    stored = by_frame.get_score(chunk.score_id[3])
    assert stored["shadow"] in (False, 0) and stored["shadow_of"] is None
    at = stored["scored_at"]
    assert (at if at.tzinfo else at.replace(tzinfo=UTC)) == AT


def test_dict_rows_that_differ_in_lineage_and_time_are_stored_as_given(open_store) -> None:
    """store_batch_scores sends a column once when the chunk shares it, else per row."""
    by_dicts, by_method = open_store(), open_store()
    rows = as_dicts(scored([f"tx-{i}" for i in range(300)]))
    for index, row in enumerate(rows):
        row["scored_at"] = AT + timedelta(microseconds=index)
        row["frame"] = None if index % 3 else 8
        row["model_version"] = str(index % 2)
    rows[7]["scored_at"] = datetime(2026, 12, 2, 20, 5, tzinfo=timezone(timedelta(hours=2)))
    by_dicts.insert_scores(rows)
    assert by_method.store_batch_scores(rows)[0] == 300
    assert by_method.store_batch_scores(rows)[0] == 0
    if by_dicts.dialect == "postgresql":
        assert_same_tables(by_dicts, by_method, "scores")
    else:
        # The compiled path wrote a +02:00 time's wall clock on SQLite; the store writes UTC.
        left, right = table(by_dicts, "scores"), table(by_method, "scores")
        assert [r for r in left if r[0] != rows[7]["score_id"]] == [
            r for r in right if r[0] != rows[7]["score_id"]
        ]
        assert by_method.get_score(rows[7]["score_id"])["scored_at"] == datetime(2026, 12, 2, 18, 5)


def test_duplicate_records_within_one_frame_are_stored_once(open_store) -> None:
    store, by_dicts = open_store(), open_store()
    chunk = scored(["a", "b", "a", "c", "b"])
    added, ids = store.store_batch_frame(chunk, LINEAGE, AT)
    first = list(chunk.score_id)
    assert added == 3 and ids == [first[0], first[1], first[0], first[3], first[1]]
    assert store.count_scores() == 3
    # As the compiled executemany stored them: the first row of a record wins.
    by_dicts.insert_scores(as_dicts(chunk))
    assert_same_tables(by_dicts, store, "scores")
    assert store.store_batch_frame(scored(["a", "a"]), LINEAGE, AT) == (0, [first[0]] * 2)


def test_a_new_chunk_goes_straight_into_the_table(store, monkeypatch) -> None:
    """No record of the chunk stored yet: no staging table, no conflict handling."""

    def staging(*args, **kwargs):
        raise AssertionError("a new chunk took the staging path")

    monkeypatch.setattr(bulk, "_store_batch", staging)
    chunk = scored([f"tx-{i}" for i in range(1200)])
    assert store.store_batch_frame(chunk, LINEAGE, AT) == (1200, list(chunk.score_id))
    assert store.count_scores() == 1200


def test_the_direct_and_the_staging_path_store_the_same_rows(open_store) -> None:
    direct, staged = open_store(), open_store()
    chunk = scored([f"tx-{i}" for i in range(500)] + ["tab\there", "quote'\"\\", "ünï"])
    assert direct.store_batch_frame(chunk, LINEAGE, AT) == (503, list(chunk.score_id))
    per_row = bulk.frame_columns(chunk, {c: bulk.SCORE_KINDS[c] for c in chunk.columns})
    constants = {**LINEAGE, "shadow": False, "shadow_of": None, "scored_at": AT}
    with staged.engine.begin() as conn:
        assert bulk.store_batch(conn, per_row, constants, direct=False) == (
            503,
            list(chunk.score_id),
        )
    assert_same_tables(direct, staged, "scores")


def test_a_chunk_that_meets_a_stored_record_falls_back_and_names_it(store) -> None:
    """A concurrent writer stored one record of a chunk whose first record is new."""
    other = scored(["b"])
    store.store_batch_frame(other, LINEAGE, AT)
    chunk = scored(["a", "b", "c"], seed=3)
    added, ids = store.store_batch_frame(chunk, LINEAGE, AT)
    assert added == 2 and store.count_scores() == 3
    assert ids == [chunk.score_id[0], other.score_id[0], chunk.score_id[2]]


def test_batch_score_ids_are_random_uuid7_in_time_order() -> None:
    ids = new_batch_score_ids(2000, now_ms=1_765_000_000_000)
    parsed = [uuid.UUID(hex=i) for i in ids]
    assert len(set(ids)) == 2000 and all(len(i) == 32 for i in ids)
    assert {p.version for p in parsed} == {7} and {p.variant for p in parsed} == {uuid.RFC_4122}
    assert {int(i[:12], 16) for i in ids} == {1_765_000_000_000}  # the millisecond, first
    # 74 random bits after it: every bit position takes both values across the chunk.
    random_bits = [(p.int >> 64 & (2**12 - 1), p.int & (2**62 - 1)) for p in parsed]
    for width, part in ((12, 0), (62, 1)):
        any_one, all_ones = 0, 2**width - 1
        for bits in random_bits:
            any_one |= bits[part]
            all_ones &= bits[part]
        assert any_one == 2**width - 1 and all_ones == 0
    later = new_batch_score_ids(1)[0]
    assert later[:12] > ids[0][:12]  # a later chunk sorts after an earlier one
    assert new_batch_score_ids(0) == []


def test_a_score_id_taken_by_another_record_stores_nothing(store) -> None:
    taken = scored(["a"])
    store.store_batch_frame(taken, LINEAGE, AT)
    chunk = scored(["b", "c"])
    chunk.loc[1, "score_id"] = taken.score_id[0]
    with pytest.raises(CrispError, match="'c' was neither stored nor found"):
        store.store_batch_frame(chunk, LINEAGE, AT)
    assert store.count_scores() == 1  # b went with the chunk


def chunk_that_fails(dialect: str) -> list[tuple[str, pd.DataFrame]]:
    """Frames whose one bad row, in the middle, the database refuses, and its error."""
    null_record = scored([f"n{i}" for i in range(500)])
    null_record["record_id"] = null_record["record_id"].astype(object)
    null_record.loc[250, "record_id"] = None
    cases = [("null record_id", null_record, sa.exc.IntegrityError)]
    if dialect == "postgresql":  # SQLite does not enforce VARCHAR lengths
        long = scored([f"l{i}" for i in range(500)])
        long.loc[250, "record_id"] = "x" * 129
        cases.append(("record_id too long", long, sa.exc.DataError))
    else:  # SQLite binds a NaN as NULL, which NOT NULL refuses; PostgreSQL stores NaN
        not_a_number = scored([f"f{i}" for i in range(500)])
        not_a_number.loc[250, "score"] = float("nan")
        cases.append(("NaN score", not_a_number, sa.exc.IntegrityError))
    return cases


def test_a_chunk_that_fails_half_way_leaves_the_table_as_it_was(store) -> None:
    kept = scored([f"k{i}" for i in range(10)])
    store.store_batch_frame(kept, LINEAGE, AT)
    before = table(store, "scores")
    for what, chunk, error in chunk_that_fails(store.dialect):
        with pytest.raises(error):  # SQLAlchemy's, as the dict path raised
            store.store_batch_frame(chunk, LINEAGE, AT)
        assert table(store, "scores") == before, what
    # The connection and its staging table serve the next chunk.
    assert store.store_batch_frame(scored(["ok"]), LINEAGE, AT)[0] == 1


def test_chunks_stored_in_the_background_are_stored_as_one_by_one(open_store) -> None:
    """BatchWriters (the score stage's way) stores what one call per chunk stores."""
    one_by_one, background = open_store(), open_store()
    chunks = [scored([f"tx-{c}-{i}" for i in range(300)], seed=c) for c in range(6)]
    expected = [one_by_one.store_batch_frame(chunk, LINEAGE, AT) for chunk in chunks]
    with BatchWriters(background) as writers:
        assert writers.writers == {"sqlite": 1, "postgresql": 2}[background.dialect]
        futures = [writers.submit(chunk, LINEAGE, AT) for chunk in chunks]
    assert [future.result() for future in futures] == expected
    assert_same_tables(one_by_one, background, "scores")
    # A re-run adds nothing and answers the stored ids, whichever chunk lands first.
    again = [scored(list(chunk.record_id), seed=9) for chunk in chunks]
    with BatchWriters(background) as writers:
        futures = [writers.submit(chunk, LINEAGE, AT) for chunk in again]
    assert [future.result() for future in futures] == [
        (0, list(chunk.score_id)) for chunk in chunks
    ]
    assert background.count_scores() == 6 * 300


def test_a_chunk_that_fails_in_the_background_fails_alone(store) -> None:
    """Each chunk is its own transaction: the bad one stores nothing, the others stay."""
    good = [scored([f"g{c}-{i}" for i in range(50)], seed=c) for c in range(3)]
    (_, bad, error), *_ = chunk_that_fails(store.dialect)
    with BatchWriters(store, writers=2) as writers:
        futures = [writers.submit(chunk, LINEAGE, AT) for chunk in (good[0], bad, good[1])]
    with pytest.raises(error):
        futures[1].result()
    assert futures[0].result()[0] == futures[2].result()[0] == 50
    assert store.count_scores() == 100
    # Leaving by an error drops what has not started; what was handed over is awaited.
    with pytest.raises(RuntimeError), BatchWriters(store, writers=1) as writers:
        last = writers.submit(good[2], LINEAGE, AT)
        raise RuntimeError("the stage failed while scoring")
    assert last.cancelled() or last.result()[0] == 50


def test_the_frame_path_refuses_what_it_cannot_store(store) -> None:
    chunk = scored(["a"])
    with pytest.raises(CrispError, match="batch scores only"):
        store.store_batch_frame(chunk, {**LINEAGE, "channel": "api"}, AT)
    with pytest.raises(CrispError, match="not a timezone-aware"):
        store.store_batch_frame(chunk, LINEAGE, datetime(2026, 12, 2, 18))
    with pytest.raises(CrispError, match="lineage lacks"):
        store.store_batch_frame(chunk, {k: v for k, v in LINEAGE.items() if k != "run_id"}, AT)
    with pytest.raises(CrispError, match="scored lacks"):
        store.store_batch_frame(chunk.drop(columns="decision"), LINEAGE, AT)
    assert store.store_batch_frame(chunk.iloc[:0], LINEAGE, AT) == (0, [])
    assert store.count_scores() == 0


# --------------------------------------------------------------------------- labels


def label_frame(records: list[str], labels_: list[int], at: datetime, source: str = "feed"):
    return pd.DataFrame(
        {
            "environment": "dev",
            "record_id": records,
            "label": labels_,
            "source": source,
            "labeled_at": pd.Series([at] * len(records), dtype="datetime64[us, UTC]"),
        }
    )


def test_labels_are_overwritten_and_the_last_word_in_a_frame_wins(store) -> None:
    assert store.upsert_labels_frame(label_frame(["a", "b", "a"], [0, 1, 1], AT)) == 2
    later = AT + timedelta(hours=1)
    assert store.upsert_labels_frame(label_frame(["b", "c"], [0, 1], later, "fix")) == 2
    rows = {r[1]: r for r in table(store, "labels")}
    assert {k: r[2] for k, r in rows.items()} == {"a": 1, "b": 0, "c": 1}
    assert rows["b"][3] == "fix" and rows["a"][3] == "feed"
    assert store.newest_label_at("dev") == later
    assert store.upsert_labels_frame(label_frame([], [], AT)) == 0


def test_the_label_frame_path_stores_what_the_dict_path_stored(open_store) -> None:
    old, by_frame, by_method = open_store(), open_store(), open_store()
    at = AT + timedelta(microseconds=1)
    feed = label_frame([f"tx-{i}" for i in range(400)] + ["tx-3"], [i % 2 for i in range(401)], at)
    feed.loc[400, "source"] = "correction"
    rows = [
        {**row, "labeled_at": row["labeled_at"].to_pydatetime()} for row in feed.to_dict("records")
    ]
    old_upsert_labels(old, rows)
    assert by_frame.upsert_labels_frame(feed) == 400
    assert by_method.upsert_labels(rows) == 400
    assert_same_tables(old, by_frame, "labels")
    assert_same_tables(old, by_method, "labels")
    # And again, overwriting every label with a newer word.
    newer = feed.assign(
        label=1 - feed["label"], labeled_at=feed["labeled_at"] + pd.Timedelta(1, "D")
    )
    old_upsert_labels(
        old,
        [{**r, "labeled_at": r["labeled_at"].to_pydatetime()} for r in newer.to_dict("records")],
    )
    by_frame.upsert_labels_frame(newer)
    assert_same_tables(old, by_frame, "labels")


def test_labels_in_another_zone_are_stored_as_the_same_instant(store) -> None:
    berlin = timezone(timedelta(hours=1))
    feed = label_frame(["a"], [1], AT).astype({"labeled_at": "object"})
    feed.loc[0, "labeled_at"] = AT.astimezone(berlin)
    store.upsert_labels_frame(feed)
    assert store.newest_label_at("dev") == AT
    naive = label_frame(["a"], [1], AT)
    naive["labeled_at"] = naive["labeled_at"].dt.tz_localize(None)
    with pytest.raises(CrispError, match="naive"):
        store.upsert_labels_frame(naive)


def test_a_label_frame_that_fails_half_way_leaves_the_labels_as_they_were(store) -> None:
    store.upsert_labels_frame(label_frame(["a", "b"], [0, 0], AT))
    before = table(store, "labels")
    feed = label_frame([f"r{i}" for i in range(300)] + ["a"], [1] * 301, AT)
    feed["source"] = feed["source"].astype(object)
    feed.loc[150, "source"] = None
    with pytest.raises(sa.exc.IntegrityError):
        store.upsert_labels_frame(feed)
    assert table(store, "labels") == before
    assert store.upsert_labels_frame(label_frame(["a"], [1], AT)) == 1


def test_times_are_the_same_instant_whatever_the_session_zone(open_store) -> None:
    """PostgreSQL reads a zoneless time in the session's TimeZone; the store writes UTC."""
    store = open_store("-ctimezone=America/New_York")
    chunk = scored(["a", "b"])
    store.store_batch_frame(chunk, LINEAGE, AT)
    rows = as_dicts(scored(["c"]), at=AT + timedelta(seconds=1))
    rows[0]["scored_at"] = rows[0]["scored_at"].astimezone(timezone(timedelta(hours=-5)))
    store.store_batch_scores(rows + as_dicts(scored(["d"]), at=AT))  # times per row
    store.upsert_labels_frame(label_frame(["a"], [1], AT))
    frame = store.scores_with_labels("dev", labeled_only=False)
    at = pd.to_datetime(frame.set_index("record_id")["scored_at"], utc=True)
    assert at.to_dict() == {
        "a": pd.Timestamp(AT),
        "b": pd.Timestamp(AT),
        "c": pd.Timestamp(AT + timedelta(seconds=1)),
        "d": pd.Timestamp(AT),
    }
    assert store.newest_label_at("dev") == AT
