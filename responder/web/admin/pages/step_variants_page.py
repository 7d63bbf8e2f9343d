"""A drip step's A/B variants (``/admin/steps/{id}/variants``, linked from the Sequences page;
not in the menu): the variants with their figures and the verdict, a form to give the step
variants (or replace a test that has sent nothing), a button keeping a winner, and one removing
a test that has sent nothing. Calls ``funnel.abtests`` as the API does."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ....core.abtest import MIN_SENT_PER_VARIANT
from ....errors import Conflict, NotFound, TemplateError, ValidationError
from ....funnel import abtests
from ....models import Layer, Sequence, Step
from ....templating import service
from ....templating.context import pickable
from ...http import runtime
from .. import abform
from ..auth import see_other
from ..render import render

routes = web.RouteTableDef()
PAGE = "/steps/{id:\\d{1,9}}/variants"
DONE = {"save": "saved", "winner": "winner", "remove": "removed"}
NOTICES = {"saved": "Variants saved.", "winner": "The step keeps the winner from now on.", "removed": "Test removed."}


def _id(request: web.Request) -> int:
    return int(request.match_info["id"])


async def _page(
    request: web.Request, *, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> web.Response:
    rt = runtime(request)
    async with rt.db.read() as session:
        step = await session.get(Step, _id(request))
        if step is None:
            raise NotFound("no such step")
        sequence = await session.get(Sequence, step.sequence_id)
        assert sequence is not None
        layer = await session.get(Layer, sequence.layer_id) if sequence.layer_id else None
        try:
            ab: dict[str, Any] | None = await abtests.test_json(
                session, await abtests.test_of(session, step_id=step.id)
            )
        except NotFound:
            ab = None
        step_info = {
            "id": step.id,
            "position": step.position,
            "template": step.template_name,
            "purpose": step.purpose,
            "sequence": sequence.name,
            "layer": f"{layer.position} · {layer.name}" if layer and layer.removed_at is None else None,
        }
    templates = [t for t in await service.list_templates(rt) if pickable(t["name"], t["purpose"], "step")]
    queued = sum(v["figures"]["queued"] for v in ab["variants"]) if ab else 0
    return render(
        request,
        "step_variants.html",
        status=status,
        step=step_info,
        ab=ab,
        queued=queued,
        templates=templates,
        form=form or {},
        error=error,
        notice=NOTICES.get(request.query.get("notice", "")),
        decided_by=abform.DECIDED_BY,
        min_keep=MIN_SENT_PER_VARIANT,
    )


@routes.get(PAGE)
async def show(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post(PAGE + "/{action:save|winner|remove}")
async def act(request: web.Request) -> web.Response:
    rt = runtime(request)
    form = await request.post()
    action = request.match_info["action"]
    try:
        async with rt.db.transaction() as session:
            if action == "save":
                await abtests.put_step_test(
                    session, _id(request), abform.step_input(form), rt.clock.now(), rt.settings, rt.renderer
                )
            else:
                test = await abtests.test_of(session, step_id=_id(request))
                if action == "winner":
                    await abtests.pick_winner(session, test, form.get("variant"), rt.clock.now())
                else:
                    await abtests.remove_test(session, test)
    except (ValidationError, TemplateError, Conflict) as exc:
        # Shown above the form, which keeps what was typed.
        return await _page(request, status=exc.status, error=exc.message, form=abform.kept(form, abform.STEP_FIELDS))
    return see_other(f"/admin/steps/{_id(request)}/variants?notice={DONE[action]}")
