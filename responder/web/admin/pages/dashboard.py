"""Dashboard: the funnel at a glance."""

from __future__ import annotations

from aiohttp import web

from ....delivery.worker import paused_domains
from ....funnel.dashboard import dashboard_stats, unsubscribes_per_step
from ...http import runtime
from ..charts import Bar, funnel, hbars, stacked, up_down_columns
from ..nav import NavItem
from ..render import render

NAV = NavItem("Dashboard", "/admin/", 10)
routes = web.RouteTableDef()


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    rt = runtime(request)
    async with rt.db.read() as session:
        stats = await dashboard_stats(session, rt.clock.now())
        leaving = await unsubscribes_per_step(session)
        paused = sorted((await paused_domains(session, rt.clock.now())).values(), key=lambda p: p.domain)
    layers = stats.layers
    return render(
        request,
        "dashboard.html",
        stats=stats,
        paused=paused,
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
