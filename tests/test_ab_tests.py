"""A/B tests through real parts: an A/B newsletter sent by the running server to the SMTP sink
(the test share split between the variants' subjects as the hash says, human clicks on one
variant through the real click path, the verdict naming it, the winner sent to the rest, one
mail per address); the rest waiting for an admin when the wait ends without a winner, with
pause, resume and cancel; a drip step's variants (one per subscriber) and its winner kept after
N sends; the API refusing what it should."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import insert, select

from responder.core.abtest import in_test_share, pick
from responder.funnel import abtests, newsletters
from responder.funnel.enrollments import enroll
from responder.models import AbTest, AbVariant, Event, Layer, Message, Newsletter, Sequence, Step, Subscriber
from responder.runtime import Runtime

from .admin_fixtures import signed_in
from .conftest import App
from .funnel_fixtures import make_subscriber as enrolled_subscriber
from .funnel_fixtures import mark_sent, rt, settle, tick  # noqa: F401
from .test_tracking import BROWSER, click_path, judged

SUBJECTS = ("Quick wins, plainly", "Three quick wins for you")


async def audience(rt: Runtime, count: int, *, layer: int = 2, enrolled: bool = False) -> dict[int, str]:
    """``count`` active subscribers of a layer in one transaction (id → address); ``enrolled``
    starts its sequence for them (its first step is due now)."""
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        target = (await session.execute(select(Layer).where(Layer.position == layer))).scalar_one()
        start = (await session.execute(select(Subscriber.id).order_by(Subscriber.id.desc()).limit(1))).scalar() or 0
        rows = [
            {
                "email": f"r{start + n}@example.com",
                "name": "",
                "status": "active",
                "layer_id": target.id,
                "layer_entered_at": now,
                "attributes": {},
                "tags": [],
                "created_at": now,
                "confirmed_at": now,
            }
            for n in range(1, count + 1)
        ]
        await session.execute(insert(Subscriber), rows)
        made = (
            (await session.execute(select(Subscriber).where(Subscriber.email.in_([r["email"] for r in rows]))))
            .scalars()
            .all()
        )
        if enrolled:
            for subscriber in made:
                await enroll(session, subscriber, target.id, now)
        return {s.id: s.email for s in made}


async def sent_count(app: App, newsletter_id: int, count: int) -> None:
    """Wait until the server recorded ``count`` of the newsletter's mails as sent."""
    for _ in range(1000):
        resp = await app.client.get(f"/api/v1/newsletters/{newsletter_id}", headers=app.auth)
        if (await resp.json())["sent"] >= count:
            return
        app.rt.wake_outbox()
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} recorded as sent")


