"""the complaint governor's state per layer and provider, the provider behind each domain, and
the page a consent was given on

Revision ID: i21_governor
Revises: i20_domain_pauses
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i21_governor"
down_revision = "i20_domain_pauses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "governor_states",
        sa.Column("layer_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("day_sent", sa.Integer(), nullable=False),
        sa.Column("day_complaints", sa.Integer(), nullable=False),
        sa.Column("week_sent", sa.Integer(), nullable=False),
        sa.Column("week_complaints", sa.Integer(), nullable=False),
        sa.Column("changed_at", responder.models.UTCDateTime(), nullable=False),
        sa.Column("resumed_at", responder.models.UTCDateTime(), nullable=True),
        sa.Column("resumed_by", sa.String(length=120), nullable=True),
        sa.PrimaryKeyConstraint("layer_id", "provider"),
    )
    op.create_table(
        "mail_domains",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("checked_at", responder.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("page_url", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_column("page_url")
    op.drop_table("mail_domains")
    op.drop_table("governor_states")
