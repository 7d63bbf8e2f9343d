"""inbound mail recorded once: the digest of each recorded mail's Message-ID and address

Revision ID: i18_inbound_once
Revises: i16_ask
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i18_inbound_once"
down_revision = "i16_ask"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=80), nullable=False),
        sa.Column("received_at", responder.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_index(op.f("ix_inbound_mail_received_at"), "inbound_mail", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_inbound_mail_received_at"), table_name="inbound_mail")
    op.drop_table("inbound_mail")
