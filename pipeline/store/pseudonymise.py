"""Raw record ids in a store whose environment now pseudonymises: refused, or rewritten once.

When `privacy.pseudonymise_ids` is switched on, new scores and labels carry keyed ids
while older rows carry the raw ones, and the two never join: a label for an old score
would be filed under a pseudonym no score has. So every writer (batch score, label, the
service) refuses to start while the environment's rows hold a raw id, and
`crispml store pseudonymise` rewrites them, once, in one transaction.

Why the shape of an id tells raw from pseudonymised, and not a marker: a marker (a
metadata table, or a column) needs a schema migration, and the schema belongs to the
store's own revisions. A pseudonym always has one shape, 32 lowercase hex characters
(`pipeline.privacy.PSEUDONYM_HEX`), and no id this project makes up has it (derived ids
are `r<16 hex>-<n>` in batch and `r-<32 hex>` online). A raw id of that very shape
(an MD5, or a UUID written without dashes) cannot be told apart, so a source that
delivers such ids is seen as already pseudonymised: that is the limit of this check.
A keyed comparison cannot replace it: HMAC has no inverse, so a stored id cannot be
tested for being the pseudonym of something without the raw id beside it.

This module never imports the key's code: the migration takes the keyed function as a
parameter, so the batch score stage, which only refuses, does not depend on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pipeline.errors import ConfigError
from pipeline.store import ScoreStore, new_score_id
from pipeline.store.schema import labels, scores

if TYPE_CHECKING:
    from pipeline.config import Privacy

# Must equal pipeline.privacy.PSEUDONYM_HEX (a test holds them together).
PSEUDONYM_HEX = 32
COMMAND = "crispml store pseudonymise"
# Raw ids rewritten per round trip: well under every driver's limit on bound parameters.
CHUNK_IDS = 1000

BATCH = "batch"

# Raw ids -> their pseudonyms, in the same order.
Rekey = Callable[[Sequence[str]], list[str]]


def derived_batch_score_id(
    environment: str, model_name: str, model_version: str, record_id: str
) -> str:
    """A batch score id as stores before revision 0004 derived it: a plain hash of the
    record id. Such an id gives the raw id away to anyone who can guess it, so the
    migration replaces it, by a random id as batch scores get now."""
    key = f"{environment}|{model_name}|{model_version}|{record_id}|batch"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def looks_pseudonymised(record_id: str) -> bool:
    return re.fullmatch(f"[0-9a-f]{{{PSEUDONYM_HEX}}}", record_id) is not None


def _is_pseudonym(column: Any, dialect: str) -> sa.ColumnElement[bool]:
    """`looks_pseudonymised` in SQL, so that counting needs no row to leave the database."""
    if dialect == "postgresql":
        return column.op("~", is_comparison=True)(f"^[0-9a-f]{{{PSEUDONYM_HEX}}}$")
    # SQLite has no regular expressions; GLOB is case-sensitive, like the pattern above.
    return sa.and_(
        sa.func.length(column) == PSEUDONYM_HEX,
        sa.not_(column.op("GLOB", is_comparison=True)("*[^0-9a-f]*")),
    )


def _raw_ids(table: sa.Table, environment: str, dialect: str) -> sa.Select:
    return sa.select(table.c.record_id).where(
        table.c.environment == environment, sa.not_(_is_pseudonym(table.c.record_id, dialect))
    )


@dataclass(frozen=True)
class RawIds:
    """How much of an environment's store still carries raw ids."""

    record_ids: int
    scores: int
    labels: int


def count_raw_ids(connection: sa.Connection, environment: str) -> RawIds:
    dialect = connection.dialect.name
    both = sa.union(
        _raw_ids(scores, environment, dialect), _raw_ids(labels, environment, dialect)
    ).subquery()

    def count(query: Any) -> int:
        return int(connection.execute(sa.select(sa.func.count()).select_from(query)).scalar_one())

    return RawIds(
        record_ids=count(both),
        scores=count(_raw_ids(scores, environment, dialect).subquery()),
        labels=count(_raw_ids(labels, environment, dialect).subquery()),
    )


