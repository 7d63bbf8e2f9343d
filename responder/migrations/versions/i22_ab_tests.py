"""A/B tests of newsletters and drip steps: the tests, their variants, and the variant each
message was given when it was queued

Revision ID: i22_ab_tests
Revises: i21_governor
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i22_ab_tests"
down_revision = "i21_governor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ab_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("newsletter_id", sa.Integer(), nullable=True),
        sa.Column("step_id", sa.Integer(), nullable=True),
        sa.Column("share_pct", sa.Integer(), nullable=False),
        sa.Column("wait_s", sa.Integer(), nullable=False),
        sa.Column("on_no_winner", sa.String(length=8), nullable=False),
        sa.Column("keep_after", sa.Integer(), nullable=True),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("tested_at", responder.models.UTCDateTime(), nullable=True),
        sa.Column("winner_id", sa.Integer(), nullable=True),
        sa.Column("decided_by", sa.String(length=8), nullable=True),
        sa.Column("decided_at", responder.models.UTCDateTime(), nullable=True),
        sa.Column("created_at", responder.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["newsletter_id"], ["newsletters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("newsletter_id"),
        sa.UniqueConstraint("step_id"),
    )
    op.create_table(
        "ab_variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("test_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=1), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=True),
        sa.Column("template_name", sa.String(length=120), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("derived_template_id", sa.Integer(), nullable=True),
        sa.Column("derived_from_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["test_id"], ["ab_tests.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["derived_template_id"], ["templates.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("test_id", "label"),
    )
    op.create_index("ix_ab_variants_test_id", "ab_variants", ["test_id"], unique=False)
    # A plain ADD COLUMN (with its REFERENCES inline on SQLite, a constraint on PostgreSQL): the
    # outbox is the largest table, and SQLite's batch mode would copy it whole.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE messages ADD COLUMN variant_id INTEGER REFERENCES ab_variants (id)")
    else:
        op.add_column("messages", sa.Column("variant_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_messages_variant_id", "messages", "ab_variants", ["variant_id"], ["id"])
    op.create_index(
        "ix_messages_variant",
        "messages",
        ["variant_id"],
        unique=False,
        sqlite_where=sa.text("variant_id IS NOT NULL"),
        postgresql_where=sa.text("variant_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_variant", table_name="messages")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("messages", schema=None) as batch_op:  # SQLite cannot drop a REFERENCES column
            batch_op.drop_column("variant_id")
    else:
        op.drop_constraint("fk_messages_variant_id", "messages", type_="foreignkey")
        op.drop_column("messages", "variant_id")
    op.drop_index("ix_ab_variants_test_id", table_name="ab_variants")
    op.drop_table("ab_variants")
    op.drop_table("ab_tests")
