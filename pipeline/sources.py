"""Reading the configured source: the generator, a CSV/Parquet file (local or s3://), or SQL.

Credentials never come from params: S3 keys from the usual AWS_* variables, a
database password inside the URL held by the variable that `url_env` names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.config import Contract, FileSource, GeneratorSource, Settings, SqlSource
from pipeline.errors import ConfigError, ServiceUnavailable


def describe(source: GeneratorSource | FileSource | SqlSource, settings: Settings) -> str:
    """A short, secret-free description of the source, stored as lineage with every score."""
    if isinstance(source, GeneratorSource):
        g = settings.generator
        return f"generator:rows={g.rows},seed={g.seed}"
    if isinstance(source, FileSource):
        return f"file:{source.path}"
    return f"sql:{source.url_env or 'url'}"


def _string_columns(contract: Contract) -> dict[str, str]:
    # Read ids and codes as text, or a postcode like 01234 would lose its zero.
    return {s.name: "string" for s in contract.specs if s.dtype == "string"}


def read_file(path: str, fmt: str, root: Path, contract: Contract | None, endpoint_url: str | None):
    is_remote = "://" in path
    location = path if is_remote else str((root / path).resolve())
    if not is_remote and not Path(location).is_file():
        raise ConfigError(f"data.source.path: file not found: {location}")
    if fmt == "auto":
        lowered = path.lower()
        if lowered.endswith((".parquet", ".pq")):
            fmt = "parquet"
        elif lowered.endswith((".csv", ".csv.gz")):
            fmt = "csv"
        else:
            raise ConfigError(f"data.source.format: cannot tell the format of {path!r}; set it")
    options = None
    if path.startswith("s3://"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        options = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    try:
        if fmt == "parquet":
            return pd.read_parquet(location, storage_options=options)
        dtypes = _string_columns(contract) if contract else None
        # Only an empty cell is missing: pandas would otherwise turn "n/a", "NULL" or
        # "None" into NaN silently, and a wrong value would pass as a missing one.
        return pd.read_csv(
            location, dtype=dtypes, storage_options=options, keep_default_na=False, na_values=[""]
        )
    except (OSError, PermissionError) as exc:
        if is_remote:
            raise ServiceUnavailable(f"cannot read {path}: {exc}") from None
        raise


def sql_url(url: str | None, url_env: str | None, field: str) -> str:
    if url is not None:
        return url
    value = os.environ.get(url_env or "")
    if not value:
        raise ConfigError(f"{field}: environment variable {url_env} is not set")
    return value


def read_sql(url: str, query: str) -> pd.DataFrame:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return pd.read_sql_query(sa.text(query), connection)
    except sa.exc.OperationalError as exc:
        raise ServiceUnavailable(f"cannot run the source query: {exc.orig}") from None
    finally:
        engine.dispose()


def read_source(settings: Settings) -> pd.DataFrame:
    source = settings.environment.data.source
    if isinstance(source, GeneratorSource):
        from pipeline.generator import generate

        return generate(settings.generator, settings.frames.count)
    if isinstance(source, FileSource):
        return read_file(
            source.path, source.format, settings.root, settings.contract, source.endpoint_url
        )
    url = sql_url(source.url, source.url_env, "data.source.url_env")
    return read_sql(url, source.query)
