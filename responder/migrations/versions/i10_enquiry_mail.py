"""enquiry mails leased and retried with backoff: ack_at, answer_at, answer_attempts

Revision ID: i10_enquiry_mail
Revises: i9_claim_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i10_enquiry_mail"
down_revision = "i9_claim_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enquiries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("ack_at", responder.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("answer_at", responder.models.UTCDateTime(timezone=True), nullable=True))
    # Mails a worker claimed and never recorded (it stopped mid-send): whether they went out is
    # unknown, and they may be months old. Failed, for an admin to see, rather than sent again.
    op.execute("UPDATE enquiries SET ack_state = 'failed' WHERE ack_state = 'sending'")
    op.execute("UPDATE enquiries SET answer_state = 'failed' WHERE answer_state = 'sending'")


def downgrade() -> None:
    with op.batch_alter_table("enquiries", schema=None) as batch_op:
        batch_op.drop_column("answer_at")
        batch_op.drop_column("ack_at")
        batch_op.drop_column("answer_attempts")
