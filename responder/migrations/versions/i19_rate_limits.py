"""limits kept in the database: hits per bucket (a normalised mailbox, say) per fixed window

Revision ID: i19_rate_limits
Revises: i18_inbound_once
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i19_rate_limits"
down_revision = "i18_inbound_once"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.String(length=320), nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "window_start"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
