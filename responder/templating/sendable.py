"""Whether a template can be sent as a kind of mail: it exists, and its newest version renders
against that kind's sample context (``context.sample_context``) through the same sandboxed
``render_parts`` the delivery worker uses, in a render process (``pool``).

Newsletters and sequence steps check the template they name before they are written; an upload
checks the new version against every kind of mail that sends its name now (``kinds_in_use``),
so a new version cannot break a step or a newsletter on its way.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..delivery.build import newest_template
from ..errors import TemplateError
from ..models import AbTest, AbVariant, Newsletter, Step, Template
from ..settings import Settings
from .context import KIND_NAMES, sample_contexts
from .pool import Renderer

# Without a server's pool (the command line): the same jobs, in a thread of this process.
IN_PROCESS = Renderer(0, 0.0, 0)

# A newsletter in these states will still render its template (the newest version at send time).
UNFINISHED = ("draft", "scheduled", "sending", "paused")


async def check_renders(renderer: Renderer | None, settings: Settings, template: Template, kind: str) -> None:
    """Raise ``TemplateError`` (422) naming the template, the part and the problem if
    ``template`` does not render as a ``kind`` mail: in a render process (``pool``), or in this
    process without a ``renderer`` (the command line)."""
    args = (template.subject, template.source, template.text, template.html, sample_contexts(settings, kind))
    try:
        await (renderer or IN_PROCESS).check(*args)
    except TemplateError as exc:
        raise TemplateError(
            f"template {template.name!r} cannot be sent as {KIND_NAMES[kind]}: {exc.message}", field="template"
        ) from exc


async def sendable_template(
    session: AsyncSession, settings: Settings, name: str, kind: str, renderer: Renderer | None = None
) -> Template:
    """The newest version of ``name`` if it renders as a ``kind`` mail, else ``TemplateError``."""
    template = await newest_template(session, name)
    if template is None:
        raise TemplateError(f"no template named {name!r}: upload it first", field="template")
    await check_renders(renderer, settings, template, kind)
    return template


async def kinds_in_use(session: AsyncSession, name: str) -> list[str]:
    """The kinds of list mail that send template ``name``: a step names it, or a newsletter not
    yet finished, or an A/B variant of either."""
    kinds = []
    variant_steps = (
        select(AbTest.step_id).join(AbVariant, AbVariant.test_id == AbTest.id).where(AbVariant.template_name == name)
    )
    steps = select(Step.id).where((Step.template_name == name) | Step.id.in_(variant_steps))
    if (await session.execute(steps.limit(1))).first():
        kinds.append("step")
    variant_newsletters = (
        select(AbTest.newsletter_id)
        .join(AbVariant, AbVariant.test_id == AbTest.id)
        .where(AbVariant.template_name == name)
    )
    unfinished = select(Newsletter.id).where(
        (Newsletter.template_name == name) | Newsletter.id.in_(variant_newsletters), Newsletter.state.in_(UNFINISHED)
    )
    if (await session.execute(unfinished.limit(1))).first():
        kinds.append("newsletter")
    return kinds
