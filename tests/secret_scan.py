"""Look for planted strings everywhere the pipeline writes: files, Parquet, databases.

Raw bytes are not enough: Parquet pages are compressed, so a planted string in a
column would not show in the file's bytes. Parquet files (and DVC cache objects,
which are Parquet files without the extension) are decoded too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PARQUET_MAGIC = b"PAR1"


def _parquet_text(path: Path) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    return "\n".join(
        [
            table.to_pandas().to_csv(index=False),
            *(k.decode(errors="replace") + v.decode(errors="replace") for k, v in metadata.items()),
        ]
    )


def find_in_files(root: Path, secrets: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
    """`path: secret` for every file below `root` that holds a secret, decoded or raw."""
    secrets = [s for s in secrets if s]
    skipped = {root / name for name in skip}
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(path.is_relative_to(s) for s in skipped):
            continue
        data = path.read_bytes()
        texts = [data.decode("utf-8", "replace")]
        if data[:4] == PARQUET_MAGIC and data[-4:] == PARQUET_MAGIC:
            texts.append(_parquet_text(path))
        for secret in secrets:
            if any(secret in text for text in texts):
                found.append(f"{path.relative_to(root)}: {secret}")
    return found


def find_in_database(url: str, secrets: Iterable[str]) -> list[str]:
    """`table: secret` for every table (of the connection's schema) whose rows hold a secret."""
    import pandas as pd
    import sqlalchemy as sa

    secrets = [s for s in secrets if s]
    engine = sa.create_engine(url)
    found = []
    try:
        with engine.connect() as conn:
            schema = None
            if engine.dialect.name == "postgresql":
                schema = conn.execute(sa.text("select current_schema()")).scalar_one()
            for table in sa.inspect(conn).get_table_names(schema=schema):
                rows = pd.read_sql_query(sa.text(f'select * from "{table}"'), conn)
                text = rows.to_csv(index=False)
                found += [f"{table}: {secret}" for secret in secrets if secret in text]
    finally:
        engine.dispose()
    return found