async def test_an_ab_newsletter_tests_on_a_share_then_sends_the_winner_to_the_rest(papp: App) -> None:
    people = await audience(papp.rt, 500)
    resp = await papp.client.post(
        "/api/v1/newsletters",
        headers=papp.auth,
        json={
            "name": "Quick wins",
            "template": "layer2-quick-wins",
            "layers": [2],
            "send_now": True,
            "ab": {"variants": [{"subject": s} for s in SUBJECTS], "test_share": 50, "wait": "4h"},
        },
    )
    assert resp.status == 201, await resp.text()
    news_id = (await resp.json())["id"]
    test = await (await papp.client.get(f"/api/v1/newsletters/{news_id}/ab", headers=papp.auth)).json()
    expected = {people[i]: SUBJECTS[pick(test["id"], i, [1, 1])] for i in people if in_test_share(test["id"], i, 50)}
    split = Counter(expected.values())
    assert 200 <= len(expected) <= 300 and min(split.values()) >= 100, split  # what the verdict needs

    received = await papp.smtp.wait_for(len(expected), timeout_s=60)
    await sent_count(papp, news_id, len(expected))
    await asyncio.sleep(0.3)  # the rest wait for the winner
    assert len(papp.smtp.received) == len(expected)
    assert {r.rcpt_tos[0]: r.message["Subject"] for r in received} == expected
    test = await (await papp.client.get(f"/api/v1/newsletters/{news_id}/ab", headers=papp.auth)).json()
    assert test["phase"] == "wait" and test["winner"] is None
    assert [v["figures"]["sent"] for v in test["variants"]] == [split[SUBJECTS[0]], split[SUBJECTS[1]]]
    assert test["verdict"]["sentence"] == "Not enough data yet: 0 of 5 human clicks in all."

    # People click twelve of B's mails; a link scanner clicks one of A's: it does not count.
    async with papp.rt.db.read() as session:
        mails = {
            label: list(
                (
                    await session.execute(
                        select(Message.id)
                        .join(AbVariant, AbVariant.id == Message.variant_id)
                        .where(Message.newsletter_id == news_id, AbVariant.label == label)
                        .order_by(Message.id)
                    )
                ).scalars()
            )
            for label in "AB"
        }
    papp.clock.advance(60)
    for message_id in mails["B"][:12]:
        papp.clock.advance(30)
        click = await papp.client.get(
            click_path(papp, message_id, "https://acme.example.com/wins"), headers=BROWSER, allow_redirects=False
        )
        assert click.status == 302
    papp.clock.advance(30)
    scanner = {"User-Agent": "python-requests/2.32"}
    await papp.client.get(
        click_path(papp, mails["A"][0], "https://acme.example.com/wins"), headers=scanner, allow_redirects=False
    )
    await judged(papp)

    test = await (await papp.client.get(f"/api/v1/newsletters/{news_id}/ab", headers=papp.auth)).json()
    a, b = test["variants"]
    assert (a["figures"]["clicked"], b["figures"]["clicked"]) == (0, 12)
    assert test["verdict"]["status"] == "winner" and test["verdict"]["winner"] == "B"
    assert test["verdict"]["sentence"] == "Variant B is best with over 99 % probability."
    assert test["winner"] is None  # decided when the wait is over
    assert len(papp.smtp.received) == len(expected)

    papp.clock.advance(hours=4)
    papp.rt.wake_scheduler()
    everyone = await papp.smtp.wait_for(len(people), timeout_s=60)
    await settle(papp)
    per_address = Counter(r.rcpt_tos[0] for r in papp.smtp.received)
    assert set(per_address) == set(people.values()) and set(per_address.values()) == {1}
    rest = {r.rcpt_tos[0]: r.message["Subject"] for r in everyone if r.rcpt_tos[0] not in expected}
    assert len(rest) == len(people) - len(expected) and set(rest.values()) == {SUBJECTS[1]}
    test = await (await papp.client.get(f"/api/v1/newsletters/{news_id}/ab", headers=papp.auth)).json()
    assert (test["winner"], test["decided_by"], test["phase"]) == ("B", "verdict", "rest")
    assert test["variants"][1]["figures"]["sent"] == split[SUBJECTS[1]] + len(rest)
    progress = await (await papp.client.get(f"/api/v1/newsletters/{news_id}", headers=papp.auth)).json()
    assert (progress["state"], progress["sent"]) == ("sent", len(people))


async def _walk(rt: Runtime) -> None:
    async with rt.db.transaction() as session:
        while await newsletters.advance(session, rt.clock.now(), domain="acme.example.com", batch=7):
            pass


async def _mails(rt: Runtime, newsletter_id: int) -> dict[int, tuple[str, int | None, str]]:
    async with rt.db.read() as session:
        rows = await session.execute(
            select(Message.subscriber_id, Message.template_name, Message.template_id, AbVariant.label)
            .join(AbVariant, AbVariant.id == Message.variant_id)
            .where(Message.newsletter_id == newsletter_id)
        )
        return {sid: (name, template_id, label) for sid, name, template_id, label in rows}


