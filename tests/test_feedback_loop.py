"""Complaint reports (ARF, RFC 5965) sent to the feedback-loop address registered with a
provider (``RESPONDER_FBL_ADDRESS``), matched to our mail by its VERP envelope or by its
Message-ID; a ``not-spam`` report is not a complaint (issue 17, point 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from responder.clock import FakeClock

from .conftest import App, SmtpSink, free_port, running_app
from .delivery_fixtures import subscriber
from .test_inbound import ARF, deliver, events, sent_to

FBL = "fbl@acme.example.com"


@pytest.fixture
async def fbl_app(database_url: str, smtp: SmtpSink, clock: FakeClock) -> AsyncIterator[App]:
    port = free_port()
    env = {"RESPONDER_INBOUND": f"127.0.0.1:{port}", "RESPONDER_FBL_ADDRESS": FBL.upper()}
    async with running_app(database_url, smtp, clock, **env) as running:
        running.inbound_port = port  # type: ignore[attr-defined]
        yield running


def report(message_id: str, *, mail_from: str = "", feedback_type: str = "abuse") -> str:
    text = ARF.format(to=FBL, message_id=message_id).replace("Feedback-Type: abuse", f"Feedback-Type: {feedback_type}")
    if mail_from:
        text = text.replace("Version: 1\n", f"Version: 1\nOriginal-Mail-From: <{mail_from}>\n")
    return text


async def test_a_report_at_the_feedback_address_is_matched_by_envelope(fbl_app: App) -> None:
    _, got = await sent_to(fbl_app, "ann@example.org")
    await deliver(fbl_app, "fbl@isp.example.net", FBL, report("<unknown@x>", mail_from=got.mail_from))
    assert (await subscriber(fbl_app.rt, "ann@example.org")).status == "complained"


async def test_a_report_at_the_feedback_address_is_matched_by_message_id(fbl_app: App) -> None:
    _, got = await sent_to(fbl_app, "bob@example.org")
    await deliver(fbl_app, "fbl@isp.example.net", FBL, report(got.message["Message-ID"]))
    assert (await subscriber(fbl_app.rt, "bob@example.org")).status == "complained"
    [complaint] = await events(fbl_app, "complaint")
    assert complaint.data["feedback_type"] == "abuse"


async def test_not_spam_is_no_complaint_and_strangers_are_refused(fbl_app: App) -> None:
    _, got = await sent_to(fbl_app, "cat@example.org")
    await deliver(
        fbl_app, "fbl@isp.example.net", got.mail_from, report(got.message["Message-ID"], feedback_type="not-spam")
    )
    await deliver(fbl_app, "fbl@isp.example.net", FBL, report(got.message["Message-ID"], feedback_type="not-spam"))
    assert (await subscriber(fbl_app.rt, "cat@example.org")).status == "active"
    assert await events(fbl_app, "complaint") == []
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await deliver(fbl_app, "x@isp.example.net", "postmaster@acme.example.com", "Subject: hi\n\nhi\n")
