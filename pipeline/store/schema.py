"""Tables of the score store. Alembic migrations (store/migrations) create and evolve them.

Every score row carries its full lineage, so an auditor can answer "which model, from
which commit, in which environment, scored this record, and when" from one row.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("score_id", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(128), nullable=False),
    sa.Column("frame", sa.Integer, nullable=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("decision", sa.Integer, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("git_commit", sa.String(64), nullable=False),
    sa.Column("environment", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("source", sa.String(300), nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    # A challenger's score, computed in shadow beside the champion's and never answered
    # (revision 0002). `shadow_of` is the score_id of the champion's answered score of
    # the same request and record: the pair a champion/challenger comparison reads.
    sa.Column("shadow", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("shadow_of", sa.String(64), nullable=True),
    sa.Index("ix_scores_record", "environment", "record_id"),
    sa.Index("ix_scores_model_frame", "environment", "model_name", "model_version", "frame"),
    sa.Index("ix_scores_scored_at", "scored_at"),
    # A record scored in batch by one model version in one environment is stored once
    # (revision 0004). Batch score ids are random, so this index, not the primary key,
    # is what makes a re-run of `crispml score` a no-op. Online scores are left out: the
    # service stores every answer, even of a record it answered before.
    sa.Index(
        "ux_scores_batch_record",
        "environment",
        "model_name",
        "model_version",
        "record_id",
        unique=True,
        sqlite_where=sa.text("channel = 'batch'"),
        postgresql_where=sa.text("channel = 'batch'"),
    ),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("environment", sa.String(32), primary_key=True),
    sa.Column("record_id", sa.String(128), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("source", sa.String(300), nullable=False),
    sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=False),
)

# The history of registry aliases (revision 0003). MLflow keeps only an alias's current
# holder; audit and rollback need every move, written in the same transaction that
# serialises the move (pipeline.registry.move_alias), so concurrent moves are never lost.

alias_heads = sa.Table(
    "alias_heads",
    metadata,
    # One row per alias, locked by every move of it: the point concurrent movers queue on.
    sa.Column("model_name", sa.String(255), primary_key=True),
    sa.Column("alias", sa.String(255), primary_key=True),
    # How many events the alias has, and the version its newest one left it on.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("version", sa.String(32), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

alias_events = sa.Table(
    "alias_events",
    metadata,
    sa.Column("model_name", sa.String(255), primary_key=True),
    sa.Column("alias", sa.String(255), primary_key=True),
    # 1, 2, 3... per alias. Being part of the key, two writers that somehow both took
    # the same place in the history collide instead of one silently overwriting.
    sa.Column("seq", sa.Integer, primary_key=True),
    # "move" (crispml moved or removed the alias), "outside" (crispml found the alias
    # on a version its history did not lead to), "imported" (read from the registered
    # model tag that held the history before revision 0003).
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("from_version", sa.String(32), nullable=True),
    sa.Column("to_version", sa.String(32), nullable=True),  # null: the alias was removed
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("git_commit", sa.String(64), nullable=True),
    sa.Column("pipeline", sa.String(500), nullable=True),
    sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
)
