"""Layers: the funnel's rungs with their promotion rules, and their sequences' steps with the
figures of each step (read-only)."""

from __future__ import annotations

import json

from aiohttp import web
from sqlalchemy import func, select

from ....core.schedule import format_duration
from ....funnel.dashboard import StepFigures, step_figures
from ....models import Layer, Sequence, Step, Subscriber
from ...http import runtime
from ..nav import NavItem
from ..render import render

NAV = NavItem("Layers", "/admin/layers", 30)
routes = web.RouteTableDef()


@routes.get("/layers")
async def layers(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        counts = dict(
            (
                await session.execute(
                    select(Subscriber.layer_id, func.count())
                    .where(Subscriber.status == "active")
                    .group_by(Subscriber.layer_id)
                )
            ).all()
        )
        rows = list((await session.execute(select(Layer).order_by(Layer.position))).scalars())
        sequences = list((await session.execute(select(Sequence).order_by(Sequence.id))).scalars())
        steps = list((await session.execute(select(Step).order_by(Step.sequence_id, Step.position))).scalars())
        figures = await step_figures(session)
    view = []
    for layer in rows:
        own = [s for s in sequences if s.layer_id == layer.id]
        view.append(
            {
                "layer": layer,
                "active": counts.get(layer.id, 0),
                "rule": json.dumps(layer.rule, indent=2, sort_keys=True),
                "sequences": [
                    {
                        "sequence": s,
                        "steps": [
                            {
                                "step": st,
                                "delay": format_duration(st.delay_s),
                                "figures": figures.get(st.id, StepFigures()),
                            }
                            for st in steps
                            if st.sequence_id == s.id
                        ],
                    }
                    for s in own
                ],
            }
        )
    return render(request, "layers.html", layers=view)
