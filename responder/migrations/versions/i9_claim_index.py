"""an index in the outbox claim's order, over the due states only

Revision ID: i9_claim_index
Revises: i8_admin
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i9_claim_index"
down_revision = "i8_admin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The text of models.MESSAGES_DUE_STATES_SQL, which the claim's queries repeat.
    op.create_index(
        "ix_messages_due_order",
        "messages",
        ["next_attempt_at", "id"],
        unique=False,
        sqlite_where=sa.text("+state IN ('queued', 'deferred')"),
        postgresql_where=sa.text("state IN ('queued', 'deferred')"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_due_order", table_name="messages")
