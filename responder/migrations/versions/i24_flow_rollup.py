"""The layer flow's day counts are rolled up too: where that roll-up stands

Revision ID: i24_flow_rollup
Revises: i23_rollups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i24_flow_rollup"
down_revision = "i23_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollup_state") as batch:
        batch.add_column(sa.Column("flow_rolled_until", responder.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("flow_rolled_until")
    op.execute("DELETE FROM rolled_figures WHERE scope = 'flow'")
