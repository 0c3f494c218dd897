"""Reading the configured source: the generator, a CSV/Parquet file (local or s3://), or SQL.

Credentials never come from params: S3 keys from the usual AWS_* variables, a
database password inside the URL held by the variable that `url_env` names.

`fingerprint` says whether the data behind a source changed, the way DVC would: a
local file by its MD5, an s3:// object by its ETag and version, a query by a hash of
its result. The `source` stage writes it where `ingest` depends on it, because the
source's path lives in the environment's overlay and DVC cannot template a dependency
from a file it has to pick by `env`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # pandas loads where a frame is read: the `source` stage runs on every `dvc repro`,
    # and fingerprinting a file or the generator needs none.
    import pandas as pd

from pipeline.config import Contract, FileSource, GeneratorSource, Settings, SqlSource
from pipeline.errors import ConfigError, ServiceUnavailable

# The first data row of a CSV with a header is line 2 of the file.
CSV_FIRST_LINE = 2


def describe(source: GeneratorSource | FileSource | SqlSource, settings: Settings) -> str:
    """A short, secret-free description of the source, stored as lineage with every score."""
    if isinstance(source, GeneratorSource):
        g = settings.generator
        return f"generator:rows={g.rows},seed={g.seed}"
    if isinstance(source, FileSource):
        return f"file:{source.path}"
    return f"sql:{source.url_env or 'url'}"


def _string_columns(contract: Contract) -> dict[str, str]:
    # Read ids, codes and tokens as text, or a postcode like 01234 would lose its zero.
    return {s.name: "string" for s in contract.specs if s.dtype in ("string", "bool", "datetime")}


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lowered = path.lower()
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ConfigError(f"data.source.format: cannot tell the format of {path!r}; set it")


def _location(path: str, root: Path) -> str:
    return path if "://" in path else str((root / path).resolve())


def _storage_options(path: str, endpoint_url: str | None) -> dict | None:
    if not path.startswith("s3://"):
        return None
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def read_file(path: str, fmt: str, root: Path, contract: Contract | None, endpoint_url: str | None):
    """Read a CSV or Parquet file; a CSV's frame carries `attrs["first_line"]` for messages."""
    import pandas as pd

    is_remote = "://" in path
    location = _location(path, root)
    if not is_remote and not Path(location).is_file():
        raise ServiceUnavailable(f"source file not found: {location} (data.source.path {path!r})")
    fmt = _format_of(path, fmt)
    options = _storage_options(path, endpoint_url)
    try:
        if fmt == "parquet":
            return pd.read_parquet(location, storage_options=options)
        dtypes = _string_columns(contract) if contract else None
        # Only an empty cell is missing: pandas would otherwise turn "n/a", "NULL" or
        # "None" into NaN silently, and a wrong value would pass as a missing one.
        frame = pd.read_csv(
            location, dtype=dtypes, storage_options=options, keep_default_na=False, na_values=[""]
        )
        frame.attrs["first_line"] = CSV_FIRST_LINE
        return frame
    except FileNotFoundError:
        raise ServiceUnavailable(f"source file not found: {path}") from None
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
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            frame = pd.read_sql_query(sa.text(query), connection)
    except sa.exc.OperationalError as exc:
        raise ServiceUnavailable(f"cannot run the source query: {exc.orig}") from None
    finally:
        engine.dispose()
    frame.attrs["sha256"] = frame_sha256(frame)
    return frame


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of what was read: column names, then every row's values."""
    import pandas as pd

    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode("utf-8"))
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


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


