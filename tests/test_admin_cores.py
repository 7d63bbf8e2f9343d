"""Pure parts of the admin features: weekly move buckets, rates and the complaint alarm, CSV
row validation, cursors, and escaping in the SVG charts."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.audience.directory import decode_cursor, encode_cursor
from responder.audience.importer import parse_row
from responder.errors import ValidationError
from responder.funnel.dashboard import complaint_alarm, rate, weekly_moves
from responder.web.admin.charts import Bar, funnel, hbars

NOW = dt.datetime(2026, 3, 11, 12, 0, tzinfo=dt.UTC)  # a Wednesday


def at(days_ago: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days_ago)


def test_weekly_moves_gives_every_week_oldest_first() -> None:
    weeks = weekly_moves({dt.date(2026, 3, 2): {"up": 1}, dt.date(2026, 3, 9): {"up": 2, "down": 1}}, NOW, weeks=3)
    assert [w.week_start for w in weeks] == [dt.date(2026, 2, 23), dt.date(2026, 3, 2), dt.date(2026, 3, 9)]
    assert [(w.up, w.down) for w in weeks] == [(0, 0), (1, 0), (2, 1)]


@pytest.mark.parametrize(
    ("complaints", "sent", "alarm"),
    [
        (0, 0, False),
        (3, 1000, False),
        (4, 1000, True),
        (1, 100, True),
        (3, 999, True),
    ],
)
def test_complaint_alarm_is_above_three_per_thousand(complaints: int, sent: int, alarm: bool) -> None:
    assert complaint_alarm(complaints, sent) is alarm
    assert rate(complaints, sent) == (complaints / sent if sent else 0.0)


def row(**fields: str) -> dict[str, str]:
    return {
        "email": "ada@example.com",
        "name": "",
        "layer": "",
        "tags": "",
        "consent_source": "",
        "consented_at": "",
        **fields,
    }


def parse(raw: dict[str, str], source: str | None = "shop"):  # type: ignore[no-untyped-def]
    return parse_row(raw, positions={1, 2, 3}, default_position=1, default_source=source, now=NOW)


def test_a_good_row_is_normalised() -> None:
    parsed = parse(
        row(email=" Ada@Example.COM ", layer="3", tags="preferred; vip;preferred", consented_at="2025-01-02T03:04:05")
    )
    assert parsed.email == "ada@example.com" and parsed.position == 3
    assert parsed.tags == ["preferred", "vip"] and parsed.consent_source == "shop"
    assert parsed.consented_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("raw", "source", "field"),
    [
        (row(email="nope"), "shop", "email"),
        (row(layer="4"), "shop", "layer"),
        (row(layer="-1"), "shop", "layer"),
        (row(tags="two words"), "shop", "tags"),
        (row(), None, "consent_source"),
        (row(consent_source="x" * 65), None, "consent_source"),
        (row(consented_at="yesterday"), "shop", "consented_at"),
        (row(consented_at="2027-01-01"), "shop", "consented_at"),
        (row(name="line\nbreak"), "shop", "name"),
        ({**row(), None: ["extra"]}, "shop", None),  # type: ignore[dict-item]
        (row(name="caf\ufffd"), "shop", None),
    ],
)
def test_bad_rows_name_the_field(raw: dict[str, str], source: str | None, field: str | None) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(raw, source)
    assert caught.value.field == field


@pytest.mark.parametrize("last_id", [0, 1, 123456789])
def test_cursors_round_trip(last_id: int) -> None:
    assert decode_cursor(encode_cursor(last_id)) == last_id


@pytest.mark.parametrize("forged", ["!!", "e30", "eyJpZCI6IC0xfQ", "eyJpZCI6ICJ4In0", "eyJpZCI6IHRydWV9"])
def test_forged_cursors_are_refused(forged: str) -> None:
    with pytest.raises(ValidationError):
        decode_cursor(forged)


def test_chart_labels_are_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    for svg in (funnel([Bar(hostile, 3, "3"), Bar("b", 0, "0")]), hbars([Bar(hostile, 1, "1")], label=hostile)):
        assert "<script>" not in svg and "&lt;script&gt;" in svg
