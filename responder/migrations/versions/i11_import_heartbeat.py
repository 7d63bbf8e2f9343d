"""import jobs record when they last made progress, so a dead process's job shows as failed

Revision ID: i11_import_heartbeat
Revises: i10_enquiry_mail
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i11_import_heartbeat"
down_revision = "i10_enquiry_mail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", responder.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
