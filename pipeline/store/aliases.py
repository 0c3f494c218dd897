"""The alias history's two tables, and the lock that makes a move and its record one act.

A move of a registry alias and the event that records it must not be separable: when
two promotions interleave, each must see the other's event before writing its own, or
one of them is lost. So every move runs inside `locked_alias`: one store transaction
that first takes the alias's head row (created on first use), holds it while the caller
moves the MLflow alias, and commits the event with it.

* PostgreSQL: the head row is read `FOR UPDATE`; a second mover of the same alias waits
  on that row until the first commits, then reads the head the first one left. Movers
  of other aliases do not wait.
* SQLite: `BEGIN IMMEDIATE` takes the database's write lock at the start of the
  transaction (a deferred BEGIN would take it only at the first write, after the head
  was read); other movers wait on `busy_timeout`, and so do score writers, for as long
  as the MLflow call takes.

The event's `seq` (1, 2, 3... per alias) is part of its primary key, so should two
writers ever take the same place in a history, the second fails instead of hiding the
first. No SQL about these tables lives anywhere else; `pipeline.registry` decides what
to record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from pipeline.store.schema import alias_events, alias_heads

if TYPE_CHECKING:
    from pipeline.store import ScoreStore

EventKind = Literal["move", "outside", "imported"]


def _aware(value: datetime) -> datetime:
    """SQLite hands stored times back naive; the store writes UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class AliasEvent:
    """One recorded move: from which version to which (None: no version), who, why."""

    seq: int
    kind: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    git_commit: str | None
    pipeline: str | None
    moved_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The event as `crispml alias history --json` and the rollback replay read it.

        `version` and `previous` keep the names of the registered-model tag that held
        the history before, so readers of either shape agree.
        """
        return {
            "seq": self.seq,
            "version": self.to_version,
            "previous": self.from_version,
            "at": _aware(self.moved_at).isoformat(timespec="seconds"),
            "actor": self.actor,
            "reason": self.reason,
            "git_commit": self.git_commit,
            "pipeline": self.pipeline,
            "kind": self.kind,
        }


def _event(row: Any) -> AliasEvent:
    return AliasEvent(
        seq=int(row.seq),
        kind=row.kind,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        git_commit=row.git_commit,
        pipeline=row.pipeline,
        moved_at=_aware(row.moved_at),
    )


class LockedAlias:
    """The head of one alias's history, held until the transaction ends."""

    def __init__(
        self,
        connection: sa.Connection,
        model_name: str,
        alias: str,
        seq: int,
        version: str | None,
        created: bool,
    ) -> None:
        self._connection = connection
        self.model_name = model_name
        self.alias = alias
        self.seq = seq
        # Where the recorded history leaves the alias (None: nowhere, or no history).
        self.version = version
        # This transaction made the head: the store had never recorded the alias.
        self.created = created

    def append(
        self,
        kind: EventKind,
        from_version: str | None,
        to_version: str | None,
        actor: str,
        reason: str,
        git_commit: str | None = None,
        pipeline: str | None = None,
        at: datetime | None = None,
    ) -> AliasEvent:
        """Add the next event and advance the head; committed with the transaction."""
        from pipeline.store import utcnow

        event = AliasEvent(
            seq=self.seq + 1,
            kind=kind,
            from_version=from_version,
            to_version=to_version,
            actor=actor[:255],
            reason=reason,
            git_commit=git_commit[:64] if git_commit else None,
            pipeline=pipeline[:500] if pipeline else None,
            moved_at=at or utcnow(),
        )
        self._connection.execute(
            alias_events.insert().values(
                model_name=self.model_name, alias=self.alias, **dataclasses.asdict(event)
            )
        )
        self._connection.execute(
            alias_heads.update()
            .where(
                alias_heads.c.model_name == self.model_name,
                alias_heads.c.alias == self.alias,
            )
            .values(seq=event.seq, version=to_version, updated_at=utcnow())
        )
        self.seq, self.version = event.seq, to_version
        return event


def _take_head(connection: sa.Connection, dialect: str, model_name: str, alias: str) -> LockedAlias:
    from pipeline.store import _insert, utcnow

    # Make the head if it is missing. A concurrent maker's row wins the conflict (on
    # PostgreSQL this waits for its transaction), and RETURNING says who made it.
    created = (
        connection.execute(
            _insert(dialect, alias_heads)
            .values(model_name=model_name, alias=alias, seq=0, version=None, updated_at=utcnow())
            .on_conflict_do_nothing()
            .returning(alias_heads.c.seq)
        ).first()
        is not None
    )
    head = connection.execute(
        sa.select(alias_heads.c.seq, alias_heads.c.version)
        .where(alias_heads.c.model_name == model_name, alias_heads.c.alias == alias)
        .with_for_update()  # rendered on PostgreSQL; SQLite's lock is BEGIN IMMEDIATE
    ).one()
    return LockedAlias(connection, model_name, alias, int(head.seq), head.version, created)


@contextmanager
def locked_alias(store: ScoreStore, model_name: str, alias: str) -> Iterator[LockedAlias]:
    """One transaction holding the alias's head: commits on exit, rolls back on error."""
    with store.engine.connect() as connection:
        transaction = connection.begin()
        try:
            if store.dialect == "sqlite":
                # pysqlite begins lazily, at the first write; the lock is needed before
                # the first read. Issued by hand, pysqlite does not begin a second time.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield _take_head(connection, store.dialect, model_name, alias)
            transaction.commit()
        except BaseException:
            if transaction.is_active:
                transaction.rollback()
            raise


def read_history(store: ScoreStore, model_name: str, alias: str) -> list[AliasEvent] | None:
    """The alias's events, oldest first; None when this store never recorded the alias."""
    with store.engine.connect() as connection:
        known = connection.execute(
            sa.select(alias_heads.c.seq).where(
                alias_heads.c.model_name == model_name, alias_heads.c.alias == alias
            )
        ).first()
        if known is None:
            return None
        rows = connection.execute(
            sa.select(alias_events)
            .where(alias_events.c.model_name == model_name, alias_events.c.alias == alias)
            .order_by(alias_events.c.seq)
        )
        return [_event(row) for row in rows]
