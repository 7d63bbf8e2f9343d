"""Admin API for opt-in forms: the configured forms and the snippet to paste into a page."""

from __future__ import annotations

from aiohttp import web

from ...validation import clean_form_id
from ..http import runtime
from ..public.common import PUBLIC
from ..public.forms import Form, snippet
from .handlers import PREFIX
from .openapi import describe, error, json_body

routes = web.RouteTableDef()


def form_json(form: Form) -> dict[str, object]:
    return {
        "id": form.id,
        "title": form.title,
        "consent": form.consent,
        "consent_version": form.consent_version,
        "redirects": list(form.redirects),
        "origins": list(form.origins),
        "attributes": list(form.attributes),
        "pow_bits": form.pow_bits,
    }


@routes.get(PREFIX + "/forms")
async def list_forms(request: web.Request) -> web.Response:
    forms = request.app[PUBLIC].forms.forms
    return web.json_response({"forms": [form_json(f) for _, f in sorted(forms.items())]})


@routes.get(PREFIX + "/forms/{form}/snippet")
async def form_snippet(request: web.Request) -> web.Response:
    form = request.app[PUBLIC].forms.get(clean_form_id(request.match_info["form"]))
    base_url = runtime(request).settings.base_url
    return web.json_response(
        {"form": form.id, "html": snippet(form, base_url), "hosted_url": f"{base_url}/subscribe/{form.id}"}
    )


FORM = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "consent": {"type": "string"},
        "consent_version": {"type": "string"},
        "redirects": {"type": "array"},
        "origins": {"type": "array"},
        "attributes": {"type": "array"},
        "pow_bits": {"type": "integer"},
    },
}
describe(
    PREFIX + "/forms",
    "get",
    {
        "summary": "The opt-in forms configured in RESPONDER_FORMS_FILE (plus 'default')",
        "responses": {
            "200": json_body(
                {"type": "object", "required": ["forms"], "properties": {"forms": {"type": "array", "items": FORM}}}
            )
        },
    },
)
describe(
    PREFIX + "/forms/{form}/snippet",
    "get",
    {
        "summary": "The HTML a landing page pastes to subscribe through this form",
        "parameters": [
            {
                "name": "form",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            }
        ],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["form", "html"],
                    "properties": {
                        "form": {"type": "string"},
                        "html": {"type": "string"},
                        "hosted_url": {"type": "string"},
                    },
                }
            ),
            "404": error("no such form"),
        },
    },
)
