"""The layers workbench of the admin UI: layers added, renamed, relabelled, reordered and removed
(after a page saying what happens to their subscribers), rules written in words or JSON with
a live sentence and a what-if judged by the real judge without writing anything; over HTTP for
every action and refusal, and the whole flow in Chromium, down to a subscriber's next click."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, expect
from sqlalchemy import func, select

from responder.core.promotion import DEFAULT_RULE, PROMOTING_TYPES, validate_rule
from responder.core.rule_words import (
    EVENT_WORDS,
    error_in_words,
    fields_from_rule,
    rule_from_fields,
    rule_sentences,
)
from responder.errors import ValidationError
from responder.funnel import layers as layers_service
from responder.funnel.events import record_event
from responder.funnel.judge import judge, what_if
from responder.models import Event, Layer, LayerHistory, Message, Subscriber
from responder.runtime import Runtime

from .admin_fixtures import Browser, make_subscriber, signed_in
from .browser_fixtures import SCREENSHOTS, LiveServer, chromium, live  # noqa: F401
from .conftest import App
from .funnel_fixtures import rt  # noqa: F401
from .test_admin_browser import sign_in
from .test_tracking import BROWSER

COMPLETE = {
    "promote": {
        "on_any": ["purchase", "reply"],
        "clicked_messages": 2,
        "clicks": {"count": 3, "within": "30d", "after_step": 2},
    },
    "demote": {"inactive_for": "90d"},
    "sunset": {"inactive_for": "180d", "ask_before": "14d"},
    "min_stay": "1w",
    "preferred": {"purchase_value": 500, "human_clicks": 10},
    "caps": {"max_per_week": 3, "min_gap": "1d", "collision": "newsletter_waits"},
}
ONLY_PURCHASES = {"promote": {"on_any": ["purchase"]}}
MAIL_NUMBERS = itertools.count()


# The words: pure


def test_the_complete_rule_in_words() -> None:
    assert rule_sentences(validate_rule(COMPLETE), position=2, top_position=5) == [
        "Moves up to layer 3 at once on a purchase or a reply, or once they have clicked in 2 different mails,"
        " or after 3 clicks within 30 days once step 2 of the layer's sequence was sent.",
        "Moves down to layer 1 after 90 days without activity.",
        "After 180 days without activity mailing them stops; 14 days before, they are asked whether they still"
        " want the mails.",
        "Stays at least 1 week in this layer before any move.",
        "Marked preferred when their purchases add up to 500 or after 10 clicks in this layer.",
        "At most 3 mails a week, at least 1 day apart.",
        "When a drip step and a newsletter fall due within a day, the drip step goes first and the newsletter waits.",
    ]


@pytest.mark.parametrize(
    ("rule", "position", "expected"),
    [
        (DEFAULT_RULE, 1, "Moves up to layer 2 at once on a purchase or a reply, or once they have clicked in 2"),
        (DEFAULT_RULE, 5, "This is the top layer: nobody moves up from it."),
        ({}, 3, "Nobody moves up from this layer by the rule; an admin can move people by hand."),
        ({}, 3, "Never moves down for being quiet."),
        ({}, 3, "Keeps mailing them however long they are quiet."),
        ({}, 3, "No weekly limit on mails."),
        ({}, 3, "the newsletter goes first and the drip step waits."),
        ({"promote": {"clicked_messages": 1}}, 1, "Moves up to layer 2 on a click in a mail."),
        ({"sunset": {"inactive_for": "36h"}}, 1, "After 36 hours without activity mailing them stops, without asking"),
        ({"caps": {"min_gap": "2d"}}, 1, "Mails at least 2 days apart."),
        ({"preferred": {"purchase_value": 99.5}}, 1, "Marked preferred when their purchases add up to 99.5."),
    ],
)
def test_parts_of_rules_in_words(rule: dict[str, Any], position: int, expected: str) -> None:
    assert expected in " ".join(rule_sentences(validate_rule(rule), position=position, top_position=5))


def test_layer_one_never_speaks_of_moving_down() -> None:
    assert "down" not in " ".join(rule_sentences(validate_rule(DEFAULT_RULE), position=1, top_position=5))


@pytest.mark.parametrize("rule", [COMPLETE, DEFAULT_RULE, {}, ONLY_PURCHASES, {"sunset": {"inactive_for": "40s"}}])
def test_the_form_fields_and_the_json_say_the_same(rule: dict[str, Any]) -> None:
    fields = fields_from_rule(validate_rule(rule))
    assert validate_rule(rule_from_fields(fields, fields["up_on"])) == validate_rule(rule)


def test_every_promoting_event_has_words() -> None:
    assert set(EVENT_WORDS) == PROMOTING_TYPES


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"up_mails": "two"}, "up_mails", "The number of different mails clicked must be a whole number, e.g. 3"),
        ({"down_after": "1.5"}, "down_after", "must be a whole number of minutes, hours, days or weeks"),
        ({"preferred_value": "nan"}, "preferred_value", "The purchase total must be a number"),
    ],
)
def test_fields_that_are_not_numbers(fields: dict[str, str], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        rule_from_fields(fields, [])
    assert refused.value.field == field and message in refused.value.message


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"up_mails": "0"}, "up_mails", "The number of different mails clicked must be a whole number, 1 or more"),
        ({"up_clicks_within": "3"}, "up_clicks", "The number of clicks is needed"),
        (
            {"sunset_after": "10", "sunset_ask": "10"},
            "sunset_ask",
            "The time before stopping to ask must be shorter than the time before mailing stops",
        ),
        (
            {"sunset_ask": "3"},
            "sunset_ask",
            "The time before stopping to ask needs a time without activity after which mailing stops",
        ),
        ({"preferred_value": "-5"}, "preferred_value", "The purchase total must be more than 0"),
        ({"cap_week": "0"}, "cap_week", "The mails a week must be a whole number, 1 or more"),
    ],
)
def test_refusals_of_the_one_check_are_said_in_the_forms_words(
    fields: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        validate_rule(rule_from_fields(fields, []))
    assert error_in_words(refused.value) == (field, message)


# The what-if: the judge's facts and decision, nothing written


async def sent_mail(rt: Runtime, subscriber_id: int) -> int:
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        message = Message(
            subscriber_id=subscriber_id,
            kind="newsletter",
            template_name="newsletter",
            state="sent",
            attempts=1,
            next_attempt_at=now,
            message_id=f"<wb.{next(MAIL_NUMBERS)}@example.com>",
            created_at=now - dt.timedelta(hours=1),
            sent_at=now - dt.timedelta(hours=1),
        )
        session.add(message)
        await session.flush()
        return message.id


async def clicks_in(rt: Runtime, subscriber_id: int, mails: int) -> list[int]:
    """``mails`` sent mails, each clicked once (a person's click, recorded by the service)."""
    ids = [await sent_mail(rt, subscriber_id) for _ in range(mails)]
    async with rt.db.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        for message_id in ids:
            await record_event(session, subscriber, "click", rt.clock.now(), message_id=message_id, url="https://a/")
    return ids


async def set_rule(rt: Runtime, position: int, rule: dict[str, Any]) -> None:
    async with rt.db.transaction() as session:
        await layers_service.update_layer(session, position, {"rule": rule})


async def writes(rt: Runtime) -> tuple[int, int, str]:
    async with rt.db.read() as session:
        events = (await session.execute(select(func.count(Event.id)))).scalar_one()
        moves = (await session.execute(select(func.count(LayerHistory.id)))).scalar_one()
        places = (await session.execute(select(Subscriber.id, Subscriber.layer_id, Subscriber.status))).all()
    return events, moves, repr(sorted(places))


async def test_what_if_judges_as_the_judge_and_writes_nothing(rt: Runtime) -> None:  # noqa: F811
    await set_rule(rt, 2, ONLY_PURCHASES)
    people = [await make_subscriber(rt, f"w{i}@example.com", layer=2) for i in range(5)]
    quiet = await make_subscriber(rt, "quiet@example.com", layer=2)
    rt.clock.advance(60)
    await clicks_in(rt, people[0], 2)
    await clicks_in(rt, people[1], 3)
    await clicks_in(rt, people[2], 1)
    rt.clock.advance(40 * 86400)  # the quiet one has been silent for 40 days, the others for 40 too
    async with rt.db.transaction() as session:
        found = await session.get(Subscriber, people[3])
        assert found is not None
        await record_event(session, found, "open", rt.clock.now())  # active just now
    candidate = validate_rule({"promote": {"clicked_messages": 2}, "demote": {"inactive_for": "30d"}})
    before = await writes(rt)
    async with rt.db.read() as session:
        layer = await layers_service.layer_at(session, 2)
        checked = await what_if(session, layer, candidate, rt.clock.now())
    assert (checked.judged, checked.up, checked.down, checked.sunset, checked.stay) == (6, 2, 3, 0, 1)
    assert await writes(rt) == before  # nothing written
    await set_rule(rt, 2, candidate)
    async with rt.db.transaction() as session:
        moved = await judge(session, [*people, quiet], rt.clock.now())
    ups = sorted(j.subscriber_id for j in moved if j.decision.target_position == 3)
    downs = sorted(j.subscriber_id for j in moved if j.decision.target_position == 1)
    assert ups == sorted(people[:2]) and downs == sorted([people[2], people[4], quiet])


# The pages over HTTP


async def positions(rt: Runtime) -> list[tuple[int, str, str]]:
    async with rt.db.read() as session:
        return [(layer.position, layer.name, layer.label) for layer in await layers_service.active_layers(session)]


async def layer_id(rt: Runtime, position: int) -> str:
    async with rt.db.read() as session:
        return str((await layers_service.layer_at(session, position)).id)


async def test_add_rename_relabel_describe_and_reorder(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    page = await (await browser.get("/admin/layers")).text()
    assert "Promotion rule" in page and "/admin/sequences#layer-2" in page
    assert "Moves up to layer 2 at once on a purchase or a reply" in page
    resp = await browser.post("/admin/layers", {"name": "Ambassador", "label": "Ambassador", "position": "6"})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/layers?notice=added#layer-6"
    assert (await positions(app.rt))[-1] == (6, "Ambassador", "Ambassador")

    # The same name twice: said next to the name, what was typed kept.
    resp = await browser.post("/admin/layers", {"name": "Mastery", "label": "Guru", "position": "2"})
    page = await resp.text()
    assert resp.status == 400
    assert (
        '<p class="field-error" id="add-name-error" role="alert">a layer named &#39;Mastery&#39; exists already</p>'
        in page
    )
    assert 'value="Guru"' in page and 'aria-describedby="add-name-error"' in page

    resp = await browser.post(
        "/admin/layers/6",
        {"layer_id": await layer_id(app.rt, 6), "name": "Ambassadors", "label": "Champion", "description": "Advocates"},
    )
    assert resp.status == 303
    assert (await positions(app.rt))[-1] == (6, "Ambassadors", "Champion")
    resp = await browser.post(
        "/admin/layers/6", {"layer_id": await layer_id(app.rt, 6), "name": "Ambassadors", "label": ""}
    )
    assert resp.status == 400 and 'id="edit-6-label-error"' in await resp.text()

    before = await positions(app.rt)
    resp = await browser.post("/admin/layers/6/move", {"layer_id": await layer_id(app.rt, 6), "direction": "up"})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/layers?notice=moved#layer-5"
    after = await positions(app.rt)
    assert after[4][1:] == before[5][1:] and after[5][1:] == before[4][1:]
    resp = await browser.post("/admin/layers/1/move", {"layer_id": await layer_id(app.rt, 1), "direction": "up"})
    assert resp.status == 400 and "Layer 1 is the first already." in await resp.text()
    resp = await browser.post("/admin/layers/6/move", {"layer_id": await layer_id(app.rt, 6), "direction": "down"})
    assert resp.status == 400 and "Layer 6 is the last already." in await resp.text()
    # A form from before the reorder changes nothing.
    stale = await layer_id(app.rt, 5)
    await browser.post("/admin/layers/5/move", {"layer_id": stale, "direction": "down"})
    resp = await browser.post("/admin/layers/5/move", {"layer_id": stale, "direction": "down"})
    assert resp.status == 400 and "The layers changed since this page was loaded" in await resp.text()

    resp = await browser.post("/admin/layers", {"name": "Curious", "label": "Curious", "position": "1"})
    assert resp.status == 303 and len(await positions(app.rt)) == 7
    page = await (await browser.get("/admin/layers")).text()
    assert 'id="add-refused"' in page and 'id="add-form"' not in page
    resp = await browser.post("/admin/layers", {"name": "Eighth", "label": "Eighth"})
    assert resp.status == 400 and "there can be at most 7 layers" in await resp.text()


async def test_removal_says_what_happens_first_then_moves_everyone(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    people = [await make_subscriber(app.rt, f"r{i}@example.com", layer=3) for i in range(3)]
    await make_subscriber(app.rt, "gone@example.com", layer=3, status="unsubscribed")
    page = await (await browser.get("/admin/layers")).text()
    assert 'id="add-form"' in page
    resp = await browser.post("/admin/layers", {"name": "Sixth", "label": "Sixth"})
    assert resp.status == 303
    page = await (await browser.get("/admin/layers/3/remove")).text()
    assert "It has <strong>3 active subscribers</strong> and 1 who is not mailed any more" in page
    assert '<option value="2" selected>2 · Adoption of basic products and services</option>' in page
    assert (await positions(app.rt))[2][1] == "Mastery"  # nothing changed by looking

    resp = await browser.post("/admin/layers/3/remove", {"layer_id": await layer_id(app.rt, 3), "move_to": "3"})
    assert resp.status == 400 and 'id="move-to-error"' in await resp.text()
    resp = await browser.post("/admin/layers/3/remove", {"layer_id": await layer_id(app.rt, 3), "move_to": "5"})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/layers?notice=removed&moved=4&to=4"
    assert "4 subscribers moved to layer 4." in await (await browser.get(resp.headers["Location"])).text()
    assert [name for _, name, _ in await positions(app.rt)][2:] == [
        "Adoption of methods",
        "Strong client/supplier relationship",
        "Sixth",
    ]
    async with app.rt.db.read() as session:
        places = set((await session.execute(select(Subscriber.layer_id).where(Subscriber.id.in_(people)))).scalars())
        assert places == {(await layers_service.layer_at(session, 4)).id}

    # Down to four layers: the page says why nothing can be removed, and the post is refused.
    resp = await browser.post("/admin/layers/5/remove", {"layer_id": await layer_id(app.rt, 5), "move_to": "1"})
    assert resp.status == 303 and len(await positions(app.rt)) == 4
    page = await (await browser.get("/admin/layers")).text()
    assert "Remove…" not in page and "It cannot be removed: a funnel needs at least 4 layers" in page
    page = await (await browser.get("/admin/layers/2/remove")).text()
    assert 'id="remove-refused"' in page and 'id="remove-form"' not in page
    resp = await browser.post("/admin/layers/2/remove", {"layer_id": await layer_id(app.rt, 2), "move_to": "1"})
    assert resp.status == 400 and "there must be at least 4 layers" in await resp.text()
    assert len(await positions(app.rt)) == 4


async def test_every_form_needs_the_csrf_token_and_names_stay_text(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    one = await layer_id(app.rt, 1)
    posts = {
        "/admin/layers": {"name": "X", "label": "X"},
        "/admin/layers/1": {"layer_id": one, "name": "X", "label": "X"},
        "/admin/layers/1/move": {"layer_id": one, "direction": "down"},
        "/admin/layers/1/remove": {"layer_id": one, "move_to": "2"},
        "/admin/layers/1/rule": {"layer_id": one, "do": "save", "up_mails": "3"},
        "/admin/layers/1/rule/words": {"up_mails": "3"},
    }
    before = await positions(app.rt)
    async with app.rt.db.read() as session:
        rule = (await layers_service.layer_at(session, 1)).rule
    for path, data in posts.items():
        assert (await browser.post(path, data, csrf=False)).status == 403, path
        assert (await browser.post(path, {**data, "csrf": "forged"}, csrf=False)).status == 403, path
    assert await positions(app.rt) == before
    async with app.rt.db.read() as session:
        assert (await layers_service.layer_at(session, 1)).rule == rule
    # Nothing secret in any address the pages link or post to; a hostile name stays text.
    hostile = "<script>alert(1)</script>"
    async with app.rt.db.transaction() as session:
        await layers_service.update_layer(session, 2, {"name": hostile, "label": hostile, "description": hostile})
    for path in ("/admin/layers", "/admin/layers/2/rule", "/admin/layers/2/remove", "/admin/layers/3/remove"):
        page = await (await browser.get(path)).text()
        assert browser.csrf and f"csrf={browser.csrf}" not in page and "?csrf" not in page
        assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


async def rule_form(app: App, browser: Browser, position: int, **fields: str) -> dict[str, str]:
    """The fields of layer ``position``'s rule form (the page loaded: the browser has its token)."""
    await browser.get(f"/admin/layers/{position}/rule")
    return {"layer_id": await layer_id(app.rt, position), "source": "form", **fields}


async def test_a_rule_in_words_checked_then_saved(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    await set_rule(app.rt, 2, ONLY_PURCHASES)
    people = [await make_subscriber(app.rt, f"c{i}@example.com", layer=2) for i in range(3)]
    app.clock.advance(60)
    await clicks_in(app.rt, people[0], 2)
    await clicks_in(app.rt, people[1], 1)

    page = await (await browser.get("/admin/layers/2/rule")).text()
    assert "Moves up to layer 3 at once on a purchase." in page
    assert '<input type="checkbox" name="up_on" value="purchase" checked>' in page
    assert "&#34;on_any&#34;: [\n" in page  # the JSON, for experts

    form = await rule_form(app, browser, 2, up_mails="2", down_after="", collision="step_waits")
    resp = await browser.post("/admin/layers/2/rule/words", form)
    assert await resp.json() == {
        "sentence": "Moves up to layer 3 once they have clicked in 2 different mails. Never moves down for being"
        " quiet. Keeps mailing them however long they are quiet. No weekly limit on mails. When a drip step and a"
        " newsletter fall due within a day, the newsletter goes first and the drip step waits.",
        "json": json.dumps({"promote": {"on_any": [], "clicked_messages": 2}}, indent=2),
    }
    resp = await browser.post("/admin/layers/2/rule", {**form, "do": "check"})
    page = await resp.text()
    assert resp.status == 200
    assert 'id="what-if-up">1<' in page and 'id="what-if-down">0<' in page and 'id="what-if-stay">2<' in page
    assert 'value="2" aria-label="number of different mails clicked"' in page  # the candidate stays in the form
    async with app.rt.db.read() as session:
        assert (await layers_service.layer_at(session, 2)).rule == ONLY_PURCHASES  # checked, not saved

    # Refused: said next to the field, in words.
    resp = await browser.post("/admin/layers/2/rule/words", {**form, "up_mails": "0"})
    assert await resp.json() == {
        "error": "The number of different mails clicked must be a whole number, 1 or more",
        "field": "up_mails",
    }
    resp = await browser.post("/admin/layers/2/rule", {**form, "up_mails": "0", "do": "save"})
    page = await resp.text()
    assert resp.status == 400
    assert (
        '<p class="field-error" id="up_mails-error" role="alert">The number of different mails clicked must be a'
        " whole number, 1 or more</p>" in page
    )

    resp = await browser.post("/admin/layers/2/rule", {**form, "do": "save"})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/layers/2/rule?notice=saved"
    async with app.rt.db.read() as session:
        assert (await layers_service.layer_at(session, 2)).rule == {"promote": {"on_any": [], "clicked_messages": 2}}
    assert "judged by it at their next event" in await (await browser.get(resp.headers["Location"])).text()

    # Saved and applied now: the one the what-if counted moves up.
    resp = await browser.post("/admin/layers/2/rule", {**form, "do": "save", "apply": "1"})
    assert resp.headers["Location"] == "/admin/layers/2/rule?notice=saved&moved=1"
    async with app.rt.db.read() as session:
        moved = (await session.execute(select(Subscriber.id).join(Layer).where(Layer.position == 3))).scalars().all()
    assert list(moved) == [people[0]]


async def test_the_rule_as_json_both_ways(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    form = await rule_form(app, browser, 3, source="json")
    resp = await browser.post("/admin/layers/3/rule", {**form, "rule_json": json.dumps(COMPLETE), "do": "check"})
    page = await resp.text()
    assert resp.status == 200 and 'id="what-if"' in page
    assert 'id="f-cap_week" name="cap_week" value="3"' in page  # the form shows what the JSON says
    assert '<option value="w" selected>weeks</option>' in page
    resp = await browser.post(
        "/admin/layers/3/rule", {**form, "rule_json": '{"promote": {"on_any": ["sent"]}}', "do": "save"}
    )
    page = await resp.text()
    assert resp.status == 400 and 'id="rule_json-error"' in page and "promote.on_any must list event types" in page
    for bad in ("{not json", '{"preferred": {"purchase_value": NaN}}', "[" * 19000):
        resp = await browser.post("/admin/layers/3/rule", {**form, "rule_json": bad, "do": "save"})
        assert resp.status == 400 and 'id="rule_json-error"' in await resp.text(), bad
    resp = await browser.post("/admin/layers/3/rule", {**form, "rule_json": json.dumps(COMPLETE), "do": "save"})
    assert resp.status == 303
    async with app.rt.db.read() as session:
        assert (await layers_service.layer_at(session, 3)).rule == validate_rule(COMPLETE)


# The whole flow in Chromium


async def screenshots(page: Page, shots: Path, name: str) -> None:
    """``name``.png as it is, then ``name``-375.png at a phone's 375 px, where the page must have
    no horizontal scrollbar."""
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    await page.set_viewport_size({"width": 375, "height": 800})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, (page.url, width)
    await page.screenshot(path=str(shots / f"{name}-375.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 720})  # Playwright's default


async def layer_of(rt: Runtime, subscriber_id: int) -> int:
    async with rt.db.read() as session:
        return int(
            (
                await session.execute(select(Layer.position).join(Subscriber).where(Subscriber.id == subscriber_id))
            ).scalar_one()
        )


async def test_build_the_funnel_in_chromium(
    chromium: BrowserContext,  # noqa: F811
    live: LiveServer,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    rt = live.rt
    await set_rule(rt, 2, ONLY_PURCHASES)
    ann, bob, cat = [await make_subscriber(rt, f"{n}@example.com", name=n, layer=2) for n in ("ann", "bob", "cat")]
    leaving = [await make_subscriber(rt, f"l{i}@example.com", layer=4) for i in range(2)]
    rt.clock.advance(60)
    await clicks_in(rt, ann, 2)
    await clicks_in(rt, bob, 1)
    bobs_next = await sent_mail(rt, bob)
    shots = SCREENSHOTS / request.node.callspec.id
    shots.mkdir(parents=True, exist_ok=True)
    page, problems = await sign_in(chromium, live)

    # Add a layer, relabel it, move it down one place.
    await page.click("nav >> text=Layers")
    await page.fill("#add-name", "Ambassador")
    await page.fill("#add-label", "Ambassador")
    await page.click("#add-form button")
    await expect(page.locator("#layers-notice")).to_contain_text("Layer added")
    await expect(page.locator("#layer-6 .layer-name")).to_have_text("Ambassador")
    await page.click("#layer-6 summary")
    await page.fill("#label-6", "Champion")
    await page.click("#layer-6 .layer-edit button")
    await expect(page.locator("#layer-6 .layer-label")).to_have_text("Champion")
    await page.click("#layer-6 >> text=↑ Make it layer 5")
    await expect(page.locator("#layer-5 .layer-name")).to_have_text("Ambassador")
    await expect(page.locator("#layer-6 .layer-name")).to_have_text("Strong client/supplier relationship")
    await screenshots(page, shots, "layers")

    # Remove layer 4: the page first says who moves where.
    await page.click("#layer-4 >> text=Remove…")
    await expect(page.locator("#remove-count")).to_contain_text("2 active subscribers")
    await screenshots(page, shots, "layer-remove")
    await page.select_option("#move-to", "3")
    await page.click("#remove-form button")
    await expect(page.locator("#layers-notice")).to_have_text("Layer removed. 2 subscribers moved to layer 3.")
    await expect(page.locator("#layer-4 .layer-name")).to_have_text("Ambassador")
    assert [await layer_of(rt, s) for s in leaving] == [3, 3]

    # Layer 2's rule in words: the sentence follows the form, the what-if counts ann.
    await page.click("#layer-2 >> text=Change the rule")
    await expect(page.locator("#rule-sentence")).to_contain_text("Moves up to layer 3 at once on a purchase.")
    await page.uncheck("input[name=up_on][value=purchase]")
    await page.fill("#f-up_mails", "2")
    await expect(page.locator("#rule-sentence")).to_have_text(
        "Moves up to layer 3 once they have clicked in 2 different mails. Never moves down for being quiet. Keeps"
        " mailing them however long they are quiet. No weekly limit on mails. When a drip step and a newsletter"
        " fall due within a day, the newsletter goes first and the drip step waits."
    )
    assert '"clicked_messages": 2' in await page.locator("#rule-json").input_value()
    await page.click("#rule-form button[value=check]")
    await expect(page.locator("#what-if-up")).to_have_text("1")
    await expect(page.locator("#what-if-stay")).to_have_text("2")
    await expect(page.locator("#f-up_mails")).to_have_value("2")
    await screenshots(page, shots, "layer-rule")
    await page.click("#rule-form button[value=save]")
    await expect(page.locator("#rule-notice")).to_contain_text("Saved.")
    assert [await layer_of(rt, s) for s in (ann, bob, cat)] == [2, 2, 2]  # saving moved nobody

    # Bob's next event, a click in a second mail through the tracker, moves him up by the new rule.
    async with aiohttp.ClientSession() as client:
        target = f"{live.url}/c/{rt.tokens.click(bobs_next, 'https://acme.example.com/guide')}"
        async with client.get(target, headers=BROWSER, allow_redirects=False) as resp:
            assert resp.status == 302
    rt.clock.advance(rt.settings.machine_window_s + 1)  # past the wait for a scanner's other hits
    for _ in range(150):
        if await layer_of(rt, bob) == 3:
            break
        await asyncio.sleep(0.1)
    assert await layer_of(rt, bob) == 3
    assert [await layer_of(rt, s) for s in (ann, cat)] == [2, 2]
    await page.goto(f"{live.url}/admin/subscribers/{bob}")
    await expect(page.locator("#timeline")).to_contain_text("clicked in 2 mails of layer 2")
    assert problems == []
