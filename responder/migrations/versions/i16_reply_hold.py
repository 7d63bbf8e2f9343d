"""a human reply holds the subscriber's counted mail until its enquiry is answered (or a while)

Revision ID: i16_reply_hold
Revises: i19_recipient_layer
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i16_reply_hold"
down_revision = "i19_recipient_layer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_until", responder.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("held_until")
