"""Maintained counts: where the layer flow's roll-up stands, and subscribers per layer and
status kept by triggers

Revision ID: i24_counts
Revises: i23_rollups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import responder.models

revision = "i24_counts"
down_revision = "i23_rollups"
branch_labels = None
depends_on = None

# SQLite: a row trigger per change (an update only when the layer or the status changed).
SQLITE = [
    """CREATE TRIGGER subscriber_counts_insert AFTER INSERT ON subscribers BEGIN
        INSERT INTO subscriber_counts (layer_id, status, n) VALUES (coalesce(NEW.layer_id, 0), NEW.status, 1)
        ON CONFLICT (layer_id, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER subscriber_counts_delete AFTER DELETE ON subscribers BEGIN
        UPDATE subscriber_counts SET n = n - 1 WHERE layer_id = coalesce(OLD.layer_id, 0) AND status = OLD.status;
    END""",
    """CREATE TRIGGER subscriber_counts_update AFTER UPDATE OF layer_id, status ON subscribers
    WHEN coalesce(OLD.layer_id, 0) <> coalesce(NEW.layer_id, 0) OR OLD.status <> NEW.status BEGIN
        UPDATE subscriber_counts SET n = n - 1 WHERE layer_id = coalesce(OLD.layer_id, 0) AND status = OLD.status;
        INSERT INTO subscriber_counts (layer_id, status, n) VALUES (coalesce(NEW.layer_id, 0), NEW.status, 1)
        ON CONFLICT (layer_id, status) DO UPDATE SET n = n + 1;
    END""",
]

# PostgreSQL: one trigger per statement over its transition tables, so an import of a million
# rows adds its counts once; a statement that moves no count (most updates) writes nothing and
# takes no lock on a count.
_APPLY = """CREATE FUNCTION subscriber_counts_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscriber_counts (layer_id, status, n)
    SELECT layer_id, status, sum(d) FROM ({rows}) AS moved
    GROUP BY layer_id, status HAVING sum(d) <> 0
    ON CONFLICT (layer_id, status) DO UPDATE SET n = subscriber_counts.n + excluded.n;
    RETURN NULL;
END $$"""
_OLD = "SELECT coalesce(layer_id, 0) AS layer_id, status, -1 AS d FROM old_rows"
_NEW = "SELECT coalesce(layer_id, 0) AS layer_id, status, 1 AS d FROM new_rows"
POSTGRESQL = [
    _APPLY.format(op="insert", rows=_NEW),
    _APPLY.format(op="delete", rows=_OLD),
    _APPLY.format(op="update", rows=f"{_OLD} UNION ALL {_NEW}"),
    "CREATE TRIGGER subscriber_counts_insert AFTER INSERT ON subscribers REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION subscriber_counts_insert()",
    "CREATE TRIGGER subscriber_counts_delete AFTER DELETE ON subscribers REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION subscriber_counts_delete()",
    "CREATE TRIGGER subscriber_counts_update AFTER UPDATE ON subscribers"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION subscriber_counts_update()",
]


def upgrade() -> None:
    with op.batch_alter_table("rollup_state") as batch:
        batch.add_column(sa.Column("flow_rolled_until", responder.models.UTCDateTime(), nullable=True))
    op.create_table(
        "subscriber_counts",
        sa.Column("layer_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("layer_id", "status"),
    )
    # The table is locked while the counts start, so no change slips between count and trigger.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE subscribers IN SHARE ROW EXCLUSIVE MODE")
    for statement in SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRESQL:
        op.execute(statement)
    op.execute(
        "INSERT INTO subscriber_counts (layer_id, status, n)"
        " SELECT coalesce(layer_id, 0), status, count(*) FROM subscribers GROUP BY coalesce(layer_id, 0), status"
    )


def downgrade() -> None:
    for name in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS subscriber_counts_{name}" + ("" if _sqlite() else " ON subscribers"))
        if not _sqlite():
            op.execute(f"DROP FUNCTION IF EXISTS subscriber_counts_{name}()")
    op.drop_table("subscriber_counts")
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("flow_rolled_until")
    op.execute("DELETE FROM rolled_figures WHERE scope = 'flow'")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
