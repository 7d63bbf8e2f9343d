"""recipient domains paused after repeated policy refusals

Revision ID: i20_domain_pauses
Revises: i19_rate_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i20_domain_pauses"
down_revision = "i19_rate_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domain_pauses",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("until", responder.models.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", responder.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )


def downgrade() -> None:
    op.drop_table("domain_pauses")
