"""Record ids for records that arrive without one.

A contract may declare no id column, or an id column with `required: false`. Every
stored score still needs a record id (labels by record id join on it), so the service
derives one from what it was given, deterministically:

    "r-" + sha256(canonical JSON of the model inputs, in `inputs` order,
                  + "#" + occurrence)[:32 hex characters]

* The canonical JSON is `{"<input>": value, ...}` in `inputs` order, compact, ASCII
  only, of the *validated* values: a bool sent as "Y" or as true hashes the same, a
  datetime as its naive UTC ISO form, a number as its float (or int) value.
* `occurrence` is the record's position among identical records (same content, no
  id) in the same request: 0 for the first, 1 for the second, ... So one request with
  two identical records gets two ids (two scores, two labels), while the same record
  sent again in a later request gets the same id again.

Batch ids are derived elsewhere, differently: ingest (`pipeline.contract.derive_record_ids`)
hashes the whole source row - every column the source delivers except the target, not
only the model inputs - into ids shaped "r<16 hex>-<occurrence>". The same record
scored online and in batch therefore gets two different derived ids (the shapes tell
them apart). Labels by `score_id` always work; labels by `record_id` need the id that
was answered for that score.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

DERIVED_ID_PREFIX = "r-"
DERIVED_ID_HEX = 32


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def derive_record_ids(
    inputs: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    ids: Sequence[str | None],
) -> list[str]:
    """`ids`, with every None replaced by an id derived from its row (see the module doc).

    `rows` are the validated model input values of one request, in `inputs` order, and
    `ids` the ids the records came with (None: none given), in the same order.
    """
    seen: Counter[str] = Counter()
    out: list[str] = []
    for record_id, row in zip(ids, rows, strict=True):
        if record_id is not None:
            out.append(record_id)
            continue
        content = json.dumps(
            dict(zip(inputs, map(_plain, row), strict=True)),
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        occurrence = seen[content]
        seen[content] += 1
        digest = hashlib.sha256(f"{content}#{occurrence}".encode("ascii")).hexdigest()
        out.append(DERIVED_ID_PREFIX + digest[:DERIVED_ID_HEX])
    return out
