"""The i16 upgrade gives rows written before it what can still be known: kinds, the layers'
positions and names, an entry for everyone placed in a layer, a row for every sunset, and
newsletters' target layers by name."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, text

from responder.db import Database
from responder.models import LayerHistory, Newsletter

from .db_template import upgrade_to

T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


BEFORE = [
    "INSERT INTO layers (id, position, name, label, description, rule, created_at, removed_at) VALUES"
    " (1, 1, 'New', 'New', '', '{}', '2026-01-01 00:00:00', NULL),"
    " (2, 2, 'Mid', 'Mid', '', '{}', '2026-01-01 00:00:00', NULL),"
    " (3, 1003, 'Old (removed #3)', 'Old', '', '{}', '2026-01-01 00:00:00', '2026-01-20 00:00:00')",
    # s1 confirmed into layer 3 (removed since) and moved to 2; s2 imported with an older
    # consent; s3 sunset; s4 never confirmed.
    "INSERT INTO subscribers (id, email, name, status, layer_id, attributes, tags, created_at, confirmed_at)"
    " VALUES (1, 's1@example.com', '', 'active', 2, '{}', '[]', '2026-01-01 00:00:00', '2026-01-01 01:00:00'),"
    " (2, 's2@example.com', '', 'active', 1, '{}', '[]', '2026-01-03 00:00:00', '2025-01-01 00:00:00'),"
    " (3, 's3@example.com', '', 'sunset', 1, '{}', '[]', '2026-01-01 00:00:00', '2026-01-01 00:00:00'),"
    " (4, 's4@example.com', '', 'pending', NULL, '{}', '[]', '2026-01-01 00:00:00', NULL)",
    "INSERT INTO layer_history (subscriber_id, from_layer_id, to_layer_id, reason, event_ids, created_at)"
    " VALUES (1, 3, 2, 'layer 1 (Old) removed', '[]', '2026-01-20 00:00:00')",
    "INSERT INTO events (subscriber_id, type, machine, data, created_at) VALUES"
    " (3, 'sunset', false, '{\"reason\": \"sunset: no human event for 180d\"}', '2026-01-10 00:00:00')",
    "INSERT INTO newsletters (id, name, template_name, layer_ids, tags, state, created_at)"
    " VALUES (1, 'Spring', 'x', '[1, 3]', '[]', 'sent', '2026-01-05 00:00:00')",
]


async def test_upgrade_backfills_history_and_newsletter_layers(database_url: str) -> None:
    database = Database(database_url)
    try:
        async with database.writer.begin() as conn:
            await conn.run_sync(upgrade_to("i11_import_heartbeat"))
            for statement in BEFORE:
                await conn.execute(text(statement))
        await database.migrate()
        async with database.read() as session:
            rows = (
                (await session.execute(select(LayerHistory).order_by(LayerHistory.subscriber_id, LayerHistory.id)))
                .scalars()
                .all()
            )
            got = [
                (
                    h.subscriber_id,
                    h.kind,
                    h.from_layer_id,
                    h.to_layer_id,
                    h.from_position,
                    h.to_position,
                    h.to_name,
                    h.created_at,
                )
                for h in rows
            ]
            snapshot = (await session.execute(select(Newsletter.layer_snapshot))).scalar_one()
        hour = dt.timedelta(hours=1)
        assert got == [
            (1, "move", 3, 2, None, 2, "Mid", T + dt.timedelta(days=19)),
            (1, "enter", None, 3, None, None, "Old (removed #3)", T + hour),  # where the first move began
            (2, "enter", None, 1, None, 1, "New", T + dt.timedelta(days=2)),  # the import, not the consent
            (3, "enter", None, 1, None, 1, "New", T),
            (3, "sunset", 1, 1, 1, 1, "New", T + dt.timedelta(days=9)),
        ]
        assert rows[-1].reason == "sunset: no human event for 180d"
        assert snapshot == [
            {"id": 1, "position": 1, "name": "New"},
            {"id": 3, "position": None, "name": "Old (removed #3)"},
        ]
    finally:
        await database.dispose()
