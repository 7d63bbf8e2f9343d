"""``POST /enquiry``: a question from a landing page or the site, acknowledged by mail at once."""

from __future__ import annotations

from aiohttp import web

from ...audience.enquiries import EnquiryIn, open_enquiry
from ...errors import ValidationError
from ..http import client_ip, runtime, wants_json
from ..pages import render_page
from .common import preflight, public, with_deadline
from .forms import HONEYPOT

routes = web.RouteTableDef()
routes.options("/enquiry")(preflight)


@routes.post("/enquiry")
async def enquiry_post(request: web.Request) -> web.StreamResponse:
    state = public(request)
    data, form, redirect = await state.form_post(request)
    if form.pow_bits:  # the same proof of work as the form's subscribe posts
        state.pow.verify(form.id, form.pow_bits, data.get("pow_challenge"), data.get("pow_nonce"))
    if not data.get(HONEYPOT):
        question = data.get("question", data.get("body"))
        if not isinstance(question, str):
            raise ValidationError("a question is required", field="question")
        for key in ("email", "name", "subject"):
            if data.get(key) is not None and not isinstance(data.get(key), str):
                raise ValidationError(f"{key} must be text", field=key)
        await with_deadline(
            request,
            open_enquiry(
                runtime(request),
                EnquiryIn(
                    email=data.get("email") or "",
                    name=data.get("name") or "",
                    subject=data.get("subject") or "",
                    body=question,
                    source="form",
                    ip=client_ip(request),
                ),
            ),
        )
    if wants_json(request):
        return web.json_response({"status": "received", "message": "Thank you: we have your question."}, status=202)
    raise web.HTTPSeeOther(redirect or "/enquiry/thanks")


@routes.get("/enquiry/thanks")
async def enquiry_thanks(request: web.Request) -> web.Response:
    rt = runtime(request)
    return render_page(
        "message.html",
        title="Thank you",
        message="We have your question and have sent you a note to confirm it. "
        f"You will hear from us within {rt.settings.enquiry_answer_h} hours.",
        sender_name=rt.settings.from_name,
    )