async def test_without_a_winner_the_rest_waits_for_an_admin_through_pause_and_resume(rt: Runtime) -> None:
    people = await audience(rt, 60)
    async with rt.db.transaction() as session:
        news = await newsletters.create(
            session,
            {
                "name": "Choose",
                "template": "layer2-quick-wins",
                "layers": [2],
                "send_now": True,
                "ab": {
                    "variants": [{"subject": "Wins for {{ subscriber.first_name }}"}, {"template": "layer2-how-to"}],
                    "test_share": 30,
                    "wait": "1h",
                    "on_no_winner": "wait",
                },
            },
            rt.clock.now(),
            rt.settings,
        )
        test = await abtests.test_of(session, newsletter_id=news.id)
    await _walk(rt)
    share = {i for i in people if in_test_share(test.id, i, 30)}
    mails = await _mails(rt, news.id)
    assert set(mails) == share
    for subscriber_id, (name, template_id, label) in mails.items():
        assert label == "AB"[pick(test.id, subscriber_id, [1, 1])]
        # A has its own subject (a template version made for it), B its own template.
        assert (name, template_id is not None) == (
            ("layer2-quick-wins", True) if label == "A" else ("layer2-how-to", False)
        )

    rt.clock.advance(hours=2)  # the wait is over without a winner: the rest wait for an admin
    await _walk(rt)
    assert set(await _mails(rt, news.id)) == share
    async with rt.db.transaction() as session:
        await newsletters.pause(session, news.id)
        test = await abtests.test_of(session, newsletter_id=news.id)
        assert (test.phase, test.winner_id) == ("pick", None)
        await abtests.pick_winner(session, test, "B", rt.clock.now())
    await _walk(rt)  # paused: nothing goes
    assert set(await _mails(rt, news.id)) == share
    async with rt.db.transaction() as session:
        await newsletters.resume(session, news.id)
    await _walk(rt)
    mails = await _mails(rt, news.id)
    assert set(mails) == set(people)
    assert {mails[i][2] for i in set(people) - share} == {"B"}
    async with rt.db.read() as session:
        done = await session.get(Newsletter, news.id)
        test = await abtests.test_of(session, newsletter_id=news.id)
        assert done is not None and done.state == "sent"
        assert (test.decided_by, test.phase) == ("admin", "rest")


async def test_a_cancelled_ab_newsletter_sends_the_rest_nothing(rt: Runtime) -> None:
    people = await audience(rt, 40)
    async with rt.db.transaction() as session:
        news = await newsletters.create(
            session,
            {
                "name": "Stop",
                "template": "layer2-quick-wins",
                "layers": [2],
                "send_now": True,
                "ab": {"variants": [{"subject": "One"}, {"subject": "Two"}], "test_share": 25, "wait": "1h"},
            },
            rt.clock.now(),
            rt.settings,
        )
    await _walk(rt)
    tested = set(await _mails(rt, news.id))
    assert 0 < len(tested) < len(people)
    async with rt.db.transaction() as session:
        await newsletters.cancel(session, news.id, rt.clock.now())
    rt.clock.advance(hours=2)
    await _walk(rt)
    assert set(await _mails(rt, news.id)) == tested


async def _first_step(rt: Runtime, layer: int = 2) -> int:
    async with rt.db.read() as session:
        return int(
            (
                await session.execute(
                    select(Step.id)
                    .join(Sequence, Sequence.id == Step.sequence_id)
                    .join(Layer, Layer.id == Sequence.layer_id)
                    .where(Layer.position == layer, Step.position == 1)
                )
            ).scalar_one()
        )


async def test_a_step_with_two_variants_sends_each_subscriber_one_of_them(app: App) -> None:
    step_id = await _first_step(app.rt)
    resp = await app.client.put(
        f"/api/v1/steps/{step_id}/ab",
        headers=app.auth,
        json={"variants": [{"subject": "Welcome in, {{ subscriber.first_name }}"}, {"subject": "Hello there"}]},
    )
    assert resp.status == 200, await resp.text()
    test_id = (await resp.json())["id"]
    people = {(await enrolled_subscriber(app.rt, f"s{n}@example.com", layer=2, name="Sam")).id: n for n in range(30)}
    received = await app.smtp.wait_for(30)
    await settle(app)
    assert Counter(r.rcpt_tos[0] for r in app.smtp.received) == {f"s{n}@example.com": 1 for n in range(30)}
    subjects = {r.rcpt_tos[0]: r.message["Subject"] for r in received}
    for subscriber_id, n in people.items():
        assert subjects[f"s{n}@example.com"] == ("Welcome in, Sam", "Hello there")[pick(test_id, subscriber_id, [1, 1])]
    test = await (await app.client.get(f"/api/v1/steps/{step_id}/ab", headers=app.auth)).json()
    assert sum(v["figures"]["sent"] for v in test["variants"]) == 30
    assert test["verdict"]["status"] == "too_early"
    replace = await app.client.put(
        f"/api/v1/steps/{step_id}/ab", headers=app.auth, json={"variants": [{"subject": "a"}, {"subject": "b"}]}
    )
    assert replace.status == 409


