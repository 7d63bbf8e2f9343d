"""Referrals: who brought whom. Each referrer with the people they brought (confirmed, and not
yet confirmed), most first, and the newest referred subscribers with their referrer."""

from __future__ import annotations

from aiohttp import web

from ....funnel.referrals import referral_overview
from ...http import runtime
from ..nav import NavItem
from ..render import render

NAV = NavItem("Referrals", "/admin/referrals", 55)
routes = web.RouteTableDef()


@routes.get("/referrals")
async def index(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        referrers, pairs = await referral_overview(session)
    return render(request, "referrals.html", referrers=referrers, pairs=pairs)
