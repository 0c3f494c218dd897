from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_settings, resolve_sqlite_url
from pipeline.errors import ConfigError
from tests.conftest import set_param


def test_default_params_load_with_the_dev_overlay(settings) -> None:
    assert settings.env == "dev"
    assert settings.contract.target == "Class"
    assert settings.contract.id_column == "transaction_id"
    assert settings.model_inputs[0] == "Time"
    assert len(settings.contract.features) == 29
    assert settings.alias == "dev"
    assert settings.store_url.startswith("sqlite:////")


def test_unknown_key_is_named(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("prepare:\n", "prepare:\n  typo_key: 1\n"))
    with pytest.raises(ConfigError, match=r"prepare\.typo_key"):
        load_settings(project)


def test_missing_environment_lists_the_known_ones(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(set_param(params.read_text(), "env", "nowhere"))
    with pytest.raises(ConfigError, match=r"'nowhere'.*known: \[.*'dev'"):
        load_settings(project)


def test_split_must_cover_the_training_frames(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("test: [6]", "test: [7]"))
    with pytest.raises(ConfigError, match=r"curate\.split"):
        load_settings(project)


def test_store_url_comes_from_the_environment_variable_first(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRISPML_STORE_URL", "postgresql+psycopg://u@h/db")
    assert settings.store_url == "postgresql+psycopg://u@h/db"


def test_relative_sqlite_paths_are_anchored_at_the_root(tmp_path: Path) -> None:
    assert resolve_sqlite_url("sqlite:///a/b.db", tmp_path) == f"sqlite:///{tmp_path}/a/b.db"
    assert resolve_sqlite_url("sqlite:////abs/b.db", tmp_path) == "sqlite:////abs/b.db"


def test_flat_params_use_the_yaml_names(settings) -> None:
    flat = settings.flat_params()
    assert flat["register.model_name"] == "crispml-fraud"
    assert flat["environment.gates.register.min_pr_auc"] == "0.5"