async def test_a_step_keeps_its_winner_after_n_sends_per_variant(rt: Runtime) -> None:
    step_id = await _first_step(rt)
    async with rt.db.transaction() as session:
        test = await abtests.put_step_test(
            session,
            step_id,
            {"variants": [{"subject": "Plain"}, {"subject": "Bold"}], "keep_winner_after": 100},
            rt.clock.now(),
            rt.settings,
        )
        test_id = test.id
    await audience(rt, 230, enrolled=True)
    await tick(rt)
    await mark_sent(rt)
    async with rt.db.transaction() as session:
        variants = {v.label: v.id for v in await abtests.variants_of(session, test_id)}
        clicked = (
            await session.execute(
                select(Message.id, Message.subscriber_id).where(Message.variant_id == variants["B"]).limit(15)
            )
        ).all()
        for message_id, subscriber_id in clicked:
            session.add(
                Event(
                    subscriber_id=subscriber_id,
                    message_id=message_id,
                    type="click",
                    machine=False,
                    verdict="human",
                    data={},
                    created_at=rt.clock.now(),
                )
            )
        sent = Counter((await session.execute(select(Message.variant_id).where(Message.step_id == step_id))).scalars())
    assert min(sent.values()) >= 100, sent
    # The next subscriber the hash would give A gets B: the step keeps its winner.
    newcomers = await audience(rt, 6, enrolled=True)
    await tick(rt)
    async with rt.db.read() as session:
        test = await session.get(AbTest, test_id)
        assert test is not None and (test.winner_id, test.decided_by) == (variants["B"], "verdict")
        given = dict(
            (
                await session.execute(
                    select(Message.subscriber_id, Message.variant_id).where(Message.subscriber_id.in_(newcomers))
                )
            ).all()
        )
    assert any(pick(test_id, i, [1, 1]) == 0 for i in newcomers)
    assert set(given.values()) == {variants["B"]} and set(given) == set(newcomers)


async def test_the_api_refuses_what_it_should(app: App) -> None:
    resp = await app.client.post(
        "/api/v1/newsletters",
        headers=app.auth,
        json={"name": "Draft", "template": "layer2-quick-wins", "layers": [2]},
    )
    news_id = (await resp.json())["id"]
    url = f"/api/v1/newsletters/{news_id}/ab"
    assert (await app.client.get(url, headers=app.auth)).status == 404
    for bad, status in (
        ({"variants": [{"subject": "only one"}]}, 400),
        ({"variants": [{"subject": str(n)} for n in range(5)]}, 400),
        ({"variants": [{"subject": "a", "weight": 0}, {"subject": "b"}]}, 400),
        ({"variants": [{"subject": "a"}, {"subject": "b"}], "test_share": 0}, 400),
        ({"variants": [{"subject": "a"}, {"subject": "b"}], "wait": "soon"}, 400),
        ({"variants": [{"subject": "a"}, {"subject": "b\nBcc: x@example.com"}]}, 400),
        ({"variants": [{"subject": "a"}, {"template": "nope"}]}, 422),
        ({"variants": [{"subject": "a"}, {"subject": "{{ subscriber.nope.deeper }}"}]}, 422),
        ({"variants": [{"subject": "a"}, {"template": "enquiry-ack"}]}, 422),
    ):
        resp = await app.client.put(url, headers=app.auth, json=bad)
        assert resp.status == status, (bad, await resp.text())
    resp = await app.client.put(
        url, headers=app.auth, json={"variants": [{"subject": "a", "weight": 3}, {"template": "layer2-how-to"}]}
    )
    assert resp.status == 200, await resp.text()
    test = await resp.json()
    assert [v["share"] for v in test["variants"]] == [0.75, 0.25]
    assert (test["test_share"], test["wait"], test["on_no_winner"], test["phase"]) == (20, "4h", "best", "test")
    winner = await app.client.post(url + "/winner", headers=app.auth, json={"variant": "A"})
    assert winner.status == 409  # nothing sent yet to choose from
    templates = await (await app.client.get("/api/v1/templates", headers=app.auth)).json()
    assert not [t for t in templates["templates"] if t["name"].startswith("~")]
    await app.client.post(f"/api/v1/newsletters/{news_id}/schedule", headers=app.auth, json={})
    for _ in range(500):  # the scheduler starts it: nobody in layer 2, so it waits for a winner at once
        if (await (await app.client.get(url, headers=app.auth)).json())["phase"] == "wait":
            break
        await asyncio.sleep(0.02)
    assert (await app.client.put(url, headers=app.auth, json={"variants": [{}, {}]})).status == 409
    assert (await app.client.delete(url, headers=app.auth)).status == 409
    assert (await app.client.post(url + "/winner", headers=app.auth, json={"variant": "E"})).status == 400
    assert (await app.client.post(url + "/winner", headers=app.auth, json={"variant": "B"})).status == 200
    assert (await app.client.post(url + "/winner", headers=app.auth, json={"variant": "A"})).status == 409
    assert (await app.client.get("/api/v1/steps/999999/ab", headers=app.auth)).status == 404
    step_id = await _first_step(app.rt)
    too_soon = {"variants": [{"subject": "a"}, {"subject": "b"}], "keep_winner_after": 5}
    assert (await app.client.put(f"/api/v1/steps/{step_id}/ab", headers=app.auth, json=too_soon)).status == 400


