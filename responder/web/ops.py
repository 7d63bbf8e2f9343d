"""Operations endpoints: health for load balancers, Prometheus metrics for dashboards."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from ..models import Event, Message, Subscriber
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
    events = Gauge("responder_events", "Events recorded by type and origin", ["type", "machine"], registry=registry)
    subscribers = Gauge("responder_subscribers", "Subscribers by status", ["status"], registry=registry)
    async with runtime(request).db.read() as session:
        for state, count in await session.execute(select(Message.state, func.count()).group_by(Message.state)):
            messages.labels(state).set(count)
        for type_, machine, count in await session.execute(
            select(Event.type, Event.machine, func.count()).group_by(Event.type, Event.machine)
        ):
            events.labels(type_, str(bool(machine)).lower()).set(count)
        for status, count in await session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)):
            subscribers.labels(status).set(count)
    add_tracking_metrics(request, registry)
    response = web.Response(body=generate_latest(registry) + runtime(request).delivery_metrics.exposition())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
