"""public endpoints: consent version, pause and frequency, suppressions, enquiry follow-up

Revision ID: i7_public
Revises: i5_delivery
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i7_public"
down_revision = "i5_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_until", responder.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("frequency", sa.String(length=16), nullable=False, server_default="normal"))
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consent_version", sa.String(length=64), nullable=True))
    with op.batch_alter_table("enquiries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("source", sa.String(length=16), nullable=False, server_default="form"))
        batch_op.add_column(sa.Column("message_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ack_state", sa.String(length=16), nullable=False, server_default="due"))
        batch_op.add_column(sa.Column("ack_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("answer", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("answer_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("answered_at", responder.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("digested_at", responder.models.UTCDateTime(), nullable=True))
        batch_op.create_foreign_key("fk_enquiries_message_id", "messages", ["message_id"], ["id"])
        batch_op.create_index("ix_enquiries_state_created", ["state", "created_at"], unique=False)
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email_hmac", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("created_at", responder.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email_hmac"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    with op.batch_alter_table("enquiries", schema=None) as batch_op:
        batch_op.drop_index("ix_enquiries_state_created")
        batch_op.drop_constraint("fk_enquiries_message_id", type_="foreignkey")
        for column in (
            "digested_at",
            "answered_at",
            "answer_state",
            "answer",
            "ack_attempts",
            "ack_state",
            "message_id",
            "source",
            "name",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_column("consent_version")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("frequency")
        batch_op.drop_column("paused_until")
