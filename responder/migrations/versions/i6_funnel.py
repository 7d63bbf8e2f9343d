"""trust funnel: removed layers, step windows and conditions, referrals, newsletter progress,
webhooks

Revision ID: i6_funnel
Revises: i7_public
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i6_funnel"
down_revision = "i7_public"
branch_labels = None
depends_on = None

UTC = responder.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("layers") as batch_op:
        batch_op.add_column(sa.Column("removed_at", UTC, nullable=True))
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(sa.Column("referred_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_human_at", UTC, nullable=True))
        batch_op.create_foreign_key("fk_subscribers_referred_by", "subscribers", ["referred_by_id"], ["id"])
    with op.batch_alter_table("sequences") as batch_op:
        batch_op.add_column(sa.Column("product", sa.String(length=120), nullable=True))
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("send_window", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("condition", sa.JSON(), nullable=True))
    with op.batch_alter_table("newsletters") as batch_op:
        batch_op.add_column(sa.Column("total", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cursor", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("started_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("finished_at", UTC, nullable=True))
    op.create_table(
        "newsletter_recipients",
        sa.Column("newsletter_id", sa.Integer(), sa.ForeignKey("newsletters.id"), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), sa.ForeignKey("subscribers.id"), nullable=False),
        sa.PrimaryKeyConstraint("newsletter_id", "subscriber_id"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=255), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), sa.ForeignKey("webhooks.id"), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC, nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("delivered_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_webhook_id", "webhook_deliveries", ["webhook_id"])
    op.create_index("ix_subscribers_last_human", "subscribers", ["status", "last_human_at"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_last_human", "subscribers")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("newsletter_recipients")
    with op.batch_alter_table("newsletters") as batch_op:
        for column in ("finished_at", "started_at", "cursor", "total"):
            batch_op.drop_column(column)
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_column("condition")
        batch_op.drop_column("send_window")
    with op.batch_alter_table("sequences") as batch_op:
        batch_op.drop_column("product")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_constraint("fk_subscribers_referred_by", type_="foreignkey")
        batch_op.drop_column("last_human_at")
        batch_op.drop_column("referred_by_id")
    with op.batch_alter_table("layers") as batch_op:
        batch_op.drop_column("removed_at")
