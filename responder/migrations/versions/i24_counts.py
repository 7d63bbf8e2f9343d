"""Maintained counts: where the layer flow's roll-up stands, subscribers per layer and status,
and outbox rows per step or newsletter layer and state, kept by triggers

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


# The outbox: a step's rows and a newsletter's per recipient layer, by state.
_RECIPIENT_LAYER = (
    "coalesce((SELECT r.layer_id FROM newsletter_recipients r"
    " WHERE r.newsletter_id = {row}.newsletter_id AND r.subscriber_id = {row}.subscriber_id), 0)"
)


def _sqlite_mail(row: str, n: int) -> str:
    """The statements adding ``n`` for the ``row`` (NEW or OLD) of a trigger on messages (an
    upsert guarded by its WHERE: a row counts for its step or for its newsletter)."""
    return " ".join(
        "INSERT INTO mail_counts (scope, scope_id, layer_id, state, slot, n)"
        f" SELECT '{scope}', {row}.{column}, {layer}, {row}.state, 0, {n} WHERE {row}.{column} IS NOT NULL"
        f" ON CONFLICT (scope, scope_id, layer_id, state, slot) DO UPDATE SET n = n + {n};"
        for scope, column, layer in (
            ("step", "step_id", "0"),
            ("newsletter", "newsletter_id", _RECIPIENT_LAYER.format(row=row)),
        )
    )


SQLITE_MAIL = [
    f"CREATE TRIGGER mail_counts_insert AFTER INSERT ON messages BEGIN {_sqlite_mail('NEW', 1)} END",
    f"CREATE TRIGGER mail_counts_delete AFTER DELETE ON messages BEGIN {_sqlite_mail('OLD', -1)} END",
    "CREATE TRIGGER mail_counts_update AFTER UPDATE OF state ON messages WHEN OLD.state <> NEW.state BEGIN"
    f" {_sqlite_mail('OLD', -1)} {_sqlite_mail('NEW', 1)} END",
]

MAIL_SLOTS = 8
_MAIL_ROWS = (
    "SELECT 'step' AS scope, step_id AS scope_id, 0 AS layer_id, state, id % {slots} AS slot, {d} AS d"
    " FROM {table} WHERE step_id IS NOT NULL"
    " UNION ALL SELECT 'newsletter', m.newsletter_id, coalesce(r.layer_id, 0), m.state, m.id % {slots}, {d}"
    " FROM {table} m LEFT JOIN newsletter_recipients r"
    " ON r.newsletter_id = m.newsletter_id AND r.subscriber_id = m.subscriber_id WHERE m.newsletter_id IS NOT NULL"
)
_MAIL_APPLY = """CREATE FUNCTION mail_counts_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mail_counts (scope, scope_id, layer_id, state, slot, n)
    SELECT scope, scope_id, layer_id, state, slot, sum(d) FROM ({rows}) AS moved
    GROUP BY scope, scope_id, layer_id, state, slot HAVING sum(d) <> 0
    ON CONFLICT (scope, scope_id, layer_id, state, slot) DO UPDATE SET n = mail_counts.n + excluded.n;
    RETURN NULL;
END $$"""
_MAIL_OLD = _MAIL_ROWS.format(slots=MAIL_SLOTS, d=-1, table="old_rows")
_MAIL_NEW = _MAIL_ROWS.format(slots=MAIL_SLOTS, d=1, table="new_rows")
POSTGRESQL_MAIL = [
    _MAIL_APPLY.format(op="insert", rows=_MAIL_NEW),
    _MAIL_APPLY.format(op="delete", rows=_MAIL_OLD),
    _MAIL_APPLY.format(op="update", rows=f"{_MAIL_OLD} UNION ALL {_MAIL_NEW}"),
    "CREATE TRIGGER mail_counts_insert AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION mail_counts_insert()",
    "CREATE TRIGGER mail_counts_delete AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION mail_counts_delete()",
    "CREATE TRIGGER mail_counts_update AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION mail_counts_update()",
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
    op.create_table(
        "mail_counts",
        sa.Column("scope", sa.String(length=12), nullable=False),
        sa.Column("scope_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("layer_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "layer_id", "state", "slot"),
    )
    # The tables are locked while the counts start, so no change slips between count and trigger.
    if not _sqlite():
        op.execute("LOCK TABLE subscribers, messages IN SHARE ROW EXCLUSIVE MODE")
    for statement in SQLITE + SQLITE_MAIL if _sqlite() else POSTGRESQL + POSTGRESQL_MAIL:
        op.execute(statement)
    op.execute(
        "INSERT INTO subscriber_counts (layer_id, status, n)"
        " SELECT coalesce(layer_id, 0), status, count(*) FROM subscribers GROUP BY coalesce(layer_id, 0), status"
    )
    slots = 1 if _sqlite() else MAIL_SLOTS
    op.execute(
        "INSERT INTO mail_counts (scope, scope_id, layer_id, state, slot, n)"
        " SELECT scope, scope_id, layer_id, state, slot, count(*) FROM ("
        + _MAIL_ROWS.format(slots=slots, d=1, table="messages")
        + ") AS mail GROUP BY scope, scope_id, layer_id, state, slot"
    )


def downgrade() -> None:
    for table, counts in (("subscribers", "subscriber_counts"), ("messages", "mail_counts")):
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {counts}_{name}" + ("" if _sqlite() else f" ON {table}"))
            if not _sqlite():
                op.execute(f"DROP FUNCTION IF EXISTS {counts}_{name}()")
        op.drop_table(counts)
    with op.batch_alter_table("rollup_state") as batch:
        batch.drop_column("flow_rolled_until")
    op.execute("DELETE FROM rolled_figures WHERE scope = 'flow'")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