def read_source_chunks(settings: Settings, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The source `chunk_rows` rows at a time, each chunk indexed by its rows' positions.

    Ingest reads this instead of `read_source` so that a large source is never held
    whole: the generator writes its text columns a chunk at a time, a local Parquet file
    is read by record batches, a CSV by pandas' chunked reader. A remote Parquet file
    and a query's result are read whole (a query's hash covers all of it, see
    `read_sql`) and handed on in slices. The first chunk carries the frame attrs
    (`first_line`, `sha256`) that `read_source` would.
    """

    source = settings.environment.data.source
    if isinstance(source, GeneratorSource):
        from pipeline.generator import generate_chunks

        yield from generate_chunks(settings.generator, settings.frames.count, chunk_rows)
        return
    if isinstance(source, FileSource):
        fmt = _format_of(source.path, source.format)
        location = _location(source.path, settings.root)
        if fmt == "csv" or ("://" not in source.path and Path(location).is_file()):
            yield from _file_chunks(source, fmt, location, settings, chunk_rows)
            return
    whole = read_source(settings)
    for start in range(0, max(len(whole), 1), chunk_rows):
        chunk = whole.iloc[start : start + chunk_rows]
        chunk.attrs = dict(whole.attrs)
        yield chunk


def _file_chunks(
    source: FileSource, fmt: str, location: str, settings: Settings, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """A local Parquet file by record batches, or any CSV by pandas' chunked reader."""
    import pandas as pd

    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = 0
        with pq.ParquetFile(location) as handle:
            schema = handle.schema_arrow
            for batch in handle.iter_batches(batch_size=chunk_rows):
                # Through a table with the file's schema, so pandas' own metadata (an
                # Int64 column, say) is applied as `pd.read_parquet` applies it.
                chunk = pa.Table.from_batches([batch], schema=schema).to_pandas()
                chunk.index = pd.RangeIndex(start, start + len(chunk))
                start += len(chunk)
                yield chunk
        return
    if not Path(location).is_file() and "://" not in source.path:
        raise ServiceUnavailable(
            f"source file not found: {location} (data.source.path {source.path!r})"
        )
    dtypes = _string_columns(settings.contract) if settings.contract else None
    try:
        reader = pd.read_csv(
            location,
            dtype=dtypes,
            storage_options=_storage_options(source.path, source.endpoint_url),
            keep_default_na=False,
            na_values=[""],
            chunksize=chunk_rows,
        )
        with reader:
            for chunk in reader:
                chunk.attrs["first_line"] = CSV_FIRST_LINE
                yield chunk
    except FileNotFoundError:
        raise ServiceUnavailable(f"source file not found: {source.path}") from None
    except (OSError, PermissionError) as exc:
        if "://" in source.path:
            raise ServiceUnavailable(f"cannot read {source.path}: {exc}") from None
        raise


def _file_md5(path: Path, state: dict[str, Any]) -> str:
    """MD5 of a local file; unchanged size and mtime reuse the last one, as DVC's state does."""
    stat = path.stat()
    key = [str(path), stat.st_size, stat.st_mtime_ns]
    if state.get("key") == key and state.get("md5"):
        return str(state["md5"])
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    state.update(key=key, md5=digest.hexdigest())
    return digest.hexdigest()


def fingerprint(settings: Settings, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies the data behind the source now; it changes exactly when the data does.

    Only content identity goes in (no absolute path, no mtime), so a fresh clone on
    another machine computes the same fingerprint. `state` is a per-machine cache.
    """
    source = settings.environment.data.source
    state = {} if state is None else state
    if isinstance(source, GeneratorSource):
        # The generator's output is a function of its params and code, both DVC deps of ingest.
        return {"kind": "generator"}
    if isinstance(source, FileSource):
        location = _location(source.path, settings.root)
        if "://" not in source.path:
            path = Path(location)
            if not path.is_file():
                raise ServiceUnavailable(
                    f"source file not found: {location} (data.source.path {source.path!r})"
                )
            return {
                "kind": "file",
                "path": source.path,
                "size": path.stat().st_size,
                "md5": _file_md5(path, state),
            }
        import fsspec

        options = _storage_options(source.path, source.endpoint_url) or {}
        try:
            fs, _, _ = fsspec.get_fs_token_paths(source.path, storage_options=options)
            info = fs.info(source.path)
        except (OSError, PermissionError) as exc:
            raise ServiceUnavailable(f"cannot reach {source.path}: {exc}") from None
        return {
            "kind": "file",
            "path": source.path,
            "size": info.get("size"),
            "etag": str(info.get("ETag", "")).strip('"'),
            "version_id": info.get("VersionId"),
        }
    url = sql_url(source.url, source.url_env, "data.source.url_env")
    frame = read_sql(url, source.query)
    return {
        "kind": "sql",
        "query_sha256": hashlib.sha256(source.query.encode("utf-8")).hexdigest(),
        "rows": len(frame),
        "sha256": frame.attrs["sha256"],
    }


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run(settings: Settings) -> dict:
    """Entry point of the `source` stage: rewrite data/source.json only when it changed."""
    from pipeline.io import write_json
    from pipeline.layout import Layout

    layout = Layout(settings.root)
    state = _read_json(layout.source_state)
    before = dict(state)
    current = fingerprint(settings, state)
    if current != _read_json(layout.source_fingerprint):
        write_json(layout.source_fingerprint, current)
    if state != before:
        write_json(layout.source_state, state)
    return current