def refusal(environment: str, store: str, raw: RawIds) -> str:
    return (
        f"environment {environment!r} pseudonymises record ids (privacy.pseudonymise_ids), "
        f"but the score store {store} still holds {raw.record_ids} raw record ids "
        f"({raw.scores} scores, {raw.labels} labels) that new ids would never join. "
        f"Rewrite them first with the same key: `{COMMAND} --env {environment}` "
        "(add --dry-run to see what it would change)"
    )


def require_pseudonymised(store: ScoreStore, environment: str, privacy: Privacy) -> None:
    """Stop a writer before its first row, rather than file keyed rows beside raw ones."""
    if not privacy.pseudonymise_ids:
        return
    with store.engine.connect() as connection:
        raw = count_raw_ids(connection, environment)
    if raw.record_ids:
        raise ConfigError(refusal(environment, store.safe_url, raw))


@dataclass
class Rewritten:
    """What `pseudonymise_store` changed (or, in a dry run, would change)."""

    environment: str
    store: str
    dry_run: bool
    record_ids: int = 0
    scores: int = 0
    # Of those, batch scores whose id was a hash of the raw id: given a random one.
    batch_score_ids: int = 0
    # Raw batch rows whose record the same model version scored under its pseudonym
    # too: removed, the pseudonymised score stays.
    duplicate_scores: int = 0
    labels: int = 0
    # Of a record labelled under both ids, the older label: removed.
    superseded_labels: int = 0
    # Afterwards: 0, unless a writer with the filter off added raw rows meanwhile (or
    # this was a dry run, which leaves every one).
    raw_record_ids_left: int = 0


def _next_raw_ids(
    connection: sa.Connection, environment: str, after: str | None, size: int
) -> list[str]:
    dialect = connection.dialect.name
    both = sa.union(
        _raw_ids(scores, environment, dialect), _raw_ids(labels, environment, dialect)
    ).subquery()
    query = sa.select(both.c.record_id).order_by(both.c.record_id).limit(size)
    if after is not None:
        query = query.where(both.c.record_id > after)
    return [row.record_id for row in connection.execute(query)]


def _rewrite_scores(
    connection: sa.Connection, environment: str, keyed: dict[str, str], result: Rewritten
) -> None:
    here = scores.c.environment == environment
    rows = connection.execute(
        sa.select(
            scores.c.score_id,
            scores.c.record_id,
            scores.c.model_name,
            scores.c.model_version,
            scores.c.channel,
        ).where(here, scores.c.record_id.in_(list(keyed)))
    ).all()
    # A batch score is unique per (model, version, record): a raw row whose record the
    # same version already scored under its pseudonym is the same score twice.
    stored = {
        (row.model_name, row.model_version, row.record_id)
        for row in connection.execute(
            sa.select(scores.c.model_name, scores.c.model_version, scores.c.record_id).where(
                here, scores.c.channel == BATCH, scores.c.record_id.in_(list(keyed.values()))
            )
        )
    }
    twins, moves = [], []
    for row in rows:
        pseudonym = keyed[row.record_id]
        if row.channel == BATCH and (row.model_name, row.model_version, pseudonym) in stored:
            twins.append(row.score_id)
            continue
        new_id = row.score_id
        if row.score_id == derived_batch_score_id(
            environment, row.model_name, row.model_version, row.record_id
        ):
            new_id = new_score_id()
        moves.append({"old": row.score_id, "new_score_id": new_id, "new_record_id": pseudonym})
    renamed = {m["old"]: m["new_score_id"] for m in moves if m["new_score_id"] != m["old"]}
    result.scores += len(moves)
    result.batch_score_ids += len(renamed)
    result.duplicate_scores += len(twins)
    if result.dry_run:
        return
    if twins:
        connection.execute(sa.delete(scores).where(scores.c.score_id.in_(twins)))
    if moves:
        connection.execute(
            sa.update(scores)
            .where(scores.c.score_id == sa.bindparam("old"))
            .values(score_id=sa.bindparam("new_score_id"), record_id=sa.bindparam("new_record_id")),
            moves,
        )
    if renamed:
        # A shadow score names the answered score it shadows by id.
        shadows = connection.execute(
            sa.select(scores.c.score_id, scores.c.shadow_of).where(
                scores.c.shadow_of.in_(list(renamed))
            )
        ).all()
        if shadows:
            connection.execute(
                sa.update(scores)
                .where(scores.c.score_id == sa.bindparam("b_shadow"))
                .values(shadow_of=sa.bindparam("b_champion")),
                [{"b_shadow": s.score_id, "b_champion": renamed[s.shadow_of]} for s in shadows],
            )


