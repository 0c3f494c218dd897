"""Shadow scores: a challenger's score stored beside the champion's answered one.

`shadow` is false for every existing row (they were all answered). `shadow_of` names
the champion's score_id that a shadow score pairs with; null for answered scores.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN with a constant default: no table rewrite on PostgreSQL 11+ or SQLite.
    op.add_column(
        "scores",
        sa.Column("shadow", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("scores", sa.Column("shadow_of", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("shadow_of")
        batch.drop_column("shadow")
