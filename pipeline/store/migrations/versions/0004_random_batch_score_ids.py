"""Batch scores: one per (environment, model, version, record), whatever their id.

Batch score ids used to be a hash of exactly these four values, so the primary key kept a
re-run from storing a record twice, and anyone who knew a transaction id could compute
its score id. Ids are random from this revision on; this partial unique index takes over
the idempotency. Existing batch rows cannot violate it: their ids were that very hash.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BATCH_ONLY = sa.text("channel = 'batch'")


def upgrade() -> None:
    op.create_index(
        "ux_scores_batch_record",
        "scores",
        ["environment", "model_name", "model_version", "record_id"],
        unique=True,
        sqlite_where=BATCH_ONLY,
        postgresql_where=BATCH_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ux_scores_batch_record", table_name="scores")
