"""Roll-ups and retention: daily figures the reports read, where the roll-up stands, the drip
steps whose outbox rows were deleted, the indexes the roll-up and the reports count from, and
the claim's index of the mail that goes ahead of newsletters

Revision ID: i23_rollups
Revises: i22_ab_tests
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i23_rollups"
down_revision = "i22_ab_tests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rolled_figures",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("scope", sa.String(length=12), nullable=False),
        sa.Column("scope_id", sa.Integer(), nullable=False),
        sa.Column("layer_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=48), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "scope", "scope_id", "layer_id", "metric"),
    )
    op.create_table(
        "rollup_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("rolled_until", responder.models.UTCDateTime(), nullable=True),
        sa.Column("pruned_before", responder.models.UTCDateTime(), nullable=True),
        sa.Column("pruned_messages", sa.BigInteger(), nullable=False),
        sa.Column("pruned_events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "sent_steps",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"]),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscriber_id", "step_id"),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"], unique=False)
    for column in ("step_id", "newsletter_id"):
        op.create_index(
            f"ix_messages_{column.removesuffix('_id')}_state",
            "messages",
            [column, "state"],
            unique=False,
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    op.create_index(
        "ix_messages_due_first",
        "messages",
        ["next_attempt_at", "id"],
        unique=False,
        sqlite_where=sa.text("+state IN ('queued', 'deferred') AND kind <> 'newsletter'"),
        postgresql_where=sa.text("state IN ('queued', 'deferred') AND kind <> 'newsletter'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_due_first", table_name="messages")
    op.drop_index("ix_messages_newsletter_state", table_name="messages")
    op.drop_index("ix_messages_step_state", table_name="messages")
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_table("sent_steps")
    op.drop_table("rollup_state")
    op.drop_table("rolled_figures")
