"""Settings: the sender, where mail goes, the DNS records to publish, the warm-up schedule, API
tokens."""

from __future__ import annotations

from aiohttp import web

from ....delivery import warmup
from ....delivery.dkim import configured_keys, dns_record, load_key
from ....errors import ConfigError
from ....settings import Settings, mask_url_password
from ...api.tokens import create_token, list_tokens, revoke_token
from ...http import runtime
from ..auth import see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Settings", "/admin/settings", 90)
routes = web.RouteTableDef()


def dkim_records(settings: Settings) -> list[tuple[str, str | None, str | None]]:
    """The DKIM records to publish as configured, one per key: (name, value, problem). The name
    is the key's selector under the signing domain; the value comes from its key file (None,
    with the reason, when there is no key, the configuration is wrong or the file cannot be
    read)."""
    unnamed = f"SELECTOR._domainkey.{settings.dkim_domain or settings.sender_domain}"
    try:
        keys = configured_keys(settings)
    except ConfigError as exc:
        return [(unnamed, None, exc.message)]
    if not keys:
        return [(unnamed, None, "no signing key is configured (RESPONDER_DKIM_KEY_FILE): mail goes out unsigned")]
    records: list[tuple[str, str | None, str | None]] = []
    for key in keys:
        try:
            records.append((key.record_name, dns_record(load_key(key.path)), None))
        except ConfigError as exc:
            records.append((key.record_name, None, exc.message))
    return records


async def _page(request: web.Request, new_token: str | None = None, new_token_name: str | None = None) -> web.Response:
    rt = runtime(request)
    s = rt.settings
    warming = None
    if s.warmup is not None:
        async with rt.db.read() as session:
            warming = await warmup.status(session, s.warmup, rt.clock.now())
    return render(
        request,
        "settings.html",
        sender=s.sender,
        base_url=s.base_url,
        mail=mask_url_password(s.smtp_url),
        domain=s.sender_domain,
        dkim=dkim_records(s),
        warnings=s.identity_warnings(),
        warmup=warming,
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
