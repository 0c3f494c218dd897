"""Alias history, against a real (SQLite-backed) MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import registry

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


def test_every_alias_move_is_kept_in_order(client) -> None:
    assert registry.alias_holder(client, NAME, "prod") is None
    registry.move_alias(client, NAME, "prod", "1", "first")
    registry.move_alias(client, NAME, "prod", "2", "second")
    history = registry.alias_history(client, NAME, "prod")
    assert [(e["version"], e["previous"], e["reason"]) for e in history] == [
        ("1", None, "first"),
        ("2", "1", "second"),
    ]
    assert str(registry.alias_holder(client, NAME, "prod").version) == "2"


# prod's fallback (register.fall_back) is tested with real models and the evidence it
# scores them with in tests/gitops/test_gitops_identity.py.
