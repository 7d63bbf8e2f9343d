"""Header text from subscribers and templates (issue 18, point 2): a name that looks like an RFC
2047 encoded word is itself encoded, so a reader sees the literal text, never the CR LF it
spells; C0/C1 controls and U+2028/2029 are refused at input with a 400 and change nothing; a
subject with a control character is refused at upload."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from responder.delivery.mime import Mail, compose
from responder.errors import ValidationError
from responder.models import Subscriber

from ..conftest import App

LOOKALIKE = "=?utf-8?q?=0D=0AX-Injected:_1?="


def mail(**changes: str) -> Mail:
    values: dict[str, object] = dict(
        from_name="Acme",
        from_email="news@acme.example.com",
        to_name="Ann",
        to_email="ann@example.com",
        subject="Hello",
        html="<p>Hi</p>",
        text="Hi\n",
        message_id="<abc@acme.example.com>",
        date=dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
    )
    values.update(changes)
    return Mail(**values)  # type: ignore[arg-type]


def read(raw: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(raw, policy=policy.default)


@pytest.mark.parametrize("text", [LOOKALIKE, "Ann =?iso-8859-1?b?QWxpY2U=?= Smith", "=?x?", "a =?utf-8?b?DQo=?= b"])
def test_an_encoded_word_look_alike_reads_back_as_itself(text: str) -> None:
    raw = compose(mail(to_name=text, from_name=text, subject=f"For {text}"))
    msg = read(raw)
    assert msg["To"].addresses[0].display_name == text
    assert msg["From"].addresses[0].display_name == text
    assert msg["Subject"] == f"For {text}"
    assert "X-Injected" not in msg and b"X-Injected: 1\r\n" not in raw.split(b"\r\n\r\n")[0] + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_any_name_either_reads_back_exactly_or_is_refused(name: str) -> None:
    try:
        raw = compose(mail(to_name=name, subject=name or "x"))
    except ValidationError:
        assert any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name)
        return
    msg = read(raw)
    assert len(msg.get_all("To")) == 1 and len(msg.get_all("Subject")) == 1
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in (b" ", b"\t") or b":" in line for line in head.split(b"\r\n"))


@pytest.mark.parametrize("name", ["Ann\u0085Bcc: x@y.example", "Ann\u009b31m", "Ann\u2028B", "Ann\x01"])
async def test_control_characters_in_a_name_are_refused_and_store_nothing(app: App, name: str) -> None:
    resp = await app.client.post("/subscribe", json={"email": "ann@example.com", "name": name})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "name"
    resp = await app.client.post(
        "/api/v1/subscribers", json={"email": "bob@example.com", "name": name}, headers=app.auth
    )
    assert resp.status == 400
    async with app.rt.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Subscriber))).scalar() == 0


async def test_a_look_alike_name_reaches_the_reader_as_typed(app: App) -> None:
    resp = await app.client.post("/subscribe", json={"email": "ann@example.com", "name": LOOKALIKE})
    assert resp.status == 202, await resp.text()
    [confirmation] = await app.smtp.wait_for(1)
    msg = read(confirmation.data)
    assert msg["To"].addresses[0].display_name == LOOKALIKE
    assert "X-Injected" not in msg


@pytest.mark.parametrize("subject", ["Hi\x07there", "Hi\u0085there", "{{ '\\x01' }}Hi"])
async def test_a_subject_a_header_cannot_carry_is_refused_at_upload(app: App, subject: str) -> None:
    body = {"name": "offer", "subject": subject, "body": "<p>Hi</p>", "purpose": "offer"}
    resp = await app.client.post("/api/v1/templates", json=body, headers=app.auth)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "subject"
    listing = await (await app.client.get("/api/v1/templates", headers=app.auth)).json()
    assert "offer" not in [t["name"] for t in listing["templates"]]
