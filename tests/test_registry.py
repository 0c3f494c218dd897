"""Alias history, against a real (SQLite-backed) MLflow registry and a real store.

The store is SQLite always and PostgreSQL when CRISPML_TEST_DATABASE_URL names one (the
`store` fixture of tests/test_store.py). Concurrent moves are in test_alias_concurrency.py.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import registry
from pipeline.registry import AliasMoved
from tests import test_store

# The store fixtures of test_store.py: SQLite, and PostgreSQL when one is named.
store_target = test_store.store_target
store = test_store.store

NAME = "crispml-test"


@pytest.fixture
def client(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for commit in ("c1", "c2", "c3"):
        version = client.create_model_version(NAME, source=str(tmp_path / commit))
        client.set_model_version_tag(NAME, version.version, "git_commit", commit)
    return client


def _holder(client) -> str | None:
    holder = registry.alias_holder(client, NAME, "prod")
    return None if holder is None else str(holder.version)


def test_every_alias_move_is_kept_in_order(client, store, monkeypatch) -> None:
    monkeypatch.setenv("CI_COMMIT_SHA", "f" * 40)
    monkeypatch.setenv("CI_PIPELINE_URL", "https://gitlab.example/p/-/pipelines/7")
    assert registry.alias_holder(client, NAME, "prod") is None
    assert registry.alias_history(client, store, NAME, "prod") == []
    registry.move_alias(client, store, NAME, "prod", "1", "first", expected=None)
    registry.move_alias(client, store, NAME, "prod", "2", "second", actor="ci:me", expected="1")
    history = registry.alias_history(client, store, NAME, "prod")
    assert [(e["version"], e["previous"], e["reason"], e["seq"]) for e in history] == [
        ("1", None, "first", 1),
        ("2", "1", "second", 2),
    ]
    assert history[1]["actor"] == "ci:me" and history[1]["kind"] == "move"
    assert history[1]["git_commit"] == "f" * 40
    assert history[1]["pipeline"] == "https://gitlab.example/p/-/pipelines/7"
    assert history[1]["at"].endswith("+00:00")
    assert _holder(client) == "2"
    # Another alias has a history of its own.
    assert registry.alias_history(client, store, NAME, "qa") == []


def test_a_move_decided_against_a_stale_holder_is_refused_and_changes_nothing(
    client, store
) -> None:
    registry.move_alias(client, store, NAME, "prod", "1", "first")
    registry.move_alias(client, store, NAME, "prod", "2", "another pipeline", expected="1")
    with pytest.raises(AliasMoved, match="@prod of model 'crispml-test' moved meanwhile") as info:
        registry.move_alias(client, store, NAME, "prod", "3", "gate passed", expected="1")
    assert "expected version 1, found version 2" in str(info.value)
    assert (info.value.expected, info.value.found) == ("1", "2")
    assert _holder(client) == "2"
    assert [e["version"] for e in registry.alias_history(client, store, NAME, "prod")] == [
        "1",
        "2",
    ]
    with pytest.raises(AliasMoved, match="expected nothing, found version 2"):
        registry.move_alias(client, store, NAME, "prod", "3", "first ever?", expected=None)


def test_a_move_made_outside_crispml_is_recorded_before_the_next_one(client, store) -> None:
    registry.move_alias(client, store, NAME, "prod", "1", "first")
    client.set_registered_model_alias(NAME, "prod", "3")  # not through crispml
    registry.move_alias(client, store, NAME, "prod", "2", "gate passed", expected="3")
    history = registry.alias_history(client, store, NAME, "prod")
    assert [(e["kind"], e["previous"], e["version"]) for e in history] == [
        ("move", None, "1"),
        ("outside", "1", "3"),
        ("move", "3", "2"),
    ]
    assert "moved outside crispml" in history[1]["reason"]
    # Replayed, the history ends where the registry is.
    assert history[-1]["version"] == _holder(client)


def test_a_removal_is_an_event_with_no_version(client, store) -> None:
    registry.move_alias(client, store, NAME, "prod", "2", "shadow")
    event = registry.remove_alias(client, store, NAME, "prod", "promoted", expected="2")
    assert (event["previous"], event["version"]) == ("2", None)
    assert _holder(client) is None
    with pytest.raises(AliasMoved, match="expected version 2, found nothing"):
        registry.remove_alias(client, store, NAME, "prod", "again", expected="2")


def test_the_legacy_tag_is_read_until_the_first_move_imports_it(client, store) -> None:
    """Registries in use keep their past in a registered-model tag; rollback needs it."""
    legacy = [
        {"version": "1", "previous": None, "at": "2026-11-01T10:00:00+00:00", "reason": "a"},
        {"version": "2", "previous": "1", "at": "2026-11-02T10:00:00+00:00", "reason": "b"},
    ]
    tag = registry.LEGACY_HISTORY_TAG.format(alias="prod")
    client.set_registered_model_tag(NAME, tag, json.dumps(legacy))
    client.set_registered_model_alias(NAME, "prod", "2")
    shown = registry.alias_history(client, store, NAME, "prod")
    assert [(e["version"], e["kind"]) for e in shown] == [("1", "imported"), ("2", "imported")]
    registry.move_alias(client, store, NAME, "prod", "3", "gate passed", expected="2")
    history = registry.alias_history(client, store, NAME, "prod")
    assert [(e["seq"], e["version"], e["kind"]) for e in history] == [
        (1, "1", "imported"),
        (2, "2", "imported"),
        (3, "3", "move"),
    ]
    assert history[0]["at"] == "2026-11-01T10:00:00+00:00" and history[1]["reason"] == "b"
    # Read, never written: the tag is as it was.
    assert json.loads(client.get_registered_model(NAME).tags[tag]) == legacy
    # Imported once: a later tag change is not the history any more.
    client.set_registered_model_tag(NAME, tag, "[]")
    registry.move_alias(client, store, NAME, "prod", "1", "again", expected="3")
    assert len(registry.alias_history(client, store, NAME, "prod")) == 4


def test_a_registry_that_refuses_the_move_leaves_no_event(client, store) -> None:
    registry.move_alias(client, store, NAME, "prod", "1", "first")
    with pytest.raises(Exception, match=r"RESOURCE_DOES_NOT_EXIST|not found|999"):
        registry.move_alias(client, store, NAME, "prod", "999", "no such version")
    assert _holder(client) == "1"
    assert len(registry.alias_history(client, store, NAME, "prod")) == 1
    registry.move_alias(client, store, NAME, "prod", "2", "next", expected="1")
    assert [e["seq"] for e in registry.alias_history(client, store, NAME, "prod")] == [1, 2]


def test_a_registry_call_that_moved_before_failing_is_put_back(client, store, monkeypatch) -> None:
    """A timeout after the server acted: the alias moved, the event is rolled back."""
    registry.move_alias(client, store, NAME, "prod", "1", "first")
    real = client.set_registered_model_alias

    def times_out(*args) -> None:
        monkeypatch.setattr(client, "set_registered_model_alias", real)  # once
        real(*args)
        raise TimeoutError("no answer from the registry")

    monkeypatch.setattr(client, "set_registered_model_alias", times_out)
    with pytest.raises(TimeoutError):
        registry.move_alias(client, store, NAME, "prod", "2", "lost?", expected="1")
    assert _holder(client) == "1"
    assert [e["version"] for e in registry.alias_history(client, store, NAME, "prod")] == ["1"]


def test_an_event_that_cannot_be_committed_puts_the_alias_back(client, store, monkeypatch) -> None:
    """The registry moves last, before the commit; should the commit fail, it moves back."""
    from pipeline.store import aliases

    registry.move_alias(client, store, NAME, "prod", "1", "first")
    real = aliases.locked_alias

    @contextmanager
    def commit_fails(*args):
        with pytest.raises(RuntimeError), real(*args) as head:
            yield head
            raise RuntimeError("rolled back")  # what a failed COMMIT leaves: nothing
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(aliases, "locked_alias", commit_fails)
    with pytest.raises(sa.exc.OperationalError, match="disk I/O error"):
        registry.move_alias(client, store, NAME, "prod", "2", "lost?", expected="1")
    assert _holder(client) == "1"
    monkeypatch.setattr(aliases, "locked_alias", real)
    assert [e["version"] for e in registry.alias_history(client, store, NAME, "prod")] == ["1"]


def test_history_store_migrates_the_environment_store(tmp_path: Path) -> None:
    from types import SimpleNamespace

    url = f"sqlite:///{tmp_path / 'fresh' / 'scores.db'}"
    with registry.history_store(SimpleNamespace(store_url=url)) as store:
        assert set(sa.inspect(store.engine).get_table_names()) >= {"alias_events", "alias_heads"}


# prod's fallback (register.fall_back) is tested with real models and the evidence it
# scores them with in tests/gitops/test_gitops_identity.py.
