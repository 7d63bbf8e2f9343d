"""Caps and collisions through the running server: its own scheduler and delivery workers, a
real SMTP server counting what each subscriber receives, SQLite and PostgreSQL, both collision
modes. The clock jumps from one moment something falls due to the next.

A drip step and a newsletter due within a day of each other: the mode decides which one
arrives, and the other arrives a day after it; a newsletter held in the outbox moves again for a
step that takes its turn. Then nine weeks of eight-step sequences started on different days and
newsletters sent now or scheduled ahead, in a layer of at most three mails a week and a day
apart: every step and every newsletter arrives exactly once, the caps hold in every 7 days, and
each mail arrives at the first moment it fits around the mail that took its turn before it
(inside its step's send window).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from responder.funnel import layers as layers_service
from responder.funnel import newsletters
from responder.funnel import sequences as sequences_service
from responder.funnel.enrollments import enroll_in
from responder.models import Enrollment, Layer, Message, Newsletter, Step, Subscriber
from responder.models import Sequence as SequenceModel
from responder.runtime import Runtime

from .conftest import App
from .funnel_fixtures import make_subscriber, mark_sent, rt, settle, tick  # noqa: F401

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
CAPS = {"max_per_week": 3, "min_gap": "1d"}
WINDOW = {"days": "mon-fri", "start": "09:00", "end": "17:00"}
# Layer 1's three starter steps (0s, 2d, 4d) and five more; one only on weekdays, 09:00-17:00.
MORE_STEPS = [
    ("layer2-how-to", "1d", None),
    ("layer2-common-mistakes", "12h", WINDOW),
    ("layer2-quick-wins", "2d", None),
    ("layer3-mastery", "1d", None),
    ("layer3-case-study", "3d", None),
]
# (hour, what): subscribers joining (one in Berlin, whose window is Berlin's working day) and
# newsletters, sent now or scheduled ahead (created at the hour, starting at "at").
SCRIPT: list[tuple[int, dict[str, Any]]] = [
    (0, {"join": "s0@example.com"}),
    (1, {"newsletter": "N1", "at": 20}),
    (2, {"newsletter": "N3", "at": 74}),
    (5, {"join": "s1@example.com"}),
    (26, {"join": "s2@example.com", "timezone": "Europe/Berlin"}),
    (30, {"newsletter": "N2"}),
    (50, {"join": "s3@example.com"}),
    (77, {"join": "s4@example.com"}),
    (100, {"newsletter": "N4"}),
    (120, {"newsletter": "N5", "at": 150}),
    (170, {"join": "s5@example.com"}),
    (200, {"newsletter": "N6"}),
    (260, {"newsletter": "N7"}),
    (300, {"newsletter": "N8", "at": 330}),
    (400, {"newsletter": "N9"}),
    (500, {"newsletter": "N10"}),
]
HORIZON = 16 * WEEK


@dataclass
class Arrival:
    """One mail the SMTP server received, stamped with the clock when it arrived."""

    at: dt.datetime
    email: str
    kind: str
    step_id: int | None
    newsletter_id: int | None
    due: dt.datetime = dt.datetime.min.replace(tzinfo=dt.UTC)


async def set_caps(app: App, caps: dict[str, Any]) -> None:
    async with app.rt.db.transaction() as session:
        await layers_service.update_layer(session, 1, {"rule": {"caps": caps}})


async def create_newsletter(app: App, name: str, start: dt.datetime | None) -> None:
    when: dict[str, Any] = {"send_at": start.isoformat()} if start else {"send_now": True}
    resp = await app.client.post(
        "/api/v1/newsletters",
        headers=app.auth,
        json={"name": name, "template": "newsletter", "layers": [1], **when},
    )
    assert resp.status == 201, await resp.text()


async def next_moment(app: App) -> dt.datetime | None:
    """The next time anything falls due: a step, a held mail, a scheduled newsletter."""
    now = app.clock.now()
    async with app.rt.db.read() as session:
        times = [
            (
                await session.execute(
                    select(func.min(Enrollment.due_at)).where(Enrollment.state == "active", Enrollment.due_at > now)
                )
            ).scalar_one(),
            (
                await session.execute(
                    select(func.min(Message.next_attempt_at)).where(
                        Message.state.in_(("queued", "deferred")), Message.next_attempt_at > now
                    )
                )
            ).scalar_one(),
            (
                await session.execute(
                    select(func.min(Newsletter.scheduled_at)).where(
                        Newsletter.state == "scheduled", Newsletter.scheduled_at > now
                    )
                )
            ).scalar_one(),
        ]
    found = [t for t in times if t is not None]
    return min(found) if found else None


async def run_until_quiet(app: App, script: Sequence[tuple[int, dict[str, Any]]]) -> list[Arrival]:
    """Play the script, jumping the clock to each moment something is due, until nothing is
    left; every mail the SMTP server received, stamped with the clock at its arrival."""
    start = app.clock.now()
    todo = sorted(script, key=lambda item: item[0])
    stamped: list[dt.datetime] = []
    while True:
        coming = [t for t in [await next_moment(app), todo and start + todo[0][0] * HOUR] if t]
        if not coming:
            break
        app.clock.advance(seconds=(min(coming) - app.clock.now()).total_seconds())
        assert app.clock.now() - start < HORIZON, "mail still waiting at the horizon"
        while todo and start + todo[0][0] * HOUR == app.clock.now():
            _, action = todo.pop(0)
            if "join" in action:
                timezone = action.get("timezone")
                await make_subscriber(app.rt, action["join"], attributes={"timezone": timezone} if timezone else {})
            else:
                await create_newsletter(
                    app, action["newsletter"], start + action["at"] * HOUR if "at" in action else None
                )
        await settle(app)
        stamped += [app.clock.now()] * (len(app.smtp.received) - len(stamped))
    received = app.smtp.received
    ids = [r.message["Message-ID"].strip() for r in received]
    assert len(ids) == len(set(ids)), "a mail arrived twice"
    async with app.rt.db.read() as session:
        rows = {
            m.message_id.strip(): m
            for m in (
                await session.execute(select(Message.message_id, Message.kind, Message.step_id, Message.newsletter_id))
            ).all()
        }
    return [
        Arrival(at, r.rcpt_tos[0], rows[i].kind, rows[i].step_id, rows[i].newsletter_id)
        for at, r, i in zip(stamped, received, ids, strict=True)
    ]


def caps_broken(times: Sequence[dt.datetime], per_week: int, min_gap: dt.timedelta) -> str | None:
    ordered = sorted(times)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b - a < min_gap:
            return f"{a} and {b} closer than {min_gap}"
    for i in range(len(ordered) - per_week):
        if ordered[i + per_week] - ordered[i] < WEEK:
            return f"{per_week + 1} mails in the 7 days from {ordered[i]}"
    return None


def in_window(window: dict[str, str] | None, at: dt.datetime, timezone: str | None) -> bool:
    if window is None:
        return True
    local = at.astimezone(ZoneInfo(timezone or "UTC"))
    return local.weekday() < 5 and window["start"] <= local.strftime("%H:%M") < window["end"]


@pytest.mark.parametrize(
    ("collision", "newsletter_h", "expected"),
    [
        # Due together: the mode picks the one that goes, the other goes a day later.
        ("step_waits", 48, [("newsletter", 48), ("step", 72)]),
        ("newsletter_waits", 48, [("step", 48), ("newsletter", 72)]),
        # The newsletter due 10 hours after the step: under step_waits the step already waits for it.
        ("step_waits", 58, [("newsletter", 58), ("step", 82)]),
        ("newsletter_waits", 58, [("step", 48), ("newsletter", 72)]),
        # The newsletter due 10 hours before the step: under newsletter_waits it waits for the step.
        ("step_waits", 38, [("newsletter", 38), ("step", 62)]),
        ("newsletter_waits", 38, [("step", 48), ("newsletter", 72)]),
    ],
)
async def test_a_step_and_a_newsletter_due_within_a_day(
    app: App, collision: str, newsletter_h: int, expected: list[tuple[str, int]]
) -> None:
    await set_caps(app, {**CAPS, "collision": collision})
    # The welcome goes at once; the second step falls due two days on, the newsletter about then.
    script = [(0, {"join": "ida@example.com"}), (0, {"newsletter": "N", "at": newsletter_h})]
    arrivals = await run_until_quiet(app, script)
    start = arrivals[0].at
    assert [(a.kind, (a.at - start) / HOUR) for a in arrivals[:3]] == [("step", 0), *expected]


@pytest.mark.slow
@pytest.mark.parametrize("collision", ["step_waits", "newsletter_waits"])
async def test_weeks_of_steps_and_newsletters_within_the_caps(app: App, collision: str) -> None:
    await set_caps(app, {**CAPS, "collision": collision})
    async with app.rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        sequence = (await session.execute(select(SequenceModel).where(SequenceModel.layer_id == layer.id))).scalar_one()
        for template, delay, window in MORE_STEPS:
            data: dict[str, Any] = {"template": template, "delay": delay, "purpose": "educate"}
            await sequences_service.add_step(
                session, sequence.id, {**data, "send_window": window} if window else data, app.rt.settings
            )
    start = app.clock.now()
    arrivals = await run_until_quiet(app, SCRIPT)

    async with app.rt.db.read() as session:
        steps = {
            s.id: s for s in (await session.execute(select(Step).where(Step.sequence_id == sequence.id))).scalars()
        }
        starts = dict((await session.execute(select(Newsletter.id, Newsletter.started_at))).all())
    joined = {a["join"]: start + h * HOUR for h, a in SCRIPT if "join" in a}
    timezone = {a["join"]: a.get("timezone") for _, a in SCRIPT if "join" in a}
    mine: dict[str, list[Arrival]] = defaultdict(list)
    for arrival in arrivals:
        mine[arrival.email].append(arrival)

    for email, got in mine.items():
        # Nothing dropped, nothing twice: every step, and every newsletter that started after they joined.
        assert sorted(a.step_id for a in got if a.step_id) == sorted(steps)
        expected_news = sorted(i for i, at in starts.items() if at > joined[email])
        assert sorted(a.newsletter_id for a in got if a.newsletter_id) == expected_news, email
        # At most three in any 7 days, never two within a day.
        assert caps_broken([a.at for a in got], 3, DAY) is None, (email, [(a.kind, a.at) for a in got])
        # When each fell due: a step its delay after the step before arrived, a newsletter when it started.
        previous = joined[email]
        for a in sorted((a for a in got if a.step_id), key=lambda a: steps[a.step_id].position):  # type: ignore[index]
            a.due = previous + dt.timedelta(seconds=steps[a.step_id].delay_s)  # type: ignore[index]
            previous = a.at
        for a in got:
            if a.newsletter_id:
                a.due = starts[a.newsletter_id]
        # Each went at the first moment it fits, around the mail that took its turn first (the
        # kind that waits takes its turn a day after it fell due) or had gone already.
        waits = "newsletter" if collision == "newsletter_waits" else "step"

        def turn(a: Arrival) -> tuple[dt.datetime, bool]:
            return a.due + DAY * (a.kind == waits), a.kind == waits  # noqa: B023

        for a in got:
            window = steps[a.step_id].send_window if a.step_id else None
            assert a.at >= a.due and in_window(window, a.at, timezone[email])
            before = [b.at for b in got if b is not a and (turn(b) < turn(a) or b.at < a.due)]
            probe = a.due
            while probe < a.at:
                fits = caps_broken([*before, probe], 3, DAY) is None and in_window(window, probe, timezone[email])
                assert not fits, f"{email}: {a.kind} due {a.due} could go at {probe}, went at {a.at}"
                probe += HOUR
    assert len(mine) == 6
    # The layer really was pressed: mail was held, and some of it for more than a week.
    late = [a.at - a.due for a in arrivals]
    assert sum(1 for d in late if d > dt.timedelta(0)) > 20 and max(late) > WEEK


async def test_a_held_newsletter_moves_for_a_step_that_takes_its_turn(rt: Runtime) -> None:  # noqa: F811
    """newsletter_waits: a newsletter held a day after the welcome step moves again when a
    back-end sequence starts within that day: its step goes, the newsletter a day after it."""
    async with rt.db.transaction() as session:
        await layers_service.update_layer(session, 1, {"rule": {"caps": {"collision": "newsletter_waits"}}})
    ida = await make_subscriber(rt, "ida@example.com")
    start = rt.clock.now()
    await tick(rt)
    await mark_sent(rt)  # the welcome, now
    rt.clock.advance(hours=10)
    async with rt.db.transaction() as session:
        news = await newsletters.create(
            session,
            {"name": "News", "template": "newsletter", "layers": [1], "send_now": True},
            rt.clock.now(),
            rt.settings,
        )
    await tick(rt)

    async def newsletter_at() -> dt.datetime:
        async with rt.db.read() as session:
            return (
                await session.execute(select(Message.next_attempt_at).where(Message.newsletter_id == news.id))
            ).scalar_one()

    assert await newsletter_at() == start + DAY  # held: a day after the welcome
    rt.clock.advance(hours=2)
    async with rt.db.transaction() as session:
        backend = await sequences_service.create_sequence(
            session,
            {
                "name": "Back-end",
                "trigger": "purchase",
                "steps": [{"template": "layer3-sample", "delay": "0s", "purpose": "offer"}],
            },
            rt.clock.now(),
            rt.settings,
        )
        subscriber = await session.get(Subscriber, ida.id)
        assert subscriber is not None
        await enroll_in(session, subscriber, backend, rt.clock.now())
    await tick(rt)
    async with rt.db.read() as session:
        queued = (
            await session.execute(
                select(Message.next_attempt_at).where(
                    Message.template_name == "layer3-sample", Message.state == "queued"
                )
            )
        ).scalar_one()
    assert queued == start + 12 * HOUR  # the step goes now (its turn came before the newsletter's)
    assert await newsletter_at() == start + 36 * HOUR  # and the newsletter moved: a day after it
