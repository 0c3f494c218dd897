"""Scores with lineage, and labels.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scores",
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
    )
    op.create_index("ix_scores_record", "scores", ["environment", "record_id"])
    op.create_index(
        "ix_scores_model_frame", "scores", ["environment", "model_name", "model_version", "frame"]
    )
    op.create_index("ix_scores_scored_at", "scores", ["scored_at"])
    op.create_table(
        "labels",
        sa.Column("environment", sa.String(32), primary_key=True),
        sa.Column("record_id", sa.String(128), primary_key=True),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("source", sa.String(300), nullable=False),
        sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_index("ix_scores_scored_at", table_name="scores")
    op.drop_index("ix_scores_model_frame", table_name="scores")
    op.drop_index("ix_scores_record", table_name="scores")
    op.drop_table("scores")
