"""Nothing unsendable is accepted: a newsletter or a step naming a template that does not exist,
or that does not render for the kind of mail it would be sent as, is refused with 422 and not
written (API, admin form, CLI in test_newsletters); an upload renders against the same sample
context, which has exactly the variables a real recipient's context has."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select

from responder.audience import preferences
from responder.audience.enquiries import EnquiryIn, ack_context, open_enquiry
from responder.audience.subscribers import SubscribeRequest, subscribe
from responder.delivery.build import load_sources, message_context
from responder.funnel import newsletters
from responder.funnel.sweep import sweep
from responder.models import Enquiry, Layer, Message, Newsletter, Sequence, Step, Subscriber, Template
from responder.runtime import Runtime
from responder.templating.context import KINDS, sample_context

from .admin_fixtures import make_subscriber as make_listed
from .admin_fixtures import signed_in
from .conftest import App
from .funnel_fixtures import add_template, make_subscriber, rt, tick  # noqa: F401

REFERRAL = '<p>Hi {{ subscriber.first_name }}, pass <a href="{{ links.referral }}">this link</a> on.</p>'


def shape(value: Any, path: str = "") -> Any:
    """The keys of a context all the way down, with the type of each leaf; a subscriber's
    attributes are free-form (their keys are the subscriber's own)."""
    if isinstance(value, dict) and path != ".subscriber.attributes":
        return {key: shape(item, f"{path}.{key}") for key, item in value.items()}
    return type(value).__name__


async def real_contexts(rt: Runtime) -> dict[str, dict[str, Any]]:
    """The context each kind of mail is rendered with when sent, from rows made the real way."""
    await subscribe(rt, SubscribeRequest(email="pat@example.com", name="Pat Pending"))
    await make_subscriber(rt, "ann@example.com", layer=2, name="Ann Active")
    await tick(rt)  # ann's first layer-2 step
    async with rt.db.transaction() as session:
        news = await newsletters.create(
            session,
            {"name": "News", "template": "newsletter", "layers": [2], "send_now": True},
            rt.clock.now(),
            rt.settings,
        )
        await newsletters.advance(session, rt.clock.now(), domain="acme.example.com")
    enquiry_id = await open_enquiry(rt, EnquiryIn(email="q@example.com", body="When?", name="Quinn Asker"))
    async with rt.db.read() as session:  # ann asks for the link to download or erase her data
        ann_id = (
            await session.execute(select(Subscriber.id).where(Subscriber.email == "ann@example.com"))
        ).scalar_one()
    await preferences.request_privacy_link(rt, rt.tokens.unsubscribe(ann_id))
    async with rt.db.transaction() as session:  # ann, silent for 24 days, is asked before her sunset
        layer = (await session.execute(select(Layer).where(Layer.position == 2))).scalar_one()
        layer.rule = {"sunset": {"inactive_for": "30d", "ask_before": "7d"}}
        ann = (await session.execute(select(Subscriber).where(Subscriber.email == "ann@example.com"))).scalar_one()
        ann.confirmed_at = ann.created_at = rt.clock.now() - dt.timedelta(days=24)
        await sweep(session, rt.clock.now(), domain="acme.example.com")
    contexts = {}
    async with rt.db.read() as session:
        for message in (await session.execute(select(Message).order_by(Message.id))).scalars():
            contexts[message.kind] = message_context(rt, message, await load_sources(session, message))
        enquiry = await session.get(Enquiry, enquiry_id)
        assert enquiry is not None
        contexts["enquiry-ack"] = ack_context(rt.settings, enquiry)
    assert news.id and set(contexts) == set(KINDS)
    return contexts


async def test_the_sample_has_exactly_the_variables_of_a_real_mail(rt: Runtime) -> None:  # noqa: F811
    real = await real_contexts(rt)
    for kind in KINDS:
        assert shape(sample_context(rt.settings, kind)) == shape(real[kind]), kind
    assert "referral" in real["newsletter"]["links"] and "confirm" in real["confirm"]["links"]
    assert "confirm" not in real["step"]["links"] and "subscriber" not in real["enquiry-ack"]


async def count(app: App, model: type) -> int:
    async with app.rt.db.read() as session:
        return (await session.execute(select(func.count()).select_from(model))).scalar_one()


async def upload(app: App, name: str, body: str, subject: str = "Hello", purpose: str = "") -> Any:
    return await app.client.post(
        "/api/v1/templates",
        headers=app.auth,
        json={"name": name, "subject": subject, "body": body, "purpose": purpose},
    )


async def error_of(resp: Any, status: int = 422) -> str:
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    return f"{error['field']}: {error['message']}"


async def test_upload_checks_against_the_sample_of_its_kind(app: App) -> None:
    assert (await upload(app, "pass-it-on", REFERRAL)).status == 201
    resp = await upload(app, "misspelt", "<p>Hi {{ subscriber.nickname }}</p>")
    assert await error_of(resp) == "body: body, line 1: 'dict object' has no attribute 'nickname'"
    # A list mail cannot count on the enquiry, nor the acknowledgement on a subscriber.
    resp = await upload(app, "asks", "<p>{{ enquiry.subject }}</p>")
    assert "'enquiry' is undefined" in await error_of(resp)
    resp = await upload(app, "enquiry-ack", "<p>{{ subscriber.first_name }}</p>", purpose="enquiry")
    assert "'subscriber' is undefined" in await error_of(resp)
    resp = await upload(app, "confirm-2", '<a href="{{ links.confirm }}">Yes</a>', purpose="confirm")
    assert resp.status == 201
    assert await count(app, Template) == 22 + 2  # the starter's, plus the two that render


async def test_a_newsletter_with_an_unsendable_template_is_refused(app: App) -> None:
    await upload(
        app, "ack-subject", "<p>From {{ sender.name }}</p>", subject="Re: {{ enquiry.subject }}", purpose="enquiry"
    )

    async def create(template: str) -> Any:
        return await app.client.post(
            "/api/v1/newsletters",
            headers=app.auth,
            json={"name": "Spring", "template": template, "layers": [2], "send_now": True},
        )

    assert await error_of(await create("nope")) == "template: no template named 'nope': upload it first"
    message = await error_of(await create("confirm"))
    assert message == (  # the line in the MJML the author wrote
        "template: template 'confirm' cannot be sent as a newsletter: "
        "body, line 26: 'dict object' has no attribute 'confirm'"
    )
    assert "'enquiry' is undefined" in await error_of(await create("enquiry-ack"))
    message = await error_of(await create("ack-subject"))
    assert "cannot be sent as a newsletter: subject, line 1: 'enquiry' is undefined" in message
    assert await count(app, Newsletter) == 0 and await count(app, Message) == 0

    # links.referral, documented, is there when the newsletter is sent.
    await make_listed(app.rt, "ref@example.com", layer=2)
    assert (await upload(app, "pass-it-on", REFERRAL, subject="Pass it on")).status == 201
    assert (await create("pass-it-on")).status == 201
    app.rt.wake_scheduler()
    (mail,) = await app.smtp.wait_for(1, "ref@example.com")
    assert mail.message["Subject"] == "Pass it on"
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "(https://news.example.com/r/" in text


async def test_a_step_with_an_unsendable_template_is_refused(app: App) -> None:
    def step(template: str) -> dict[str, str]:
        return {"delay": "1d", "template": template, "purpose": "offer"}

    resp = await app.client.post(
        "/api/v1/sequences",
        headers=app.auth,
        json={"name": "After a purchase", "trigger": "purchase", "steps": [step("layer3-sample"), step("nope")]},
    )
    assert await error_of(resp) == "template: no template named 'nope': upload it first"
    assert await count(app, Sequence) == 5 and await count(app, Step) == 15  # the starter's only

    resp = await app.client.post(
        "/api/v1/sequences",
        headers=app.auth,
        json={"name": "Thanks", "trigger": "referral", "steps": [step("layer3-sample")]},
    )
    sequence = await resp.json()
    (first,) = sequence["steps"]
    base = f"/api/v1/sequences/{sequence['id']}/steps"
    message = await error_of(await app.client.post(base, headers=app.auth, json=step("confirm")))
    assert "'confirm' cannot be sent as a sequence step" in message and "'confirm'" in message
    resp = await app.client.patch(f"{base}/{first['id']}", headers=app.auth, json={"template": "enquiry-ack"})
    assert "'enquiry-ack' cannot be sent as a sequence step" in await error_of(resp)
    resp = await app.client.patch(f"{base}/{first['id']}", headers=app.auth, json={"template": "layer5-referral"})
    assert resp.status == 200 and (await resp.json())["template"] == "layer5-referral"
    listed = await (await app.client.get("/api/v1/sequences", headers=app.auth)).json()
    (mine,) = [s for s in listed["sequences"] if s["id"] == sequence["id"]]
    assert [s["template"] for s in mine["steps"]] == ["layer5-referral"]

    # A new version of a template a step sends must still render as a step, whatever its purpose.
    resp = await upload(app, "layer5-referral", '<a href="{{ links.confirm }}">Confirm</a>', purpose="confirm")
    message = await error_of(resp)
    assert "'layer5-referral' cannot be sent as a sequence step" in message and "'confirm'" in message
    async with app.rt.db.read() as session:
        versions = (await session.execute(select(func.count()).where(Template.name == "layer5-referral"))).scalar_one()
    assert versions == 1


async def test_a_new_version_must_still_render_for_an_unfinished_newsletter(app: App) -> None:
    assert (await upload(app, "spring", "<p>Spring</p>")).status == 201
    resp = await app.client.post(
        "/api/v1/newsletters", headers=app.auth, json={"name": "Spring", "template": "spring", "layers": [2]}
    )
    assert resp.status == 201  # a draft
    news_id = (await resp.json())["id"]
    resp = await upload(app, "spring", "<p>{{ enquiry.body }}</p>", purpose="enquiry")
    assert "'spring' cannot be sent as a newsletter" in await error_of(resp)
    # Once the newsletter is cancelled, nothing sends the name as list mail any more.
    assert (await app.client.post(f"/api/v1/newsletters/{news_id}/cancel", headers=app.auth)).status == 200
    assert (await upload(app, "spring", "<p>{{ enquiry.body }}</p>", purpose="enquiry")).status == 201


async def test_the_compose_form_shows_why_a_template_is_refused(app: App) -> None:
    browser = await signed_in(app.rt, app.client)
    text = await (await browser.get("/admin/newsletters")).text()
    assert ">newsletter — " in text and ">confirm — " not in text  # only list mail is offered
    for template, why in (
        ("confirm", "template &#39;confirm&#39; cannot be sent as a newsletter"),
        ("gone", "no template named &#39;gone&#39;"),
    ):
        resp = await browser.post(
            "/admin/newsletters", {"name": "Spring", "template": template, "layers": "2", "when": "now"}
        )
        page = await resp.text()
        assert resp.status == 422 and 'id="compose-error"' in page and why in page
        assert 'value="Spring"' in page  # what was typed is kept
    assert await count(app, Newsletter) == 0


async def test_previews_use_the_context_of_their_kind(app: App) -> None:
    for name, expected in (("enquiry-ack", "Ada"), ("confirm", "/confirm/sample"), ("layer5-referral", "Sam")):
        resp = await app.client.get(f"/api/v1/templates/{name}/preview", headers=app.auth)
        assert resp.status == 200 and expected in (await resp.json())["text"], name


async def test_an_upload_must_render_for_recipients_unlike_the_sample(app: App) -> None:
    """Real lists hold people with no name, long names in other scripts, plus addresses."""
    resp = await upload(app, "initial", "<p>Dear {{ subscriber.name[0] }}.</p>")
    assert "body, line 1" in await error_of(resp)
    only_sam = '{% if subscriber.email == "sam.sample@example.com" %}Hi{% else %}{{ subscriber.nickname }}{% endif %}'
    assert "'dict object' has no attribute 'nickname'" in await error_of(await upload(app, "only-sam", only_sam))
    ack = "<p>{{ enquiry.subject[0] }}</p>"
    assert "body, line 1" in await error_of(await upload(app, "enquiry-ack", ack, purpose="enquiry"))
    assert (await upload(app, "fine", "<p>Dear {{ subscriber.first_name or 'reader' }}</p>")).status == 201
