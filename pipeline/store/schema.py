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
