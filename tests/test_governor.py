"""The complaint governor (issue 17, point 2): complaint rates per layer and mailbox provider
over a day and a week; a warning at 0.1 %, and at 0.3 % newsletters and drip steps to the layer
and provider concerned are held, lowest trust first, until an admin resumes them.

The decisions are pure (``core/governor.py``) and tested here directly and by hypothesis; the
whole loop runs against the real server: mail delivered to an aiosmtpd sink, complaints as ARF
reports through the inbound SMTP server, the scheduler's governor holding the next newsletter,
and an admin resuming through the API (the dashboard's button is in
tests/test_governor_browser.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from responder.clock import FakeClock
from responder.core.governor import (
    Counts,
    Group,
    Thresholds,
    govern,
    level,
    provider_of,
)
from responder.delivery import outbox
from responder.funnel import governor, webhooks
from responder.models import GovernorState, Layer, Message, Newsletter, Subscriber, WebhookDelivery

from .conftest import App, SmtpSink, free_port, running_app
from .test_inbound import ARF, deliver

T = Thresholds(warn=0.001, pause=0.003, min_sent=100)
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


# --- the pure decisions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "mx", "provider"),
    [
        ("gmail.com", [], "gmail"),
        ("GoogleMail.com.", [], "gmail"),
        ("yahoo.co.uk", [], "yahoo"),
        ("aol.com", [], "yahoo"),
        ("hotmail.fr", [], "microsoft"),
        ("outlook.com", [], "microsoft"),
        ("acme.example", ["aspmx.l.google.com."], "gmail"),
        ("shop.example", ["shop-example.mail.protection.outlook.com"], "microsoft"),
        ("old.example", ["mx-aol.mail.gm0.yahoodns.net"], "yahoo"),
        ("mine.example", ["mail.mine.example"], "other"),
        ("notgoogle.com.example", ["mx.evilgoogle.com"], "other"),  # a suffix, not a substring
    ],
)
def test_providers_by_domain_then_mx(domain: str, mx: list[str], provider: str) -> None:
    assert provider_of(domain, mx) == provider


def test_a_rate_counts_only_on_enough_mail_and_two_complaints() -> None:
    assert level(Counts(99, 5), Counts(99, 5), T) == "ok"  # too little mail to say anything
    assert level(Counts(0, 0), Counts(1000, 1), T) == "warn"  # 0.1 %
    assert level(Counts(0, 0), Counts(1000, 3), T) == "paused"  # 0.3 %
    assert level(Counts(300, 1), Counts(1000, 1), T) == "warn"  # one complaint never pauses
    assert level(Counts(200, 2), Counts(10_000, 2), T) == "paused"  # the day reacts before the week


def test_a_layer_over_the_line_is_held_alone() -> None:
    groups = [
        Group(1, 1, "gmail", week=Counts(1000, 1)),
        Group(2, 2, "gmail", week=Counts(1000, 5)),
        Group(1, 1, "yahoo", week=Counts(1000, 9)),
        Group(2, 2, "yahoo", week=Counts(1000, 0)),
    ]
    decision = govern(groups, T)
    assert {(v.layer_id, v.provider) for v in decision.pauses} == {(2, "gmail"), (1, "yahoo")}
    assert decision.level_of(1, "gmail") == "warn"
    assert "5 complaints in 1000 mails over the last week (0.50%)" in decision.pauses[0].reason or (
        "5 complaints in 1000 mails" in decision.pauses[1].reason
    )


def test_a_provider_over_the_line_holds_the_lowest_trust_layers_first() -> None:
    # No layer has enough mail to count alone; together gmail is at 0.33 %.
    groups = [
        Group(13, 3, "gmail", week=Counts(90, 0)),
        Group(11, 1, "gmail", week=Counts(60, 2)),
        Group(12, 2, "gmail", week=Counts(50, 1)),
        Group(14, 4, "gmail", week=Counts(700, 0)),
    ]
    decision = govern(groups, T)
    assert [v.layer_id for v in decision.pauses] == [11]  # the rest, 1 in 840, is under the line
    assert "lowest-trust layers paused first" in decision.pauses[0].reason
    assert decision.level_of(0, "gmail") == "paused"


def test_a_pause_stays_until_resumed_and_then_needs_a_newer_complaint() -> None:
    quiet = [Group(1, 1, "gmail", week=Counts(1000, 0))]
    assert govern(quiet, T, paused=[(1, "gmail")]).level_of(1, "gmail") == "paused"
    before = NOW - dt.timedelta(hours=2)
    loud = [Group(1, 1, "gmail", week=Counts(1000, 9), last_complaint=before)]
    resumed = {(1, "gmail"): NOW - dt.timedelta(hours=1)}
    assert govern(loud, T, resumed=resumed).level_of(1, "gmail") == "warn"
    again = [Group(1, 1, "gmail", week=Counts(1000, 10), last_complaint=NOW)]
    assert govern(again, T, resumed=resumed).level_of(1, "gmail") == "paused"


counts = st.builds(Counts, st.integers(0, 3000), st.integers(0, 30)).filter(lambda c: c.complaints <= c.sent)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 7), st.sampled_from(["gmail", "yahoo", "microsoft", "other"]), counts, counts),
        max_size=14,
        unique_by=lambda g: (g[0], g[1]),
    )
)
def test_what_still_flows_is_under_the_line(rows: list[tuple[int, str, Counts, Counts]]) -> None:
    """Whatever the counts: every layer over the line alone is held, and at each provider the
    mail still flowing is under the line unless every layer with mail there is held."""
    groups = [Group(position, position, provider, day, week) for position, provider, day, week in rows]
    decision = govern(groups, T)
    held = {(v.layer_id, v.provider) for v in decision.pauses}
    for group in groups:
        if level(group.day, group.week, T) == "paused":
            assert (group.layer_id, group.provider) in held
    for provider in {g.provider for g in groups}:
        flowing = [g for g in groups if g.provider == provider and (g.layer_id, provider) not in held]
        day = sum((g.day for g in flowing), Counts())
        week = sum((g.week for g in flowing), Counts())
        with_mail = [g for g in flowing if g.day.sent or g.week.sent]
        assert level(day, week, T) != "paused" or not with_mail
        # lowest trust first: no held layer is above a flowing layer with mail, unless it is over the line alone
        for g in groups:
            if (g.layer_id, provider) in held and g.provider == provider and level(g.day, g.week, T) != "paused":
                assert all(f.position > g.position for f in with_mail)


# --- the whole loop, through real SMTP ------------------------------------------------------


async def _newsletter(app: App, readers: dict[int, list[str]], name: str) -> list[int]:
    """Active subscribers (made if new) in the layers given by position, and one queued mail
    each of a newsletter to them; the outbox ids."""
    rt = app.rt
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        layers = {layer.position: layer for layer in (await session.execute(select(Layer))).scalars()}
        letter = Newsletter(
            name=name,
            template_name="layer1-welcome",
            layer_ids=[layers[p].id for p in readers],
            tags=[],
            state="sending",
            scheduled_at=None,
            created_at=now,
        )
        session.add(letter)
        await session.flush()
        ids = []
        for position, addresses in readers.items():
            for address in addresses:
                found = (await session.execute(select(Subscriber).where(Subscriber.email == address))).scalar()
                if found is None:
                    found = Subscriber(
                        email=address,
                        name="Reader",
                        status="active",
                        layer_id=layers[position].id,
                        layer_entered_at=now,
                        attributes={},
                        tags=[],
                        created_at=now,
                    )
                    session.add(found)
                    await session.flush()
                if found.status != "active":
                    continue
                pk = await outbox.enqueue(
                    session,
                    subscriber_id=found.id,
                    kind="newsletter",
                    template_name="layer1-welcome",
                    now=now,
                    domain=rt.settings.sender_domain,
                    newsletter_id=letter.id,
                )
                assert pk is not None
                ids.append(pk)
    rt.wake_outbox()
    return ids


async def _settled(app: App, ids: list[int]) -> dict[int, Message]:
    """Wait until no message of ``ids`` is queued or in flight; their rows."""
    deadline = time.monotonic() + 60  # a loaded CI machine
    while time.monotonic() < deadline:
        async with app.rt.db.read() as session:
            rows = (await session.execute(select(Message).where(Message.id.in_(ids)))).scalars().all()
        if all(row.state not in ("queued", "sending") for row in rows):
            return {row.id: row for row in rows}
        await asyncio.sleep(0.02)
    raise AssertionError("messages did not settle")


async def _state(app: App, layer_id: int, provider: str, wanted: str) -> GovernorState:
    state = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with app.rt.db.read() as session:
            state = await session.get(GovernorState, (layer_id, provider))
        if state is not None and state.level == wanted:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"governor never said {wanted} for layer {layer_id} at {provider}: {state and state.level}")


async def _hooks(app: App) -> list[dict[str, Any]]:
    async with app.rt.db.read() as session:
        rows = (await session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id))).scalars().all()
    return [row.payload for row in rows]


async def test_complaints_hold_one_layer_at_one_provider_until_an_admin_resumes(
    database_url: str, smtp: SmtpSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    env = {"RESPONDER_INBOUND": f"127.0.0.1:{port}", "RESPONDER_GOVERNOR_MIN_SENT": "10"}
    async with running_app(database_url, smtp, clock, **env) as app:
        app.inbound_port = port  # type: ignore[attr-defined]
        async with app.rt.db.transaction() as session:
            await webhooks.create_webhook(
                session,
                {
                    "url": "https://hooks.example.com/g",
                    "events": ["governor.warning", "governor.paused", "governor.resumed"],
                },
                clock.now(),
            )
        gmail_new = [f"new{i}@gmail.com" for i in range(10)]
        others_new = [f"new{i}@acme-customer.example" for i in range(10)]
        gmail_loyal = [f"loyal{i}@gmail.com" for i in range(10)]
        readers = {1: gmail_new + others_new, 2: gmail_loyal}
        first = await _newsletter(app, readers, "first")
        await smtp.wait_for(30, timeout_s=60)
        await _settled(app, first)

        # Two new Gmail readers report it as spam, through the provider's feedback loop.
        with caplog.at_level(logging.WARNING, logger="responder.funnel.governor"):
            for address in gmail_new[:2]:
                [got] = smtp.to(address)
                await deliver(
                    app,
                    "fbl@gmail.example",
                    got.mail_from,
                    ARF.format(to=got.mail_from, message_id=got.message["Message-ID"]),
                )
            async with app.rt.db.read() as session:
                layer_ids = dict((await session.execute(select(Layer.position, Layer.id))).all())
            held_state = await _state(app, layer_ids[1], "gmail", "paused")
        assert "2 complaints in 10 mails" in held_state.reason
        assert (held_state.week_sent, held_state.week_complaints) == (10, 2)
        assert "held" in caplog.text and "gmail" in caplog.text
        for layer_id, provider in ((layer_ids[2], "gmail"), (layer_ids[1], "other")):
            async with app.rt.db.read() as session:
                assert (await session.get(GovernorState, (layer_id, provider))).level == "ok"  # type: ignore[union-attr]

        # The next newsletter: the held group waits, everyone else gets it.
        second = await _newsletter(app, readers, "second")
        await smtp.wait_for(50, timeout_s=60)
        rows = await _settled(app, second)
        held = [row for row in rows.values() if row.state == "deferred"]
        assert len(held) == 8 and all(row.last_error.startswith(governor.HELD) for row in held)  # type: ignore[union-attr]
        assert {row.state for row in rows.values() if row not in held} == {"sent"}
        assert all(len(smtp.to(a)) == 1 for a in gmail_new) and all(
            len(smtp.to(a)) == 2 for a in gmail_loyal + others_new
        )

        # An admin resumes (the API; the dashboard's button does the same): the held mail goes, once.
        answer = await app.client.post(
            "/api/v1/governor/resume", json={"layer_id": layer_ids[1], "provider": "gmail"}, headers=app.auth
        )
        assert answer.status == 200, await answer.text()
        body = await answer.json()
        [resumed] = [s for s in body["states"] if s["layer_id"] == layer_ids[1] and s["provider"] == "gmail"]
        assert resumed["level"] == "warn" and resumed["resumed_by"] == "api"
        await smtp.wait_for(58, timeout_s=60)
        rows = await _settled(app, second)
        assert sorted(row.state for row in rows.values()) == ["sent"] * 28
        assert all(len(smtp.to(a)) == 2 for a in gmail_new[2:]) and len(smtp.received) == 58
        again = await app.client.post(
            "/api/v1/governor/resume", json={"layer_id": layer_ids[1], "provider": "gmail"}, headers=app.auth
        )
        assert again.status == 404
        events = [hook["event"] for hook in await _hooks(app)]
        assert events.count("governor.paused") == 1 and events.count("governor.resumed") == 1
        assert "governor.warning" in events  # Gmail as a whole is over the line too


async def test_bad_resume_requests_change_nothing(app: App) -> None:
    for body in ({"layer_id": "x", "provider": "gmail"}, {"layer_id": 1, "provider": "aol"}, {}):
        answer = await app.client.post("/api/v1/governor/resume", json=body, headers=app.auth)
        assert answer.status == 400
    answer = await app.client.get("/api/v1/governor", headers=app.auth)
    assert answer.status == 200 and (await answer.json())["states"] == []
