"""Operations endpoints: health for load balancers, Prometheus metrics for dashboards."""

from __future__ import annotations

from collections import Counter

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from ..funnel import rollup
from ..models import Message, SubscriberCount
from .http import runtime
from .public.common import add_tracking_metrics

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    try:
        await runtime(request).db.ping()
    except Exception as exc:  # any database failure means "not healthy"
        return web.json_response({"status": "error", "database": str(exc)[:200]}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    registry = CollectorRegistry()
    messages = Gauge("responder_messages", "Messages in the outbox by state", ["state"], registry=registry)
    events = Gauge(
        "responder_events", "Events recorded by type and origin, all time", ["type", "machine"], registry=registry
    )
    subscribers = Gauge("responder_subscribers", "Subscribers by status", ["status"], registry=registry)
    async with runtime(request).db.read() as session:
        for state, count in await session.execute(select(Message.state, func.count()).group_by(Message.state)):
            messages.labels(state).set(count)
        # From the roll-up and the minutes since (``funnel.rollup``), not a count of the table.
        by_type: Counter[tuple[str, bool]] = Counter()
        for (_, _, _, metric), count in (await rollup.figures(session, "all")).items():
            kind, _, rest = metric.partition(":")
            if kind == "bounce":
                by_type["bounce", False] += count
            else:
                type_, flag, _ = rest.split(":", 2)
                by_type[type_, flag == "1"] += count
        for (type_, machine), count in sorted(by_type.items()):
            events.labels(type_, str(machine).lower()).set(count)
        by_status = select(SubscriberCount.status, func.sum(SubscriberCount.n)).group_by(SubscriberCount.status)
        for status, count in await session.execute(by_status):
            subscribers.labels(status).set(count)
    add_tracking_metrics(request, registry)
    response = web.Response(body=generate_latest(registry) + runtime(request).delivery_metrics.exposition())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
