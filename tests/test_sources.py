"""Every kind of source yields the same validated data: file, SQL and S3 (a real moto server)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.config import FileSource, SqlSource
from pipeline.contract import validate
from pipeline.errors import ConfigError
from pipeline.generator import generate
from pipeline.sources import read_file, read_source


@pytest.fixture
def data(settings) -> pd.DataFrame:
    return generate(settings.generator.model_copy(update={"rows": 300}), 12)


def _with_source(settings, source):
    environment = settings.environment.model_copy(
        update={"data": settings.environment.data.model_copy(update={"source": source})}
    )
    return settings.model_copy(update={"environment": environment})


def test_parquet_file(settings, data, tmp_path: Path) -> None:
    data.to_parquet(tmp_path / "d.parquet")
    got = read_source(
        _with_source(settings, FileSource(kind="file", path=str(tmp_path / "d.parquet")))
    )
    pd.testing.assert_frame_equal(
        validate(got, settings.contract), validate(data, settings.contract)
    )


def test_csv_keeps_leading_zeros_of_text_columns(settings, data, tmp_path: Path) -> None:
    data.loc[0, "postcode"] = "01234"
    data.to_csv(tmp_path / "d.csv", index=False)
    got = read_file(str(tmp_path / "d.csv"), "auto", tmp_path, settings.contract, None)
    assert got.loc[0, "postcode"] == "01234"


def test_sql_query_through_sqlalchemy(settings, data, tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = sa.create_engine(url)
    data.to_sql("transactions", engine, index=False)
    engine.dispose()
    monkeypatch.setenv("SOURCE_DB_URL", url)
    source = SqlSource(kind="sql", query="SELECT * FROM transactions", url_env="SOURCE_DB_URL")
    got = validate(read_source(_with_source(settings, source)), settings.contract)
    assert len(got) == len(data)


def test_sql_url_variable_must_be_set(settings, monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_URL", raising=False)
    source = SqlSource(kind="sql", query="SELECT 1", url_env="NOT_SET_URL")
    with pytest.raises(ConfigError, match="NOT_SET_URL"):
        read_source(_with_source(settings, source))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch):
    server = shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    # Test credentials for a local fake endpoint; real ones only ever come from CI variables.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


def test_s3_object_through_a_real_endpoint(
    settings, data, tmp_path: Path, s3_endpoint: str
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="crispml-data")
    data.to_parquet(tmp_path / "d.parquet")
    client.upload_file(str(tmp_path / "d.parquet"), "crispml-data", "raw/d.parquet")
    source = FileSource(
        kind="file", path="s3://crispml-data/raw/d.parquet", endpoint_url=s3_endpoint
    )
    got = validate(read_source(_with_source(settings, source)), settings.contract)
    assert len(got) == len(data)


@pytest.mark.parametrize("name", ["d.parquet", "d.csv", "generator"])
def test_chunks_of_a_source_are_the_source(settings, data, tmp_path: Path, name) -> None:
    """Ingest reads chunks: together, and with their row positions, they are `read_source`."""
    from pipeline.sources import read_source_chunks

    if name == "generator":
        chosen = settings
    else:
        path = tmp_path / name
        data.to_parquet(path) if name.endswith(".parquet") else data.to_csv(path, index=False)
        chosen = _with_source(settings, FileSource(kind="file", path=str(path)))
    chunks = list(read_source_chunks(chosen, 70))
    whole = read_source(chosen)
    assert [len(c) for c in chunks[:-1]] == [70] * (len(chunks) - 1)
    pd.testing.assert_frame_equal(pd.concat(chunks), whole, check_exact=True)
    if name == "d.csv":
        assert chunks[-1].attrs["first_line"] == whole.attrs["first_line"] == 2
