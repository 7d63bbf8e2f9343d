"""an import says what its subscribers get of their layer's sequence (imports made before this
enrolled everyone from the first step at once)

Revision ID: i20_import_enroll
Revises: i16_caps_waiting_since
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i20_import_enroll"
down_revision = "i16_caps_waiting_since"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enroll", sa.String(length=16), nullable=False, server_default="start"))
        batch_op.add_column(sa.Column("spread_s", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.drop_column("spread_s")
        batch_op.drop_column("enroll")
