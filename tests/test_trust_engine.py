"""The trust engine judged through real parts: opens and clicks through the real tracker (writer
process on SQLite, in process on PostgreSQL) are activity, bring sunset subscribers back and are
judged exactly as the recording service judges the same events; the sweep runs on its schedule
and on demand (API and command line)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from responder.cli import main
from responder.funnel import layers as layers_service
from responder.funnel.events import record_event
from responder.funnel.scheduler import Scheduler
from responder.models import Enrollment, Layer, LayerHistory, Message, Sequence, Step, Subscriber
from responder.runtime import Runtime

from .conftest import App, running_app
from .funnel_fixtures import make_subscriber as funnel_subscriber
from .funnel_fixtures import mark_sent, rt  # noqa: F401
from .public_fixtures import another_message, flushed, make_subscriber
from .test_tracking import BROWSER, click_path, open_path

DAY = 86400


async def set_rule(app: App, position: int, rule: dict[str, Any]) -> None:
    resp = await app.client.patch(f"/api/v1/layers/{position}", json={"rule": rule}, headers=app.auth)
    assert resp.status == 200, await resp.text()


async def subscriber(app: App, subscriber_id: int) -> Subscriber:
    async with app.rt.db.read() as session:
        found = await session.get(Subscriber, subscriber_id)
        assert found is not None
        return found


async def layer_position(app: App, subscriber_id: int) -> int:
    async with app.rt.db.read() as session:
        return int(
            (
                await session.execute(
                    select(Layer.position)
                    .join(Subscriber, Subscriber.layer_id == Layer.id)
                    .where(Subscriber.id == subscriber_id)
                )
            ).scalar_one()
        )


async def click(app: App, message_pk: int, url: str = "https://a.example/") -> None:
    resp = await app.client.get(click_path(app, message_pk, url), headers=BROWSER, allow_redirects=False)
    assert resp.status == 302
    await flushed(app)


async def judged(app: App) -> None:
    """Past the machine window for which the judgement of tracked hits waits, and judged."""
    await flushed(app)
    app.clock.advance(app.rt.settings.machine_window_s + 1)
    await flushed(app)


async def confirmed_now(app: App, *subscriber_ids: int) -> None:
    """Their silence starts now (the factory confirms a day ago)."""
    async with app.rt.db.transaction() as session:
        for subscriber_id in subscriber_ids:
            found = await session.get(Subscriber, subscriber_id)
            assert found is not None
            found.confirmed_at = found.layer_entered_at = app.clock.now()


async def sweep_api(app: App) -> list[dict[str, Any]]:
    """A sweep now (the scheduler's own sweep may have made some of its moves already)."""
    resp = await app.client.post("/api/v1/funnel/sweep", headers=app.auth)
    assert resp.status == 200, await resp.text()
    moves: list[dict[str, Any]] = (await resp.json())["moves"]
    return moves


async def test_opens_and_clicks_are_activity_that_keeps_readers_from_sunset(papp: App) -> None:
    """Layer 1 sunsets after 40 s of silence: the reader who clicked and the one who opened are
    kept, the silent one is sunset; each human hit sets the reader's last activity."""
    clicker, clicked = await make_subscriber(papp, "clicker@example.com")
    opener, opened = await make_subscriber(papp, "opener@example.com")
    silent, _ = await make_subscriber(papp, "silent@example.com")
    await confirmed_now(papp, clicker, opener, silent)
    await set_rule(papp, 1, {"sunset": {"inactive_for": "40s"}})
    papp.clock.advance(25)
    await click(papp, clicked)
    assert (await papp.client.get(open_path(papp, opened), headers=BROWSER)).status == 200
    await flushed(papp)
    now = papp.clock.now()
    assert (await subscriber(papp, clicker)).last_human_at == now
    assert (await subscriber(papp, opener)).last_human_at == now
    assert (await subscriber(papp, silent)).last_human_at is None
    papp.clock.advance(16)  # 41 s since confirming, 16 s since their hits
    assert {m["subscriber_id"] for m in await sweep_api(papp)} <= {silent}
    assert [(await subscriber(papp, s)).status for s in (clicker, opener, silent)] == ["active", "active", "sunset"]
    papp.clock.advance(30)  # 46 s since their hits
    assert {m["subscriber_id"] for m in await sweep_api(papp)} <= {clicker, opener}
    assert [(await subscriber(papp, s)).status for s in (clicker, opener)] == ["sunset", "sunset"]


async def test_a_hit_on_an_old_mail_brings_a_sunset_subscriber_back(papp: App) -> None:
    """A click (or an open, which no default rule watches) on an old mail makes a sunset
    subscriber active again and their layer's sequence goes on where it stopped."""
    await set_rule(papp, 1, {"sunset": {"inactive_for": "30d"}})
    ids = {}
    for name in ("clicks", "opens"):
        ids[name] = await make_subscriber(papp, f"{name}@example.com")
    async with papp.rt.db.transaction() as session:
        sequence = (
            await session.execute(
                select(Sequence).join(Layer, Layer.id == Sequence.layer_id).where(Layer.position == 1)
            )
        ).scalar_one()
        for subscriber_id, _ in ids.values():
            session.add(
                Enrollment(
                    subscriber_id=subscriber_id,
                    sequence_id=sequence.id,
                    state="active",
                    next_position=2,
                    due_at=papp.clock.now() + dt.timedelta(days=60),
                    started_at=papp.clock.now(),
                )
            )
    papp.clock.advance(31 * DAY)
    assert all(m["sunset"] for m in await sweep_api(papp))
    for subscriber_id, _ in ids.values():
        assert (await subscriber(papp, subscriber_id)).status == "sunset"
    await click(papp, ids["clicks"][1])
    assert (await papp.client.get(open_path(papp, ids["opens"][1]), headers=BROWSER)).status == 200
    await judged(papp)

    async def steps_queued(subscriber_id: int) -> list[int]:
        async with papp.rt.db.read() as session:
            return list(
                (
                    await session.execute(
                        select(Step.position)
                        .join(Message, Message.step_id == Step.id)
                        .where(Message.subscriber_id == subscriber_id)
                    )
                ).scalars()
            )

    for subscriber_id, _ in ids.values():
        assert (await subscriber(papp, subscriber_id)).status == "active"
        for _ in range(100):
            papp.rt.wake_scheduler()
            if await steps_queued(subscriber_id):
                break
            await asyncio.sleep(0.05)
        # Resumed where it stopped: step 2 went at once, step 1 never (not started over).
        assert await steps_queued(subscriber_id) == [2]


# Each case: a rule for layer 1, days (since the scenario's start) on which the reader clicks a
# mail (each click on a new mail), and the layer after the last click. Both paths must agree.
CASES = {
    "within": ({"promote": {"clicks": {"count": 3, "within": "30d"}}}, [1, 2, 60], 1),
    "within_met": ({"promote": {"clicks": {"count": 3, "within": "30d"}}}, [1, 2, 20], 2),
    "min_stay": ({"promote": {"clicked_messages": 2}, "min_stay": "7d"}, [20, 21], 2),
    "min_stay_holds": ({"promote": {"clicked_messages": 2}, "min_stay": "30d"}, [20, 21], 1),
    "after_step": ({"promote": {"clicks": {"count": 1, "after_step": 1}}}, [3], 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_tracked_clicks_are_judged_as_the_recording_service_judges_them(papp: App, case: str) -> None:
    """One reader clicks through the real tracker, a twin has the same clicks recorded through
    ``record_event`` (the path of API events and replies), at the same moments: same layer."""
    rule, days, expected = CASES[case]
    await set_rule(papp, 1, rule)
    tracked, _ = await make_subscriber(papp, "tracked@example.com")
    twin, _ = await make_subscriber(papp, "twin@example.com")
    async with papp.rt.db.transaction() as session:  # step 1 of layer 1's sequence went to both
        step = (
            (
                await session.execute(
                    select(Step).join(Sequence).where(Sequence.trigger == "layer", Step.position == 1).order_by(Step.id)
                )
            )
            .scalars()
            .first()
        )
        assert step is not None
        for subscriber_id in (tracked, twin):
            session.add(
                Message(
                    subscriber_id=subscriber_id,
                    kind="step",
                    step_id=step.id,
                    template_name=step.template_name,
                    state="sent",
                    attempts=1,
                    next_attempt_at=papp.clock.now(),
                    message_id=f"<step1.{subscriber_id}@t>",
                    created_at=papp.clock.now(),
                    sent_at=papp.clock.now(),
                )
            )
    start = papp.clock.now()
    for day in days:
        papp.clock.advance((start + dt.timedelta(days=day) - papp.clock.now()).total_seconds())
        mails = {s: await another_message(papp, s) for s in (tracked, twin)}
        await click(papp, mails[tracked])
        async with papp.rt.db.transaction() as session:
            reader = await session.get(Subscriber, twin)
            assert reader is not None
            await record_event(session, reader, "click", papp.clock.now(), message_id=mails[twin], url="https://a/")
        await judged(papp)
    assert await layer_position(papp, tracked) == expected
    assert await layer_position(papp, twin) == expected


async def test_sweep_on_demand_from_the_command_line(papp: App, capsys: pytest.CaptureFixture[str]) -> None:
    if not papp.rt.db.is_sqlite:
        pytest.skip("the command line runs on the same database; SQLite is enough to show it")
    silent, _ = await make_subscriber(papp, "silent@example.com")
    # The command line's clock is the real one, months after the test clock: only it sees
    # 30 days of silence, so the server's own sweep cannot take the move first.
    await set_rule(papp, 1, {"sunset": {"inactive_for": "30d"}})
    url = papp.rt.settings.database_url
    code = await asyncio.to_thread(main, ["funnel", "sweep", "--json", "--database-url", url])
    assert code == 0
    moves = json.loads(capsys.readouterr().out)["moves"]
    assert [(m["subscriber_id"], m["sunset"]) for m in moves] == [(silent, True)]
    assert "no human event" in moves[0]["reason"]
    assert (await subscriber(papp, silent)).status == "sunset"


async def test_the_sweep_runs_every_sweep_every_s(database_url: str, smtp: Any, clock: Any) -> None:
    async with running_app(database_url, smtp, clock, RESPONDER_SWEEP_EVERY_S="60") as app:
        quiet, _ = await make_subscriber(app, "quiet@example.com")
        await set_rule(app, 1, {"sunset": {"inactive_for": "2d"}})  # confirmed a day ago

        async def status_after_a_tick() -> str:
            app.rt.wake_scheduler()
            await asyncio.sleep(0.3)
            return (await subscriber(app, quiet)).status

        app.clock.advance(DAY - 10)  # silent 2 d less 10 s; a sweep is due (started > 60 s ago)
        assert await status_after_a_tick() == "active"
        app.clock.advance(20)  # silent long enough, but the last sweep was 20 s ago
        assert await status_after_a_tick() == "active"
        app.clock.advance(41)  # 61 s since that sweep: the next one sunsets
        for _ in range(20):
            if await status_after_a_tick() == "sunset":
                break
        assert (await subscriber(app, quiet)).status == "sunset"
        async with app.rt.db.read() as session:
            [row] = (await session.execute(select(LayerHistory).where(LayerHistory.subscriber_id == quiet))).scalars()
            assert (row.kind, row.reason) == ("sunset", "sunset: no human event for 2 days")


async def test_an_imported_list_is_silent_from_its_import_not_from_its_old_consent(app: App) -> None:
    """Consent given elsewhere two years ago is on record, but the silence the sweep counts
    starts when the list was imported: the first sweep sunsets nobody."""
    csv = "email,name,consented_at\nold-consent@example.com,Olga,2024-01-05T09:00:00+00:00\n"
    resp = await app.client.post(
        "/api/v1/imports?consent_source=fair", data=csv, headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 202, await resp.text()
    for _ in range(200):
        job = await (await app.client.get(f"/api/v1/imports/{(await resp.json())['id']}", headers=app.auth)).json()
        if job["state"] != "running":
            break
        await asyncio.sleep(0.02)
    assert job["imported"] == 1
    async with app.rt.db.read() as session:
        olga = (
            await session.execute(select(Subscriber).where(Subscriber.email == "old-consent@example.com"))
        ).scalar_one()
    assert olga.confirmed_at is not None and olga.confirmed_at.year == 2024
    assert await sweep_api(app) == []
    assert (await subscriber(app, olga.id)).status == "active"
    app.clock.advance(181 * DAY)  # the default rule: sunset after 180 days of silence
    await sweep_api(app)
    assert (await subscriber(app, olga.id)).status == "sunset"


async def test_a_tick_sweeps_before_it_queues_mail(rt: Runtime) -> None:
    """Someone whose silence ran out while their next step fell due is sunset by the tick, not
    sent that step first (the sweep runs before the stepper and the newsletters)."""
    async with rt.db.transaction() as session:
        await layers_service.update_layer(session, 1, {"rule": {"sunset": {"inactive_for": "36h"}}})
    quiet = await funnel_subscriber(rt, "quiet@example.com")
    scheduler = Scheduler(rt)
    while await scheduler.run_once():
        pass
    assert await mark_sent(rt) == 1  # the welcome step
    rt.clock.advance(2 * DAY)  # the second step is due, and 48 h of silence > 36 h
    await scheduler.run_once()
    async with rt.db.read() as session:
        found = await session.get(Subscriber, quiet.id)
        assert found is not None and found.status == "sunset"
        kinds = (await session.execute(select(Message.state).where(Message.subscriber_id == quiet.id))).scalars()
        assert list(kinds) == ["sent"]
