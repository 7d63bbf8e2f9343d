"""Templates: the list, upload (MJML or HTML with Jinja), a preview at desktop and phone widths
in sandboxed frames, and a test send. Calls the same service functions as the API."""

from __future__ import annotations

from aiohttp import web

from ....errors import DeliveryError, TemplateError, ValidationError
from ....templating import service
from ...api.templates import read_multipart_fields
from ...http import runtime
from ..auth import form_parts, see_other
from ..nav import NavItem
from ..render import render

NAV = NavItem("Templates", "/admin/templates", 40)
routes = web.RouteTableDef()
# The rendered mail is shown in a frame with no scripts and an opaque origin; its own policy
# allows the inline styles mail needs and remote images, nothing else.
PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "font-src https:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; "
    "sandbox"
)


async def _list(
    request: web.Request, *, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> web.Response:
    return render(
        request,
        "templates.html",
        status=status,
        error=error,
        form=form or {},
        templates=await service.list_templates(runtime(request)),
    )


@routes.get("/templates")
async def templates(request: web.Request) -> web.Response:
    return await _list(request)


@routes.post("/templates")
async def upload(request: web.Request) -> web.Response:
    fields = await read_multipart_fields(await form_parts(request))
    name = fields.get("name") or fields.get("_filename", "").rsplit(".", 1)[0].lower()
    try:
        if not fields.get("subject"):
            raise ValidationError("a subject is required", field="subject")
        stored = await service.upload_template(
            runtime(request),
            service.Upload(
                name=name, subject=fields["subject"], source=fields.get("body", ""), purpose=fields.get("purpose", "")
            ),
        )
    except (ValidationError, TemplateError) as exc:
        # Shown beside the form, which keeps what was typed, so the admin can fix and resend.
        return await _list(request, status=exc.status, error=exc.message, form=fields)
    return see_other(f"/admin/templates/{stored['name']}?notice=v{stored['version']}")


@routes.get("/templates/{name}")
async def detail(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    template = await service.template_versions(runtime(request), name)
    preview = await service.preview(runtime(request), name)
    return render(
        request,
        "template.html",
        template=template,
        subject=preview["subject"],
        text=preview["text"],
        notice=request.query.get("notice"),
        error=None,
    )


@routes.get("/templates/{name}/preview.html")
async def preview_html(request: web.Request) -> web.Response:
    preview = await service.preview(runtime(request), request.match_info["name"])
    return web.Response(
        text=preview["html"],
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": PREVIEW_CSP, "X-Frame-Options": "SAMEORIGIN", "Cache-Control": "no-store"},
    )


@routes.post("/templates/{name}/test")
async def test_send(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    form = await request.post()
    try:
        sent = await service.test_send(runtime(request), name, form.get("email"))
    except (ValidationError, DeliveryError) as exc:
        template = await service.template_versions(runtime(request), name)
        preview = await service.preview(runtime(request), name)
        return render(
            request,
            "template.html",
            status=400,
            template=template,
            subject=preview["subject"],
            text=preview["text"],
            notice=None,
            error=f"The test mail was not sent: {exc.message}",
        )
    return see_other(f"/admin/templates/{name}?notice=sent-{sent['to']}")
