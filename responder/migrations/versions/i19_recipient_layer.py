"""a newsletter's recipient keeps the layer they were in when sending started (the report by layer)

Revision ID: i19_recipient_layer
Revises: i20_import_enroll
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i19_recipient_layer"
down_revision = "i20_import_enroll"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("newsletter_recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("layer_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_newsletter_recipients_layer_id", "layers", ["layer_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("newsletter_recipients", schema=None) as batch_op:
        batch_op.drop_constraint("fk_newsletter_recipients_layer_id", type_="foreignkey")
        batch_op.drop_column("layer_id")
