"""Raw record ids in a store whose environment pseudonymises: refused, or rewritten once.

On SQLite always, and on PostgreSQL when CRISPML_TEST_DATABASE_URL names one: the
check that tells a pseudonym from a raw id is SQL of each dialect (GLOB, `~`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from pipeline.config import Privacy
from pipeline.errors import ConfigError
from pipeline.privacy import PSEUDONYM_HEX, pseudonym
from pipeline.store import ScoreStore, new_score_id, utcnow
from pipeline.store.pseudonymise import (
    PSEUDONYM_HEX as STORE_PSEUDONYM_HEX,
)
from pipeline.store.pseudonymise import (
    derived_batch_score_id,
    looks_pseudonymised,
    pseudonymise_store,
    require_pseudonymised,
)
from pipeline.store.schema import labels, scores
from tests.conftest import postgres_url, set_param
from tests.test_store import _stores

KEY = b"store-test-pseudonymisation-key-of-32+bytes"
ON = Privacy(pseudonymise_ids=True)
NOW = utcnow()


def rekey(ids: list[str]) -> list[str]:
    return [pseudonym(i, KEY) for i in ids]


@pytest.fixture(params=list(_stores()))
def store(request, tmp_path: Path) -> Iterator[ScoreStore]:
    if request.param == "sqlite":
        target = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    else:
        schema = f"p_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(postgres_url())
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        target = ScoreStore(postgres_url(), connect_args={"options": f"-csearch_path={schema}"})
    target.migrate()
    yield target
    target.dispose()
    if request.param != "sqlite":
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def score(
    record: str,
    *,
    env: str = "qa",
    version: str = "1",
    channel: str = "batch",
    score_id: str | None = None,
    **extra: object,
) -> dict:
    return {
        "score_id": score_id or new_score_id(),
        "record_id": record,
        "frame": 7 if channel == "batch" else None,
        "score": 0.3,
        "decision": 0,
        "threshold": 0.5,
        "model_name": "m",
        "model_version": version,
        "run_id": "r",
        "git_commit": "c" * 40,
        "environment": env,
        "channel": channel,
        "source": "test",
        "scored_at": NOW,
        **extra,
    }


def label(record: str, value: int, at: timedelta = timedelta(0), env: str = "qa") -> dict:
    return {
        "environment": env,
        "record_id": record,
        "label": value,
        "source": "test",
        "labeled_at": NOW + at,
    }


def snapshot(store: ScoreStore) -> tuple[list, list]:
    with store.engine.connect() as conn:
        return (
            [tuple(r) for r in conn.execute(sa.select(scores).order_by(scores.c.score_id))],
            [
                tuple(r)
                for r in conn.execute(
                    sa.select(labels).order_by(labels.c.environment, labels.c.record_id)
                )
            ],
        )


def test_a_pseudonym_has_a_shape_no_raw_or_derived_id_has() -> None:
    assert STORE_PSEUDONYM_HEX == PSEUDONYM_HEX
    assert looks_pseudonymised(pseudonym("tx0000001", KEY))
    for raw in ("tx0000001", "r0123456789abcdef-0", "r-" + "a" * 32, "A" * 32, "a" * 31):
        assert not looks_pseudonymised(raw), raw


def test_writers_refuse_raw_ids_once_pseudonymisation_is_on(store: ScoreStore) -> None:
    store.insert_scores([score("tx1"), score("tx2"), score("tx1", version="2")])
    store.insert_scores([score(pseudonym("tx9", KEY)), score("dev-raw", env="dev")])
    store.upsert_labels([label("tx1", 1), label("tx3", 0)])
    with pytest.raises(ConfigError) as refused:
        require_pseudonymised(store, "qa", ON)
    message = str(refused.value)
    assert "'qa'" in message and store.safe_url in message
    assert "3 raw record ids (3 scores, 2 labels)" in message
    assert "`crispml store pseudonymise --env qa`" in message and "--dry-run" in message
    assert refused.value.exit_code == 3
    require_pseudonymised(store, "qa", Privacy(pseudonymise_ids=False))  # raw ids expected
    require_pseudonymised(store, "prod", ON)  # another environment's rows are not its own
    pseudonymise_store(store, "qa", rekey)
    require_pseudonymised(store, "qa", ON)


def test_the_migration_rewrites_scores_and_labels_once(store: ScoreStore) -> None:
    legacy = derived_batch_score_id("qa", "m", "1", "tx1")  # a store from before 0004
    online = new_score_id()
    store.insert_scores(
        [
            score("tx1", score_id=legacy),
            score("tx2"),
            score("tx3", channel="api", score_id=online),
            score("tx4"),
            score(pseudonym("tx4", KEY)),  # tx4 scored again after the switch
            score(pseudonym("tx8", KEY)),
            score("tx1", env="dev"),
            # A shadow naming the legacy id (none exist, but the reference must hold).
            score("tx1", channel="api", shadow=True, shadow_of=legacy),
        ]
    )
    store.upsert_labels(
        [
            label("tx2", 1),
            label("tx4", 0, timedelta(hours=-1)),
            label(pseudonym("tx4", KEY), 1),  # newer: it stays
            label("tx5", 1, timedelta(hours=1)),  # newer than its pseudonymised twin
            label(pseudonym("tx5", KEY), 0),
            label("tx2", 0, env="dev"),
        ]
    )
    before = snapshot(store)
    dry = pseudonymise_store(store, "qa", rekey, dry_run=True, chunk=2)
    assert snapshot(store) == before
    done = pseudonymise_store(store, "qa", rekey, chunk=2)
    for result in (dry, done):
        assert (result.record_ids, result.scores, result.batch_score_ids) == (5, 4, 1)
        assert (result.duplicate_scores, result.labels, result.superseded_labels) == (1, 2, 2)
    assert dry.raw_record_ids_left == 5 and done.raw_record_ids_left == 0

    after = store.scores_with_labels("qa", labeled_only=False)
    assert after["record_id"].map(looks_pseudonymised).all()
    assert legacy not in set(after["score_id"]) and online in set(after["score_id"])
    by_record = dict(zip(after["record_id"], after["label"], strict=False))
    assert by_record[pseudonym("tx2", KEY)] == 1 and by_record[pseudonym("tx4", KEY)] == 1
    assert len(after[after["record_id"] == pseudonym("tx4", KEY)]) == 1
    with store.engine.connect() as conn:
        stored_labels = dict(
            conn.execute(
                sa.select(labels.c.record_id, labels.c.label).where(labels.c.environment == "qa")
            ).all()
        )
        shadow_of = conn.execute(
            sa.select(scores.c.shadow_of).where(scores.c.shadow.is_(True))
        ).scalar_one()
        kept = conn.execute(
            sa.select(scores.c.score_id).where(
                scores.c.environment == "qa",
                scores.c.channel == "batch",
                scores.c.record_id == pseudonym("tx1", KEY),
            )
        ).scalar_one()
    assert shadow_of == kept
    assert stored_labels == {pseudonym(r, KEY): 1 for r in ("tx2", "tx4", "tx5")}
    dev = store.scores_with_labels("dev", labeled_only=False)
    assert dev["record_id"].tolist() == ["tx1"]

    settled = snapshot(store)
    again = pseudonymise_store(store, "qa", rekey)
    assert again.record_ids == again.scores == again.labels == 0
    assert snapshot(store) == settled


def test_a_failure_halfway_leaves_the_store_as_it_was(store: ScoreStore) -> None:
    store.insert_scores([score(f"tx{n}") for n in range(5)])
    store.upsert_labels([label(f"tx{n}", n % 2) for n in range(5)])
    before = snapshot(store)
    calls = []

    def failing(ids: list[str]) -> list[str]:
        calls.append(ids)
        if len(calls) == 2:
            raise RuntimeError("the key vault went away")
        return rekey(ids)

    with pytest.raises(RuntimeError, match="key vault"):
        pseudonymise_store(store, "qa", failing, chunk=2)
    assert snapshot(store) == before


# --- crispml store pseudonymise ----------------------------------------------------------


def _switch_on(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = project / "environments" / "dev" / "params.yaml"
    overlay.write_text(set_param(overlay.read_text(), "pseudonymise_ids", "true"))
    monkeypatch.setenv("CRISPML_PSEUDONYMISATION_KEY", KEY.decode())


def test_the_command_has_help_a_dry_run_and_refuses_without_the_filter(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pipeline.cli import cli
    from pipeline.config import load_settings

    runner = CliRunner()
    shown = runner.invoke(cli, ["store", "pseudonymise", "--help"])
    assert shown.exit_code == 0 and "--dry-run" in shown.output and "--env" in shown.output
    root = ["--root", str(project)]
    off = runner.invoke(cli, ["store", "pseudonymise", *root])
    assert off.exit_code == 3 and "pseudonymise_ids is off for environment 'dev'" in off.output

    _switch_on(project, monkeypatch)
    store = ScoreStore(load_settings(project).store_url)
    try:
        store.migrate()
        store.insert_scores([score("tx1", env="dev"), score("tx2", env="dev")])
        dry = runner.invoke(cli, ["store", "pseudonymise", *root, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.output)["record_ids"] == 2
        with pytest.raises(ConfigError):
            require_pseudonymised(store, "dev", ON)
        done = runner.invoke(cli, ["store", "pseudonymise", *root])
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["raw_record_ids_left"] == 0
        require_pseudonymised(store, "dev", ON)
    finally:
        store.dispose()


def test_label_refuses_before_it_writes_a_label(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from pipeline import label
    from pipeline.config import load_settings
    from pipeline.layout import Layout

    _switch_on(project, monkeypatch)
    settings = load_settings(project)
    layout = Layout(project)
    keyed = pseudonym("tx7", KEY)
    for folder in (layout.scored, layout.prepared):
        folder.mkdir(parents=True)
    pd.DataFrame({"record_id": [keyed]}).to_parquet(layout.frame_file(layout.scored, 7))
    pd.DataFrame({"transaction_id": [keyed], "Class": [1]}).to_parquet(
        layout.frame_file(layout.prepared, 7)
    )
    store = ScoreStore(settings.store_url)
    try:
        store.migrate()
        store.insert_scores([score("tx1", env="dev"), score(keyed, env="dev")])
        with pytest.raises(ConfigError, match="1 raw record ids"):
            label.run(settings, 7)
        assert store.scores_with_labels("dev", labeled_only=True).empty
        pseudonymise_store(store, "dev", rekey)
        assert label.run(settings, 7)["labeled"] == 1
    finally:
        store.dispose()


def test_the_service_refuses_to_start(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its check runs at start-up, before any model is loaded (this one is a stub)."""
    from pipeline.config import load_settings
    from pipeline.service.config import ServiceConfig
    from pipeline.service.state import ServiceState

    _switch_on(project, monkeypatch)
    settings = load_settings(project)
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("")
    store = ScoreStore(settings.store_url)
    try:
        store.migrate()
        store.insert_scores([score("tx1", env="dev", channel="api")])
    finally:
        store.dispose()
    service = ServiceState(settings, ServiceConfig.from_env(), str(model))
    try:
        with pytest.raises(ConfigError, match="1 raw record ids"):
            service.prepare()
    finally:
        service.store.dispose()
