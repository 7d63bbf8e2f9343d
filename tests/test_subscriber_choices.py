"""The subscriber's own choices honoured by the funnel: a pause holds drip steps and skips
newsletters until it ends; "fewer" mails caps everything at one a week. Pure cases with explicit
times, then the whole server on SQLite and PostgreSQL with the clock moved day by day."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from responder.core.pacing import Held, Sent, caps_for, plan, skips_newsletter
from responder.models import Message

from .admin_fixtures import make_subscriber as listed_subscriber
from .conftest import App
from .funnel_fixtures import make_subscriber, settle

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


@pytest.mark.parametrize(
    ("caps", "frequency", "expected"),
    [
        (None, "normal", {}),
        ({"max_per_week": 3, "min_gap": "1d"}, "normal", {"max_per_week": 3, "min_gap": "1d"}),
        (None, "fewer", {"max_per_week": 1}),
        (
            {"max_per_week": 3, "min_gap": "1d", "collision": "step_waits"},
            "fewer",
            {"max_per_week": 1, "min_gap": "1d", "collision": "step_waits"},
        ),
        (
            {"max_per_week": 1, "min_gap": "10d", "collision": "newsletter_waits"},
            "fewer",
            {"max_per_week": 1, "min_gap": "10d", "collision": "newsletter_waits"},
        ),
    ],
)
def test_caps_for_frequency(caps: dict[str, Any] | None, frequency: str, expected: dict[str, Any]) -> None:
    assert caps_for(caps, frequency) == expected


LAYER = {"max_per_week": 3, "min_gap": "1d", "collision": "step_waits"}


@pytest.mark.parametrize(
    ("sent", "now", "kind", "frequency", "paused_until", "expected"),
    [
        # Paused: a step (or a mail held in the outbox) waits for the end of the pause.
        ([], day(0), "step", "normal", day(30), day(30)),
        ([], day(0), "newsletter", "normal", day(30), day(30)),
        # The pause is over (exactly at its end, or later): as if never paused.
        ([], day(31), "step", "normal", day(30), day(31)),
        # Paused and "fewer": after the pause, still the weekly limit.
        ([Sent(day(28), "step")], day(0), "step", "fewer", day(30), day(35)),
        # Normal frequency keeps the layer's caps, for newsletters as for steps.
        ([Sent(day(0), "step")], day(0.5), "newsletter", "normal", None, day(1)),
        ([Sent(day(0), "step")], day(0.5), "step", "normal", None, day(1)),
        # Fewer: one mail of any kind in any 7 days.
        ([Sent(day(0), "step")], day(0.5), "newsletter", "fewer", None, day(7)),
        ([Sent(day(0), "newsletter")], day(2), "step", "fewer", None, day(7)),
        ([Sent(day(0), "step"), Sent(day(7), "newsletter")], day(2), "step", "fewer", None, day(14)),
        ([Sent(day(0), "step")], day(8), "step", "fewer", None, day(8)),
    ],
)
def test_choices_in_the_plan(
    sent: list[Sent],
    now: dt.datetime,
    kind: str,
    frequency: str,
    paused_until: dt.datetime | None,
    expected: dt.datetime,
) -> None:
    held = [Held(kind, now)]
    assert plan(sent, held, now, LAYER, frequency=frequency, paused_until=paused_until) == [expected]


@pytest.mark.parametrize(("now", "skips"), [(day(0), True), (day(29.9), True), (day(30), False), (day(31), False)])
def test_a_newsletter_reaching_a_paused_subscriber_skips_them(now: dt.datetime, skips: bool) -> None:
    assert skips_newsletter(day(30), now) is skips
    assert skips_newsletter(None, now) is False


async def newsletter(app: App) -> None:
    resp = await app.client.post(
        "/api/v1/newsletters",
        headers=app.auth,
        json={
            "name": f"News {app.clock.now().date()}",
            "template": "layer1-first-step",
            "layers": [1],
            "send_now": True,
        },
    )
    assert resp.status == 201, await resp.text()


async def test_pause_and_fewer_through_the_unsubscribe_page(app: App) -> None:
    start = app.clock.now()
    ann = await make_subscriber(app.rt, "ann@example.com")  # will pause for 30 days
    bob = await make_subscriber(app.rt, "bob@example.com")  # will choose fewer mails
    eve = await make_subscriber(app.rt, "eve@example.com")  # chooses nothing
    await settle(app)
    assert [len(app.smtp.to(s.email)) for s in (ann, bob, eve)] == [1, 1, 1]  # the welcomes
    for who, choice, page in ((ann, "pause", "Paused"), (bob, "fewer", "fewer mails")):
        resp = await app.client.post(f"/unsubscribe/{app.rt.tokens.unsubscribe(who.id)}", data={"choice": choice})
        assert resp.status == 200 and page in await resp.text()

    arrivals: dict[str, list[int]] = {s.email: [0] for s in (ann, bob, eve)}
    for n in range(1, 43):
        app.clock.advance(days=1)
        if n in (1, 10, 31):
            await newsletter(app)
        before = {email: len(app.smtp.to(email)) for email in arrivals}
        await settle(app)
        for email in arrivals:
            arrivals[email] += [n] * (len(app.smtp.to(email)) - before[email])
    assert app.clock.now() - start == dt.timedelta(days=42)

    # Ann: nothing during the pause (the newsletters of days 1 and 10 skip her); after it the
    # postponed drip steps resume (day 30, then 4 days on) and the day-31 newsletter reaches her.
    assert arrivals["ann@example.com"] == [0, 30, 31, 34]
    # Bob: every drip step and every newsletter, one a week at most (each postponed, none lost).
    assert arrivals["bob@example.com"] == [0, 7, 14, 21, 28, 35]
    # Eve keeps the layer's own pace: drip steps and newsletters, some a day apart.
    assert arrivals["eve@example.com"] == [0, 1, 2, 6, 10, 31]


async def test_pause_holds_mail_already_queued_but_not_transactional(app: App) -> None:
    # Not enrolled: only the rows below wait for her (a running scheduler planning her welcome
    # step at the same moment as the pause is a race of its own, see the trust-engine notes).
    ida_id = await listed_subscriber(app.rt, "ida@example.com")
    now = app.clock.now()
    async with app.rt.db.transaction() as session:
        for kind, at in (
            ("newsletter", now + dt.timedelta(days=3)),
            ("step", now + dt.timedelta(hours=1)),
            ("confirm", now + dt.timedelta(days=1)),
        ):
            session.add(
                Message(
                    subscriber_id=ida_id,
                    kind=kind,
                    template_name="layer1-welcome",
                    state="queued",
                    attempts=0,
                    next_attempt_at=at,
                    message_id=f"<{kind}@t>",
                    created_at=now,
                )
            )
    resp = await app.client.post(f"/unsubscribe/{app.rt.tokens.unsubscribe(ida_id)}", data={"choice": "pause"})
    assert resp.status == 200
    async with app.rt.db.read() as session:
        held = dict(
            (
                await session.execute(
                    select(Message.kind, Message.next_attempt_at).where(Message.message_id.like("<%@t>"))
                )
            ).all()
        )
    # Both wait for the pause's end, then the caps pace them: the newsletter first (its turn
    # under step_waits), the step a day later (never within a day of a newsletter).
    assert held == {
        "newsletter": now + dt.timedelta(days=30),
        "step": now + dt.timedelta(days=31),
        "confirm": now + dt.timedelta(days=1),
    }
