"""a drip step held by the caps keeps when it first fell due, its turn among waiting mail

Revision ID: i16_caps_waiting_since
Revises: i16_layer_identity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i16_caps_waiting_since"
down_revision = "i16_layer_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_since", responder.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_column("waiting_since")
