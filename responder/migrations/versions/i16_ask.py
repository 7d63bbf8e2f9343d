"""re-permission before sunset: when the subscriber was last asked whether to keep mailing them

Revision ID: i16_ask
Revises: i16_reply_hold
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i16_ask"
down_revision = "i16_reply_hold"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("asked_at", responder.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("asked_at")
