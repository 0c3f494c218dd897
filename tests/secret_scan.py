"""Look for planted strings everywhere the pipeline writes: files, Parquet, databases.

Raw bytes are not enough: Parquet pages are compressed, so a planted string in a
column would not show in the file's bytes. Parquet files (and DVC cache objects,
which are Parquet files without the extension) are decoded too.

Personal data is planted the same way (`plant_personal_data`): a name column and raw
ids that each carry one marker, so that a scan looks for two strings, not for every
one of thousands of values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PARQUET_MAGIC = b"PAR1"
# A direct identifier the default contract does not have: declared by `declare_name`.
NAME_COLUMN = "customer_name"


def plant_personal_data(frame: pd.DataFrame, tag: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """`frame` (the generator's) with a name per row and marked raw transaction ids.

    Returns the data and the markers: every name contains `name`, every raw id `id`,
    and neither can appear in a pseudonym (hex) or by chance.
    """
    planted = frame.copy()
    markers = {"name": f"Planted Person {tag}", "id": f"planted-id-{tag}"}
    planted[NAME_COLUMN] = [f"{markers['name']} {n}" for n in range(len(planted))]
    planted["transaction_id"] = [f"{markers['id']}-{n:07d}" for n in range(len(planted))]
    return planted, markers


def declare_name(params: str) -> str:
    """params.yaml's text with the planted name column in the contract, as a direct identifier."""
    spec = f"    - {{name: {NAME_COLUMN}, role: direct_identifier, dtype: string}}\n"
    new, count = re.subn(r"(?m)^(\s*- \{name: card_number,.*\n)", rf"\g<1>{spec}", params)
    assert count == 1, "no card_number column in the contract"
    return new


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
