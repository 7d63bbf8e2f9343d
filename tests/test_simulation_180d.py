"""1,000 scripted subscribers over 180 days through the real engine — the running server's
scheduler, sweep, judge and delivery worker mailing an SMTP sink, opens and clicks through the
real tracker (people's browsers, Gmail's image proxy, a link scanner), purchases through the
API, unsubscribes with the one-click link — compared subscriber by subscriber with what the
documented rules say should happen, worked out independently in ``tests/sim_reference.py``:
each one's final layer, status and number of mails.

SQLite by default; ``RESPONDER_TEST_SIM_DATABASES=sqlite,postgresql`` runs it on PostgreSQL too.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter, defaultdict

import pytest
from sqlalchemy import func, insert, select

from responder.app import BACKGROUND
from responder.funnel.layers import update_layer
from responder.funnel.scheduler import Scheduler
from responder.models import Enrollment, Event, Layer, LayerHistory, Message, Sequence, Step, Subscriber

from . import sim_reference as ref
from .conftest import App, running_app
from .funnel_fixtures import settle
from .public_fixtures import flushed
from .test_tracking import BROWSER, GMAIL, click_path, open_path

DATABASES = os.environ.get("RESPONDER_TEST_SIM_DATABASES", "sqlite").split(",")
SCANNER = {"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"}
RULE = {
    "promote": {"on_any": ["purchase", "reply"], "clicked_messages": ref.CLICKED_MESSAGES},
    "demote": {"inactive_for": "45d"},
    "sunset": {"inactive_for": "100d"},
}


async def populate(app: App) -> tuple[dt.datetime, dict[int, str]]:
    """The reference's world: five layers with the one rule and three-step sequences, and the
    subscribers, all joining now, enrolled in layer 1; their personas by id."""
    start = app.clock.now()
    kinds = ref.personas()
    async with app.rt.db.transaction() as session:
        for position in range(1, ref.LAYERS + 1):
            await update_layer(session, position, {"rule": RULE})
        for sequence in (await session.execute(select(Sequence).where(Sequence.trigger == "layer"))).scalars():
            steps = (
                (await session.execute(select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)))
                .scalars()
                .all()
            )
            assert len(steps) == len(ref.DELAYS)
            for step, delay in zip(steps, ref.DELAYS, strict=True):
                step.delay_s = delay
        layer1 = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        main = (await session.execute(select(Sequence).where(Sequence.layer_id == layer1.id))).scalar_one()
        await session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"sim{i}@example.com",
                    "name": "",
                    "status": "active",
                    "layer_id": layer1.id,
                    "layer_entered_at": start,
                    "attributes": {},
                    "tags": [],
                    "created_at": start,
                    "confirmed_at": start,
                }
                for i in range(len(kinds))
            ],
        )
        ids = sorted((await session.execute(select(Subscriber.id))).scalars())
        await session.execute(
            insert(Enrollment),
            [
                {
                    "subscriber_id": i,
                    "sequence_id": main.id,
                    "state": "active",
                    "next_position": 1,
                    "due_at": start,
                    "started_at": start,
                }
                for i in ids
            ],
        )
    return start, dict(zip(ids, kinds, strict=True))


async def act(app: App, start: dt.datetime, persona: dict[int, str], seen: int) -> int:
    """The subscribers' doings at this tick on the mail delivered before it; the newest message
    id looked at."""
    now = app.clock.now()
    day = (now - start).total_seconds() / ref.DAY
    email = {sid: f"sim{i}@example.com" for i, sid in enumerate(sorted(persona))}
    async with app.rt.db.read() as session:
        arrived = (
            await session.execute(
                select(Message.id, Message.subscriber_id, Message.sent_at)
                .where(Message.id > seen, Message.state == "sent", Message.sent_at < now)
                .order_by(Message.id)
            )
        ).all()
    client = app.client
    for message_id, subscriber_id, sent_at in arrived:
        kind = persona[subscriber_id]
        if kind == "reader" or (kind == "fader" and sent_at < start + dt.timedelta(seconds=ref.FADER_CLICKS_BEFORE)):
            path = click_path(app, message_id, "https://acme.example.com/guides/first-step")
            assert (await client.get(path, headers=BROWSER, allow_redirects=False)).status == 302
        elif kind == "opener":
            assert (await client.get(open_path(app, message_id), headers={"User-Agent": GMAIL})).status == 200
        elif kind == "scanned":
            path = click_path(app, message_id, "https://acme.example.com/guides/first-step")
            assert (await client.get(path, headers=SCANNER, allow_redirects=False)).status == 302
            assert (await client.get(open_path(app, message_id), headers=SCANNER)).status == 200
    for subscriber_id, kind in persona.items():
        if kind == "buyer" and day in ref.PURCHASE_DAYS:
            resp = await client.post(
                "/api/v1/events",
                json={"email": email[subscriber_id], "type": "purchase", "data": {"value": 20}},
                headers=app.auth,
            )
            assert resp.status == 201, await resp.text()
        if kind == "unsubscriber" and day == ref.UNSUBSCRIBE_DAY:
            token = app.rt.tokens.unsubscribe(subscriber_id)
            assert (await client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click")).status == 200
    return arrived[-1][0] if arrived else seen


@pytest.mark.slow
@pytest.mark.parametrize("database_url", DATABASES, indirect=True)
async def test_180_days_of_1000_subscribers_match_the_reference(database_url: str, smtp, clock) -> None:  # type: ignore[no-untyped-def]
    expected = ref.run()
    async with running_app(database_url, smtp, clock, RESPONDER_TRACK_FLUSH_MS="20") as app:
        start, persona = await populate(app)
        # The server's own scheduler would run whenever it is woken, at whatever the clock says
        # then; this one runs at the reference's moments (the tick, and the judgement after it).
        for loop in app.client.server.app[BACKGROUND]:  # type: ignore[union-attr]
            if isinstance(loop, Scheduler):
                loop.stop()
        scheduler = Scheduler(app.rt)

        async def run_scheduler() -> None:
            while await scheduler.run_once():
                pass
            await settle(app)  # and the delivery worker sends what it queued

        seen = 0
        for tick in range(ref.DAYS * 2):
            target = start + dt.timedelta(seconds=tick * ref.TICK)
            app.clock.advance(seconds=(target - app.clock.now()).total_seconds())
            await run_scheduler()
            seen = await act(app, start, persona, seen)
            await flushed(app)
            app.clock.advance(seconds=ref.JUDGED_AFTER)  # past the window human hits are judged after
            await flushed(app)
            await run_scheduler()

        async with app.rt.db.read() as session:
            rows = (
                await session.execute(
                    select(Subscriber.id, Layer.position, Subscriber.status).join(
                        Layer, Layer.id == Subscriber.layer_id
                    )
                )
            ).all()
            mails = dict(
                (
                    await session.execute(
                        select(Message.subscriber_id, func.count())
                        .where(Message.kind == "step", Message.state == "sent")
                        .group_by(Message.subscriber_id)
                    )
                ).all()
            )
            history = Counter(
                dict((await session.execute(select(LayerHistory.kind, func.count()).group_by(LayerHistory.kind))).all())
            )
            moves = (
                await session.execute(
                    select(LayerHistory.from_position, LayerHistory.to_position).where(LayerHistory.kind == "move")
                )
            ).all()
            machine = (
                await session.execute(select(func.count()).select_from(Event).where(Event.machine.is_(True)))
            ).scalar_one()
            human_hits = (
                await session.execute(
                    select(func.count())
                    .select_from(Event)
                    .where(Event.type.in_(("open", "click")), Event.machine.is_(False))
                )
            ).scalar_one()
        delivered = len(smtp.received)
        trace: dict[int, list[str]] = {}  # the story of one subscriber of each persona, in days
        async with app.rt.db.read() as session:  # a closed session would open a connection nobody returns
            for sid in {min(i for i in persona if persona[i] == kind) for kind in ref.PERSONAS}:
                days = lambda at: round((at - start).total_seconds() / ref.DAY, 3)  # noqa: E731
                story = [
                    f"{days(h.created_at)} {h.kind} {h.from_position}->{h.to_position}"
                    for h in (
                        await session.execute(select(LayerHistory).where(LayerHistory.subscriber_id == sid))
                    ).scalars()
                ]
                story += [
                    f"{days(m.sent_at)} mail {m.kind}"
                    for m in (await session.execute(select(Message).where(Message.subscriber_id == sid))).scalars()
                    if m.sent_at
                ]
                story += [
                    f"{days(e.created_at)} {e.type}{' machine' if e.machine else ''}"
                    for e in (await session.execute(select(Event).where(Event.subscriber_id == sid))).scalars()
                    if e.type in ("open", "click", "purchase")
                ]
                trace[sid] = sorted(story, key=lambda line: float(line.split()[0]))

    ids = sorted(persona)
    got = {sid: (layer, status, mails.get(sid, 0)) for sid, layer, status in rows}
    wrong = defaultdict(list)
    for sid, want in zip(ids, expected, strict=True):
        if got[sid] != (want.layer, want.status, want.mails):
            wrong[persona[sid]].append((sid, got[sid], (want.layer, want.status, want.mails)))
    ups = sum(1 for a, b in moves if b > a)
    figures = {
        "promotions": (ups, sum(o.promotions for o in expected)),
        "demotions": (len(moves) - ups, sum(o.demotions for o in expected)),
        "sunsets": (history["sunset"], sum(1 for o in expected if o.status == "sunset")),
        "revivals": (history["revive"], 0),
        "mails": (sum(mails.values()), sum(o.mails for o in expected)),
    }
    print(
        f"\nengine vs reference: {figures}; delivered at the sink {delivered}; human hits {human_hits}; machine hits {machine}"
    )
    print("final states:", Counter((persona[s], got[s][0], got[s][1]) for s in ids).most_common())
    for sid, story in trace.items():
        if persona[sid] in wrong:
            print(persona[sid], sid, "engine:", "; ".join(story))
    assert not wrong, (
        {k: v[:3] for k, v in wrong.items()},
        {persona[k]: v for k, v in trace.items() if persona[k] in wrong},
    )
    assert all(engine == reference for engine, reference in figures.values()), figures
    assert machine > 0 and delivered >= sum(o.mails for o in expected)
