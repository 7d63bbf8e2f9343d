"""events keep their human-or-machine verdict's reason in a column of its own, so the dashboard
counts machine opens and clicks by reason with a plain GROUP BY

Revision ID: i16_verdict
Revises: i11_import_heartbeat

The reason moves out of ``data`` (``machine_reason``) into ``verdict``; human opens and clicks
get ``human``. Opens through Gmail's and Yahoo's image proxies were counted as machine: they
are the reader opening the mail, so they become human (their reason stays).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i16_verdict"
down_revision = "i11_import_heartbeat"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        reason = "json_extract(data, '$.machine_reason')"
        without = "json_remove(data, '$.machine_reason')"
    else:
        reason = "data->>'machine_reason'"
        without = "(data::jsonb - 'machine_reason')::json"
    op.execute(
        f"UPDATE events SET verdict = CASE WHEN {reason} = 'burst' THEN 'sweep' ELSE {reason} END, data = {without}"
        f" WHERE type IN ('open', 'click') AND {reason} IS NOT NULL"
    )
    op.execute("UPDATE events SET verdict = 'human' WHERE type IN ('open', 'click') AND verdict IS NULL")
    op.execute("UPDATE events SET machine = false WHERE type = 'open' AND verdict IN ('gmail_proxy', 'yahoo_proxy')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        put = "json_set(data, '$.machine_reason', verdict)"
    else:
        put = "(data::jsonb || jsonb_build_object('machine_reason', verdict))::json"
    op.execute(f"UPDATE events SET data = {put} WHERE machine AND verdict IS NOT NULL")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("verdict")
