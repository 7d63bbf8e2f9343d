"""Dashboard: the funnel at a glance."""

from __future__ import annotations

from aiohttp import web

from ....core.governor import PROVIDERS
from ....delivery.worker import paused_domains
from ....errors import NotFound, ValidationError
from ....funnel import governor
from ....funnel.apart import build_apart
from ....funnel.dashboard import dashboard_page_figures
from ...http import runtime
from ..auth import see_other
from ..charts import Bar, funnel, hbars, stacked, up_down_columns
from ..nav import NavItem
from ..render import SIGNED_IN, render

NAV = NavItem("Dashboard", "/admin/", 10)
routes = web.RouteTableDef()


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    rt = runtime(request)
    now = rt.clock.now()

    stats, leaving = await build_apart(rt.db, ("dashboard page",), dashboard_page_figures, now)
    async with rt.db.read() as session:
        paused = sorted((await paused_domains(session, rt.clock.now())).values(), key=lambda p: p.domain)
        governed = await governor.states(session)
    layers = stats.layers
    return render(
        request,
        "dashboard.html",
        stats=stats,
        paused=paused,
        governed=governed,
        governor_settings=rt.settings,
        funnel=funnel(
            [Bar(f"{layer.position} {layer.label}", layer.subscribers, f"{layer.subscribers:,}") for layer in layers]
        ),
        moves=up_down_columns([(m.week_start.strftime("%d %b"), m.up, m.down) for m in stats.moves]),
        conversion=hbars(
            [
                Bar(
                    f"{layer.position} {layer.label}",
                    layer.conversion_to_next or 0.0,
                    "-"
                    if layer.conversion_to_next is None
                    else f"{layer.conversion_to_next * 100:.1f}% of {layer.entered}",
                )
                for layer in layers[:-1]
            ],
            "conversion to the next layer",
            peak=1.0,
        ),
        churn=hbars(
            [
                Bar(
                    f"{layer.position} {layer.label}",
                    layer.churn_rate,
                    f"{layer.churn_rate * 100:.1f}% ({layer.churned})",
                )
                for layer in layers
            ],
            "churn per layer",
            peak=max([0.05, *(layer.churn_rate for layer in layers)]),
        ),
        leaving=leaving,
        leaving_chart=hbars(
            [
                Bar(
                    s.label,
                    s.figures.unsubscribe_rate,
                    f"{s.figures.unsubscribe_rate * 100:.1f}% ({s.figures.unsubscribed} of {s.figures.sent})",
                )
                for s in leaving
            ],
            "unsubscribes per step",
            peak=max([0.02, *(s.figures.unsubscribe_rate for s in leaving)]),
        ),
        engagement=stacked(
            [("opens", stats.opens.human, stats.opens.machine), ("clicks", stats.clicks.human, stats.clicks.machine)]
        ),
    )


@routes.post("/governor/resume")
async def resume_governed(request: web.Request) -> web.Response:
    """Resume what the complaint governor held for one layer at one provider."""
    rt = runtime(request)
    form = await request.post()
    layer_id, provider = str(form.get("layer_id", "")), str(form.get("provider", ""))
    if not layer_id.isdigit() or provider not in PROVIDERS:
        raise ValidationError("choose a held layer and provider to resume")
    signed = request.get(SIGNED_IN)
    by = signed.username if signed is not None else "admin"
    async with rt.db.transaction() as session:
        if not await governor.resume(session, int(layer_id), provider, rt.clock.now(), by):
            raise NotFound(f"mail to {provider} in layer {layer_id} is not held")
    rt.wake_outbox()
    rt.wake_webhooks()
    return see_other("/admin/#governor")
