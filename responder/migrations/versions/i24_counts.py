"""Maintained counts: where the layer flow's roll-up stands, subscribers per layer and status,
and outbox rows per step or newsletter layer and state, kept by triggers

Revision ID: i24_counts
Revises: i23_rollups
"""

from __future__ import annotations

from collections.abc import Callable

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
_REFERENCING = {
    "insert": "NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
}


def _postgresql(table: str, counts: str, keys: str, rows: Callable[[str, int], str]) -> list[str]:
    """The functions and statement triggers keeping ``counts`` (``keys``, then ``n``) for
    ``table``; ``rows(transition table, ±1)`` selects ``keys`` and ``d`` from its rows."""
    old, new = rows("old_rows", -1), rows("new_rows", 1)
    moved = {"insert": new, "delete": old, "update": f"{old} UNION ALL {new}"}
    return [
        f"""CREATE FUNCTION {counts}_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {counts} ({keys}, n)
    SELECT {keys}, sum(d) FROM ({moved[op]}) AS moved GROUP BY {keys} HAVING sum(d) <> 0
    ON CONFLICT ({keys}) DO UPDATE SET n = {counts}.n + excluded.n;
    RETURN NULL;
END $$"""
        for op in _REFERENCING
    ] + [
        f"CREATE TRIGGER {counts}_{op} AFTER {op.upper()} ON {table} REFERENCING {referencing}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {counts}_{op}()"
        for op, referencing in _REFERENCING.items()
    ]


def _count(counts: str, keys: str, rows: str) -> str:
    """The statement starting ``counts`` from the ``rows`` there are."""
    return f"INSERT INTO {counts} ({keys}, n) SELECT {keys}, sum(d) FROM ({rows}) AS found GROUP BY {keys}"


SUBSCRIBER_KEYS = "layer_id, status"


def _subscriber_rows(table: str, d: int) -> str:
    return f"SELECT coalesce(layer_id, 0) AS layer_id, status, {d} AS d FROM {table}"


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
MAIL_KEYS = "scope, scope_id, layer_id, state, slot"


def _mail_rows(table: str, d: int, slots: int = MAIL_SLOTS) -> str:
    return (
        f"SELECT 'step' AS scope, step_id AS scope_id, 0 AS layer_id, state, id % {slots} AS slot, {d} AS d"
        f" FROM {table} WHERE step_id IS NOT NULL"
        f" UNION ALL SELECT 'newsletter', m.newsletter_id, coalesce(r.layer_id, 0), m.state, m.id % {slots}, {d}"
        f" FROM {table} m LEFT JOIN newsletter_recipients r"
        " ON r.newsletter_id = m.newsletter_id AND r.subscriber_id = m.subscriber_id WHERE m.newsletter_id IS NOT NULL"
    )


POSTGRESQL = _postgresql("subscribers", "subscriber_counts", SUBSCRIBER_KEYS, _subscriber_rows) + _postgresql(
    "messages", "mail_counts", MAIL_KEYS, _mail_rows
)


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
    for statement in SQLITE + SQLITE_MAIL if _sqlite() else POSTGRESQL:
        op.execute(statement)
    op.execute(_count("subscriber_counts", SUBSCRIBER_KEYS, _subscriber_rows("subscribers", 1)))
    op.execute(_count("mail_counts", MAIL_KEYS, _mail_rows("messages", 1, 1 if _sqlite() else MAIL_SLOTS)))


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
