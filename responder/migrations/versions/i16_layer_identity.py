"""layer history keeps what happened and the layers as they were: kind (enter, move, relocate,
sunset, revive), the positions and names of both layers at the time; newsletters keep their
target layers' names and positions

Rows written before this revision get what can still be known: kind ``enter`` where there was
no from layer, else ``move``; positions and names of the layers as they are now (a removed
layer's position is unknown, so it stays empty); an ``enter`` row for every subscriber placed in
a layer (confirmed or imported; the history did not record that), at the later of when they
were created and confirmed, into the layer their first move left or, with no move, the layer
they are in; and a ``sunset`` row for every recorded sunset, in the layer the subscriber is in.

Revision ID: i16_layer_identity
Revises: i16_verdict
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "i16_layer_identity"
down_revision = "i16_verdict"
branch_labels = None
depends_on = None

ENTERED = "entered before the history recorded entries"


def upgrade() -> None:
    with op.batch_alter_table("layer_history") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="move"))
        batch_op.add_column(sa.Column("from_position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("to_position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("from_name", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("to_name", sa.String(length=120), nullable=True))
    with op.batch_alter_table("newsletters") as batch_op:
        batch_op.add_column(sa.Column("layer_snapshot", sa.JSON(), nullable=False, server_default="[]"))
    op.create_index("ix_layer_history_subscriber_time", "layer_history", ["subscriber_id", "created_at"])
    op.create_index("ix_layer_history_created_at", "layer_history", ["created_at"])

    bind = op.get_bind()
    empty = "'[]'" if bind.dialect.name == "sqlite" else "CAST('[]' AS JSON)"
    op.execute("UPDATE layer_history SET kind = 'enter' WHERE from_layer_id IS NULL")
    first_move_from = (
        "SELECT h.from_layer_id FROM layer_history h WHERE h.subscriber_id = s.id AND h.from_layer_id IS NOT NULL "
        "ORDER BY h.created_at, h.id LIMIT 1"
    )
    op.execute(
        sa.text(
            "INSERT INTO layer_history (subscriber_id, kind, from_layer_id, to_layer_id, reason, event_ids, created_at) "
            f"SELECT s.id, 'enter', NULL, COALESCE(({first_move_from}), s.layer_id), :reason, {empty}, "
            "CASE WHEN s.confirmed_at > s.created_at THEN s.confirmed_at ELSE s.created_at END "
            "FROM subscribers s WHERE s.layer_id IS NOT NULL AND s.confirmed_at IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM layer_history h WHERE h.subscriber_id = s.id AND h.kind = 'enter')"
        ).bindparams(reason=ENTERED)
    )
    reason = "json_extract(e.data, '$.reason')" if bind.dialect.name == "sqlite" else "(e.data ->> 'reason')"
    op.execute(
        "INSERT INTO layer_history (subscriber_id, kind, from_layer_id, to_layer_id, reason, event_ids, created_at) "
        f"SELECT e.subscriber_id, 'sunset', s.layer_id, s.layer_id, COALESCE({reason}, 'sunset'), {empty}, e.created_at "
        "FROM events e JOIN subscribers s ON s.id = e.subscriber_id "
        "WHERE e.type = 'sunset' AND s.layer_id IS NOT NULL"
    )
    for side in ("from", "to"):
        op.execute(
            f"UPDATE layer_history SET {side}_name = "
            f"(SELECT l.name FROM layers l WHERE l.id = layer_history.{side}_layer_id), "
            f"{side}_position = (SELECT l.position FROM layers l "
            f"WHERE l.id = layer_history.{side}_layer_id AND l.removed_at IS NULL)"
        )

    layers = {
        row.id: {"id": row.id, "position": row.position if row.removed_at is None else None, "name": row.name}
        for row in bind.execute(sa.text("SELECT id, position, name, removed_at FROM layers"))
    }
    for row in bind.execute(sa.text("SELECT id, layer_ids FROM newsletters")).all():
        ids = row.layer_ids if isinstance(row.layer_ids, list) else json.loads(row.layer_ids or "[]")
        snapshot = [layers[i] for i in ids if i in layers]
        bind.execute(
            sa.text("UPDATE newsletters SET layer_snapshot = :snapshot WHERE id = :id").bindparams(
                sa.bindparam("snapshot", type_=sa.JSON())
            ),
            {"snapshot": snapshot, "id": row.id},
        )


def downgrade() -> None:
    op.execute("DELETE FROM layer_history WHERE kind IN ('enter', 'sunset', 'revive')")
    op.drop_index("ix_layer_history_created_at", "layer_history")
    op.drop_index("ix_layer_history_subscriber_time", "layer_history")
    with op.batch_alter_table("newsletters") as batch_op:
        batch_op.drop_column("layer_snapshot")
    with op.batch_alter_table("layer_history") as batch_op:
        batch_op.drop_column("to_name")
        batch_op.drop_column("from_name")
        batch_op.drop_column("to_position")
        batch_op.drop_column("from_position")
        batch_op.drop_column("kind")
