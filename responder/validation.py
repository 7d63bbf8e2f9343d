"""Checks for input from the outside world; each failure is a ``ValidationError`` naming the field."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from email_validator import EmailNotValidError, validate_email

from .errors import ValidationError

MAX_EMAIL_LEN = 254
MAX_NAME_LEN = 200
# C0 and C1 controls, DEL, the Unicode line and paragraph separators: refused in any one-line
# input (names, subjects, addresses), which may end up in a mail header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FORM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def clean_email(value: Any, field: str = "email") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("an email address is required", field=field)
    value = value.strip()
    if len(value) > MAX_EMAIL_LEN:
        raise ValidationError(f"email address is longer than {MAX_EMAIL_LEN} characters", field=field)
    if _CONTROL.search(value):
        raise ValidationError("email address contains control characters", field=field)
    try:
        normalized = validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationError(f"not a valid email address: {exc}", field=field) from exc
    return normalized.lower()


def clean_text(value: Any, field: str, *, max_len: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text", field=field)
    value = value.strip()
    if required and not value:
        raise ValidationError(f"{field} is required", field=field)
    if len(value) > max_len:
        raise ValidationError(f"{field} is longer than {max_len} characters", field=field)
    if _CONTROL.search(value):
        raise ValidationError(f"{field} contains line breaks or control characters", field=field)
    return value


def clean_name(value: Any) -> str:
    return clean_text(value, "name", max_len=MAX_NAME_LEN)


def clean_form_id(value: Any) -> str:
    if value in (None, ""):
        return "default"
    if not isinstance(value, str) or not _FORM_ID.match(value):
        raise ValidationError("form must be 1-64 letters, digits, '-' or '_'", field="form")
    return value


# Row ids are PostgreSQL ``integer``: anything larger names nothing (and must not reach the driver).
MAX_ID = 2**31 - 1


def parse_id(raw: str) -> int | None:
    """A row id from a URL, or None when it cannot name a row."""
    if not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_ID:
        return None
    return int(raw)


def clean_since(value: Any, now: dt.datetime, field: str = "since") -> dt.datetime | None:
    """The start of a reporting period: a date (``2026-03-01``, midnight UTC) or an ISO 8601
    time with a zone, not after ``now``; None when not given."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValidationError(f"{field} must be a date (2026-03-01) or an ISO 8601 time with a zone", field=field)
    try:
        since = (
            dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
            if len(value) == 10
            else dt.datetime.fromisoformat(value)
        )
    except ValueError as exc:
        raise ValidationError(
            f"{field} must be a date (2026-03-01) or an ISO 8601 time with a zone", field=field
        ) from exc
    if since.tzinfo is None:
        raise ValidationError(f"{field} must carry a time zone (e.g. Z or +02:00)", field=field)
    try:
        since = since.astimezone(dt.UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise ValidationError(f"{field} is out of range", field=field) from exc
    if since > now:
        raise ValidationError(f"{field} is in the future", field=field)
    return since
