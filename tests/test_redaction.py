"""URLs lose their passwords before anything prints, logs or stores them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.redaction import redact_params, redact_url
from tests.conftest import set_param
from tests.secret_scan import find_in_database, find_in_files


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://app:s3cr%40t@db:5432/prod?sslmode=require",
            "postgresql+psycopg://app:***@db:5432/prod?sslmode=require",
        ),
        ("https://ml:pw@mlflow.example/path", "https://ml:***@mlflow.example/path"),
        (
            "postgresql://db/prod?password=pw&sslmode=x",
            "postgresql://db/prod?password=%2A%2A%2A&sslmode=x",
        ),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("s3://bucket/key", "s3://bucket/key"),
        ("databricks", "databricks"),
    ],
)
def test_redact_url_hides_passwords_and_secret_query_values(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_params_touches_only_urls() -> None:
    params = {"store.url": "postgresql://u:pw@h/db", "train.algorithm": "hgb:pw"}
    assert redact_params(params) == {
        "store.url": "postgresql://u:***@h/db",
        "train.algorithm": "hgb:pw",
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("url", "postgresql+psycopg://app:planted-pw@db/prod"),  # store.url in the overlay
    ],
)
def test_params_refuse_an_inline_password_without_echoing_it(
    project: Path, key: str, value: str
) -> None:
    """params.yaml reaches Git, dvc.lock and MLflow: a password there is refused."""
    from pipeline.config import load_settings

    overlay = project / "environments" / "dev" / "params.yaml"
    overlay.write_text(set_param(overlay.read_text(), key, value))
    with pytest.raises(ConfigError) as error:
        load_settings(project)
    message = str(error.value)
    assert "store.url" in message and "holds a password" in message
    assert "planted-pw" not in message and "app:***@db" in message


def test_the_scanner_finds_a_secret_in_compressed_parquet_and_in_a_database(
    tmp_path: Path,
) -> None:
    """The e2e scan is only as good as this: a secret inside a Parquet page or a row."""
    # Repetitive, so zstd stores it as back-references and its bytes are not in the file.
    secret = "planted-" + "0123456789" * 4
    # Neither the column's min nor its max, which Parquet keeps uncompressed in its stats.
    frame = pd.DataFrame({"a": range(5001), "b": ["a"] * 2500 + [secret] + ["z"] * 2500})
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "frame.parquet", compression="zstd")
    raw = (tmp_path / "data" / "frame.parquet").read_bytes()
    assert secret.encode() not in raw, "the check below must need the decoding"
    (tmp_path / "cache-object").write_bytes(raw)  # as DVC caches it: no extension
    assert find_in_files(tmp_path, [secret]) == [
        f"cache-object: {secret}",
        f"data/frame.parquet: {secret}",
    ]
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("create table params (key text, value text)")
        db.execute("insert into params values ('store.url', ?)", (f"postgresql://u:{secret}@h",))
    assert find_in_database(f"sqlite:///{tmp_path / 'db.sqlite'}", [secret]) == [
        f"params: {secret}"
    ]
    assert find_in_files(tmp_path, ["absent"]) == []