async def test_the_step_variants_page_adds_shows_and_keeps(app: App) -> None:
    step_id = await _first_step(app.rt)
    browser = await signed_in(app.rt, app.client)
    page = f"/admin/steps/{step_id}/variants"
    html = await (await browser.get(page)).text()
    assert 'id="variants-form"' in html and 'id="ab-variants"' not in html
    fields = {"ab_subject_A": "Plain welcome", "ab_subject_B": "A warmer welcome", "ab_weight_B": "3"}
    refused = await browser.post(page + "/save", {**fields, "ab_keep_after": "5"})
    assert refused.status == 400
    refused_html = await refused.text()
    assert "keep_winner_after must be" in refused_html and 'value="A warmer welcome"' in refused_html
    saved = await browser.post(page + "/save", {**fields, "ab_keep_after": "200"})
    assert saved.status == 303 and saved.headers["Location"] == page + "?notice=saved"
    html = await (await browser.get(page + "?notice=saved")).text()
    assert "“A warmer welcome”" in html and "75&nbsp;%" in html and "25&nbsp;%" in html
    assert "Not enough data yet: 0 of 100 sends per variant." in html
    assert "delivered 200 times" in html
    await enrolled_subscriber(app.rt, "first@example.com", layer=2)
    await app.smtp.wait_for(1)
    await settle(app)
    html = await (await browser.get(page)).text()
    assert 'id="variants-form"' not in html  # mail went out: the variants stay
    kept = await browser.post(page + "/winner", {"variant": "A"})
    assert kept.status == 303
    html = await (await browser.get(page + "?notice=winner")).text()
    assert "The step keeps <strong>Variant A</strong>" in html and "an admin chose it" in html
    assert (await browser.get("/admin/steps/999999/variants")).status == 404


async def test_the_compose_form_keeps_the_variants_when_it_refuses_them(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    html = await (await browser.get("/admin/newsletters")).text()
    assert 'id="n-ab"' in html and 'name="ab_subject_D"' in html
    form = {
        "name": "Test",
        "template": "layer2-quick-wins",
        "layers": "2",
        "when": "draft",
        "ab": "on",
        "ab_subject_A": "First try",
        "ab_template_B": "layer2-how-to",
        "ab_share": "0",
        "ab_wait": "4h",
    }
    refused = await browser.post("/admin/newsletters", form)
    assert refused.status == 400
    html = await refused.text()
    assert "test_share must be a whole percentage" in html
    assert 'value="First try"' in html and '<option value="layer2-how-to" selected>' in html
    assert 'id="n-ab" open' in html
    kept = await browser.post("/admin/newsletters", {**form, "ab_share": "30"})
    assert kept.status == 303
    html = await (await browser.get(kept.headers["Location"])).text()
    assert "30 % of the audience will be split between the variants" in html
    assert "“First try”" in html and 'id="ab-winner-form"' not in html
