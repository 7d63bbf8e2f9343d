"""Every CSV row, whatever it holds (issue 18, point 9): ``parse_row`` answers a clean row or a
``ValidationError`` naming the problem, never another exception (which would stop an import
half way); a clean row holds a valid address, a known layer and single-line text."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from responder.audience.importer import parse_row
from responder.errors import ValidationError
from responder.validation import clean_email

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
FIELDS = ["email", "name", "layer", "tags", "consent_source", "consented_at", "company"]
VALUES = {
    "email": TEXT | st.sampled_from(["ann@example.com", "a@b", "x@exämple.com", "@", "ann@example.com\r\n"]),
    "layer": TEXT | st.sampled_from(["1", "2", "5", "9", "0", " 3 ", "-1"]),
    "tags": TEXT | st.sampled_from(["vip;gold", "vip, gold", "a b", ";;", "x" * 70]),
    "consented_at": TEXT | st.sampled_from(["2026-01-02", "2026-01-02T03:04:05+02:00", "2026-13-40", "yesterday"]),
}


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({field: VALUES.get(field, TEXT) for field in FIELDS}))
def test_every_row_is_clean_or_refused_with_a_reason(raw: dict[str, str]) -> None:
    try:
        row = parse_row(raw, positions={1, 2, 3, 4, 5}, default_position=1, default_source="csv import", now=NOW)
    except ValidationError as exc:
        assert exc.message
        return
    assert clean_email(row.email) == row.email
    assert "\n" not in row.name and "\r" not in row.name
