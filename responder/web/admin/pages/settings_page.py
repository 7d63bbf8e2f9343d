"""Settings: the sender, where mail goes, the DNS records to publish, API tokens."""

from __future__ import annotations

from aiohttp import web

from ....settings import mask_url_password
from ...api.tokens import create_token, list_tokens, revoke_token
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Settings", "/admin/settings", 90)
routes = web.RouteTableDef()
DKIM_SELECTOR = "responder"


async def _page(request: web.Request, new_token: str | None = None, new_token_name: str | None = None) -> web.Response:
    rt = runtime(request)
    s = rt.settings
    return render(
        request,
        "settings.html",
        sender=s.sender,
        base_url=s.base_url,
        mail=mask_url_password(s.smtp_url),
        domain=s.sender_domain,
        dkim_name=f"{DKIM_SELECTOR}._domainkey.{s.sender_domain}",
        tokens=await list_tokens(rt),
        new_token=new_token,
        new_token_name=new_token_name,
    )


@routes.get("/settings")
async def settings_page(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/settings/tokens")
async def create(request: web.Request) -> web.Response:
    form = await request.post()
    info, secret = await create_token(runtime(request), form.get("name"), form.get("scope"))
    return await _page(request, secret, info.name)


@routes.post("/settings/tokens/{name}/revoke")
async def revoke(request: web.Request) -> web.Response:
    await revoke_token(runtime(request), request.match_info["name"])
    return see_other("/admin/settings")
