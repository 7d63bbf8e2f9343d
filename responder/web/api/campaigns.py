"""Admin API for newsletters, outgoing webhooks and funnel analytics (thin over
``responder.newsletters``, ``responder.webhooks`` and ``responder.analytics``)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from ...funnel import abtests, newsletters
from ...funnel.analytics import funnel_stats
from ...funnel.apart import build_apart
from ...funnel.reports import report_of
from ...funnel.webhooks import WEBHOOK_EVENTS, create_webhook, delete_webhook, delivery_json
from ...models import Webhook, WebhookDelivery
from ...validation import clean_since
from ..http import read_input, runtime
from .funnel import OBJECT, body, params, path_int
from .handlers import PREFIX
from .openapi import AB_TEST_REF, AB_WINNER_IN, NEWSLETTER_AB_IN, describe, error, json_body

routes = web.RouteTableDef()
PROGRESS = {
    "type": "object",
    "required": ["id", "state", "total", "queued", "sent"],
    "properties": {
        "id": {"type": "integer"},
        "state": {"enum": list(newsletters.STATES)},
        "total": {"type": "integer"},
        "queued": {"type": "integer"},
        "sent": {"type": "integer"},
        "failed": {"type": "integer"},
    },
}


@routes.post(PREFIX + "/newsletters")
async def create_newsletter(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        newsletter = await newsletters.create(session, data, rt.clock.now(), rt.settings, rt.renderer)
        result = await newsletters.progress(session, newsletter)
    rt.wake_scheduler()
    return web.json_response(result, status=201)


describe(
    PREFIX + "/newsletters",
    "post",
    {
        "summary": "Compose a newsletter for one or more layers (required) and optional tags "
        "(e.g. preferred); send_now or send_at schedules it, else it is a draft",
        "requestBody": body(
            {
                "type": "object",
                "required": ["name", "template", "layers"],
                "properties": {
                    "name": {"type": "string"},
                    "template": {"type": "string"},
                    "layers": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "send_now": {"type": "boolean"},
                    "send_at": {"type": "string", "format": "date-time"},
                    "ab": {**NEWSLETTER_AB_IN, "description": "make it an A/B newsletter (see PUT …/ab)"},
                },
            }
        ),
        "responses": {
            "201": json_body(PROGRESS),
            "400": error("invalid input"),
            "422": error(
                "no such template, or it (or an A/B variant) does not render as a newsletter; nothing written"
            ),
        },
    },
)


@routes.get(PREFIX + "/newsletters")
async def list_newsletters(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        return web.json_response({"newsletters": await newsletters.recent(session)})


describe(
    PREFIX + "/newsletters",
    "get",
    {
        "summary": "The newest 200 newsletters with their progress",
        "responses": {
            "200": json_body({"type": "object", "properties": {"newsletters": {"type": "array", "items": PROGRESS}}})
        },
    },
)


@routes.get(PREFIX + "/newsletters/{id}")
async def get_newsletter(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        newsletter = await newsletters.get(session, path_int(request, "id"))
        return web.json_response(await newsletters.progress(session, newsletter))


describe(
    PREFIX + "/newsletters/{id}",
    "get",
    {
        "summary": "One newsletter's progress: total (audience fixed at start), queued, sent",
        "parameters": params("id"),
        "responses": {"200": json_body(PROGRESS), "404": error("no such newsletter")},
    },
)


FIGURES = {
    "type": "object",
    "properties": {
        **{
            name: {"type": "integer"}
            for name in (
                "delivered",
                "bounced",
                "failed",
                "waiting",
                "opened",
                "clicked",
                "unsubscribed",
                "complained",
                "machine_hits",
            )
        },
        **{
            name: {"type": ["number", "null"]}
            for name in ("open_rate", "click_rate", "unsubscribe_rate", "complaint_rate")
        },
    },
}
REPORT = {
    "type": "object",
    "required": ["newsletter_id", "total", "layers", "machine_by_verdict", "hourly"],
    "properties": {
        "newsletter_id": {"type": "integer"},
        "name": {"type": "string"},
        "state": {"enum": list(newsletters.STATES)},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "recipients": {"type": "integer"},
        "total": FIGURES,
        "layers": {"type": "array", "items": FIGURES},
        "machine_by_verdict": {"type": "object", "additionalProperties": {"type": "integer"}},
        "hourly": {"type": "array", "items": {"type": "object"}},
        "later": {"type": "object"},
    },
}


@routes.get(PREFIX + "/newsletters/{id}/report")
async def get_newsletter_report(request: web.Request) -> web.Response:
    newsletter_id = path_int(request, "id")
    db = runtime(request).db
    return web.json_response(await build_apart(db, ("newsletter report", newsletter_id), report_of, newsletter_id))


describe(
    PREFIX + "/newsletters/{id}/report",
    "get",
    {
        "summary": "One newsletter's report: delivered, bounced, human opens and clicks (distinct mails), "
        "unsubscribes, complaints and machine hits, in total and per layer the recipients were in when "
        "sending started, machine hits by verdict, and human opens and clicks hour by hour",
        "parameters": params("id"),
        "responses": {"200": json_body(REPORT), "404": error("no such newsletter")},
    },
)


@routes.get(PREFIX + "/newsletters/{id}/ab")
async def get_newsletter_ab(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        newsletter = await newsletters.get(session, path_int(request, "id"))
        test = await abtests.test_of(session, newsletter_id=newsletter.id)
        return web.json_response(await abtests.test_json(session, test))


describe(
    PREFIX + "/newsletters/{id}/ab",
    "get",
    {
        "summary": "A newsletter's A/B test: per variant sent, human opens and clicks, unsubscribes, complaints "
        "and conversions, the probability each is best on human clicks, the verdict in words, the winner",
        "parameters": params("id"),
        "responses": {"200": json_body(AB_TEST_REF), "404": error("no such newsletter, or it has no A/B test")},
    },
)


@routes.put(PREFIX + "/newsletters/{id}/ab")
async def put_newsletter_ab(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        newsletter = await newsletters.get(session, path_int(request, "id"))
        test = await abtests.put_newsletter_test(session, newsletter, data, rt.clock.now(), rt.settings, rt.renderer)
        result = await abtests.test_json(session, test)
    return web.json_response(result)


describe(
    PREFIX + "/newsletters/{id}/ab",
    "put",
    {
        "summary": "Make a draft or scheduled newsletter an A/B test (or replace its test): 2-4 variants split "
        "test_share % of the audience; wait after their mails were queued, the rest get the winner",
        "parameters": params("id"),
        "requestBody": body(NEWSLETTER_AB_IN),
        "responses": {
            "200": json_body(AB_TEST_REF),
            "404": error("no such newsletter"),
            "409": error("the newsletter has started sending"),
            "422": error("a variant's template or subject does not render as a newsletter; nothing written"),
        },
    },
)


@routes.delete(PREFIX + "/newsletters/{id}/ab")
async def delete_newsletter_ab(request: web.Request) -> web.Response:
    rt = runtime(request)
    async with rt.db.transaction() as session:
        newsletter = await newsletters.get(session, path_int(request, "id"))
        await abtests.remove_test(session, await abtests.test_of(session, newsletter_id=newsletter.id))
    return web.json_response({"deleted": True})


describe(
    PREFIX + "/newsletters/{id}/ab",
    "delete",
    {
        "summary": "Remove the A/B test of a newsletter that has not started sending",
        "parameters": params("id"),
        "responses": {
            "200": json_body(OBJECT),
            "404": error("no such newsletter, or it has no A/B test"),
            "409": error("the newsletter has started sending"),
        },
    },
)


@routes.post(PREFIX + "/newsletters/{id}/ab/winner")
async def pick_newsletter_winner(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        newsletter = await newsletters.get(session, path_int(request, "id"))
        test = await abtests.test_of(session, newsletter_id=newsletter.id)
        await abtests.pick_winner(session, test, data.get("variant"), rt.clock.now())
        result = await abtests.test_json(session, test)
    rt.wake_scheduler()
    return web.json_response(result)


describe(
    PREFIX + "/newsletters/{id}/ab/winner",
    "post",
    {
        "summary": "Send this variant to the rest of the audience now (once the test share has been queued), "
        "without waiting for the verdict",
        "parameters": params("id"),
        "requestBody": body(AB_WINNER_IN),
        "responses": {
            "200": json_body(AB_TEST_REF),
            "404": error("no such newsletter, or it has no A/B test"),
            "409": error("not started, cancelled, all in the test, or a winner was chosen already"),
        },
    },
)


async def newsletter_action(request: web.Request) -> web.Response:
    rt = runtime(request)
    action = request.path.rsplit("/", 1)[1]
    data = await read_input(request) if action == "schedule" else {}
    newsletter_id, now = path_int(request, "id"), rt.clock.now()
    async with rt.db.transaction() as session:
        newsletter = await newsletters.act(session, newsletter_id, action, now, data.get("send_at"))
        result = await newsletters.progress(session, newsletter)
    rt.wake_scheduler()
    return web.json_response(result)


for _action, _summary in (
    ("schedule", "Send now, or at send_at"),
    ("pause", "Stop queueing further batches"),
    ("resume", "Continue where it stopped; nobody gets it twice"),
    ("cancel", "Stop for good; queued mails not yet sent are dropped"),
):
    # One route per action, so the routes and the OpenAPI document list the same paths.
    routes.post(PREFIX + "/newsletters/{id}/" + _action)(newsletter_action)
    describe(
        PREFIX + "/newsletters/{id}/" + _action,
        "post",
        {
            "summary": _summary,
            "parameters": params("id"),
            **(
                {
                    "requestBody": body(
                        {"type": "object", "properties": {"send_at": {"type": "string", "format": "date-time"}}}
                    )
                }
                if _action == "schedule"
                else {}
            ),
            "responses": {
                "200": json_body(PROGRESS),
                "404": error("no such newsletter"),
                "409": error("not allowed in the newsletter's state"),
            },
        },
    )


def webhook_json(hook: Webhook, *, secret: bool = False) -> dict[str, object]:
    out: dict[str, object] = {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "active": hook.active,
        "created_at": hook.created_at.isoformat(),
    }
    if secret:
        out["secret"] = hook.secret
    return out


@routes.post(PREFIX + "/webhooks")
async def add_webhook(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        hook = await create_webhook(session, data, rt.clock.now())
        return web.json_response(webhook_json(hook, secret=True), status=201)


describe(
    PREFIX + "/webhooks",
    "post",
    {
        "summary": "Register a URL for funnel events; bodies are signed with HMAC-SHA256 "
        "(X-Responder-Signature over '<X-Responder-Timestamp>.<body>')",
        "requestBody": body(
            {
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string"},
                    "secret": {"type": "string"},
                    "events": {"type": "array", "items": {"enum": list(WEBHOOK_EVENTS)}},
                },
            }
        ),
        "responses": {"201": json_body(OBJECT, "registered; the secret is shown once"), "400": error("invalid input")},
    },
)


@routes.get(PREFIX + "/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        hooks = (await session.execute(select(Webhook).where(Webhook.active.is_(True)).order_by(Webhook.id))).scalars()
        return web.json_response({"webhooks": [webhook_json(h) for h in hooks]})


describe(
    PREFIX + "/webhooks",
    "get",
    {"summary": "Active webhooks (secrets not shown)", "responses": {"200": json_body(OBJECT)}},
)


@routes.delete(PREFIX + "/webhooks/{id}")
async def remove_webhook(request: web.Request) -> web.Response:
    rt = runtime(request)
    async with rt.db.transaction() as session:
        await delete_webhook(session, path_int(request, "id"))
    return web.json_response({"deleted": True})


describe(
    PREFIX + "/webhooks/{id}",
    "delete",
    {
        "summary": "Stop sending to a webhook (its delivery log stays)",
        "parameters": params("id"),
        "responses": {"200": json_body(OBJECT), "404": error("no such webhook")},
    },
)


@routes.get(PREFIX + "/webhooks/{id}/deliveries")
async def webhook_deliveries(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        rows = (
            await session.execute(
                select(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == path_int(request, "id"))
                .order_by(WebhookDelivery.id.desc())
                .limit(200)
            )
        ).scalars()
        return web.json_response({"deliveries": [delivery_json(d) for d in rows]})


describe(
    PREFIX + "/webhooks/{id}/deliveries",
    "get",
    {
        "summary": "The delivery log: the newest 200 attempts' outcomes",
        "parameters": params("id"),
        "responses": {"200": json_body(OBJECT)},
    },
)


@routes.get(PREFIX + "/stats")
async def stats(request: web.Request) -> web.Response:
    rt = runtime(request)
    now = rt.clock.now()
    since = clean_since(request.query.get("since"), now)
    figures = await build_apart(rt.db, ("stats", since), funnel_stats, now, since)
    return web.json_response(figures)


describe(
    PREFIX + "/stats",
    "get",
    {
        "summary": "Funnel analytics: subscribers per layer; of those who entered each layer in the "
        "period (confirmed, imported, moved, revived), how many moved up since (conversion to the next "
        "layer); median time in layer; moves per week; churn (unsubscribed, bounced, complained, "
        "sunset) per layer of those in it, in all and per month; human open and click rates per step "
        "and per newsletter",
        "parameters": [
            {
                "name": "since",
                "in": "query",
                "description": "start of the period (a date, or a time with a zone); default: all time",
                "schema": {"type": "string"},
            }
        ],
        "responses": {"200": json_body(OBJECT), "400": error("since is not a date or is in the future")},
    },
)