def _rewrite_labels(
    connection: sa.Connection, environment: str, keyed: dict[str, str], result: Rewritten
) -> None:
    here = labels.c.environment == environment
    raw = connection.execute(
        sa.select(labels.c.record_id, labels.c.labeled_at).where(
            here, labels.c.record_id.in_(list(keyed))
        )
    ).all()
    if not raw:
        return
    existing = {
        row.record_id: row.labeled_at
        for row in connection.execute(
            sa.select(labels.c.record_id, labels.c.labeled_at).where(
                here, labels.c.record_id.in_([keyed[r.record_id] for r in raw])
            )
        )
    }
    drop_raw, drop_keyed, moves = [], [], []
    for row in raw:
        pseudonym = keyed[row.record_id]
        if pseudonym in existing and existing[pseudonym] >= row.labeled_at:
            drop_raw.append(row.record_id)  # the newest word on a record wins
            continue
        if pseudonym in existing:
            drop_keyed.append(pseudonym)
        moves.append({"old": row.record_id, "new": pseudonym})
    result.labels += len(moves)
    result.superseded_labels += len(drop_raw) + len(drop_keyed)
    if result.dry_run:
        return
    gone = drop_raw + drop_keyed
    if gone:
        connection.execute(sa.delete(labels).where(here, labels.c.record_id.in_(gone)))
    if moves:
        connection.execute(
            sa.update(labels)
            .where(here, labels.c.record_id == sa.bindparam("old"))
            .values(record_id=sa.bindparam("new")),
            moves,
        )


def pseudonymise_store(
    store: ScoreStore,
    environment: str,
    rekey: Rekey,
    *,
    dry_run: bool = False,
    chunk: int = CHUNK_IDS,
) -> Rewritten:
    """Replace every raw record id of `environment` in scores and labels by `rekey`'s.

    One transaction: a failure halfway leaves the store as it was. Running it again
    finds no raw id and changes nothing. On PostgreSQL the two tables are locked
    against writers (readers go on) so that no raw row slips in while it runs; on
    SQLite stop the service first. A dry run reads only.
    """
    result = Rewritten(environment, store.safe_url, dry_run)
    opened = store.engine.connect() if dry_run else store.engine.begin()
    with opened as connection:
        if not dry_run and connection.dialect.name == "postgresql":
            connection.execute(
                sa.text(f"LOCK TABLE {scores.name}, {labels.name} IN SHARE ROW EXCLUSIVE MODE")
            )
        after: str | None = None
        while ids := _next_raw_ids(connection, environment, after, chunk):
            after = ids[-1]
            keyed = dict(zip(ids, rekey(ids), strict=True))
            bad = [k for k in keyed.values() if not looks_pseudonymised(k)]
            if bad:
                raise ConfigError(f"the key function returned {len(bad)} ids of the wrong shape")
            result.record_ids += len(ids)
            _rewrite_scores(connection, environment, keyed, result)
            _rewrite_labels(connection, environment, keyed, result)
        result.raw_record_ids_left = count_raw_ids(connection, environment).record_ids
    return result
