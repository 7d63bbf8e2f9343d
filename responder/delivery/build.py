"""From an outbox row to a ready ``Mail``: pick the template version, render, add list headers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import TemplateError
from ..models import Layer, Message, Subscriber, Template
from ..runtime import Runtime
from ..templating.context import recipient_context
from ..templating.render import Footer, Rendered, render_mail
from .mime import Mail


@dataclass(frozen=True)
class Built:
    mail: Mail
    template_id: int


async def newest_template(session: AsyncSession, name: str) -> Template | None:
    return (
        await session.execute(
            select(Template).where(Template.name == name).order_by(Template.version.desc()).limit(1)
        )
    ).scalar_one_or_none()


async def template_for(session: AsyncSession, message: Message) -> Template:
    """The version recorded on the message (a retry), else the newest version of its name."""
    template = (
        await session.get(Template, message.template_id)
        if message.template_id is not None
        else await newest_template(session, message.template_name)
    )
    if template is None:
        raise TemplateError(f"no template named {message.template_name!r}")
    return template


async def render_message(
    rt: Runtime, session: AsyncSession, message: Message, *, tracked: bool
) -> tuple[Rendered, Template, Subscriber]:
    subscriber = await session.get(Subscriber, message.subscriber_id)
    assert subscriber is not None
    layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    template = await template_for(session, message)
    confirm_url = (
        rt.url(f"/confirm/{rt.tokens.confirm(subscriber.id)}") if message.kind == "confirm" else None
    )
    context = recipient_context(rt, subscriber, layer, message_pk=message.id, confirm_url=confirm_url)
    rendered = render_mail(
        subject=template.subject,
        html=template.html,
        text=template.text,
        context=context,
        track_link=(lambda url: rt.url(f"/c/{rt.tokens.click(message.id, url)}")) if tracked else None,
        open_pixel_url=rt.url(f"/o/{rt.tokens.open(message.id)}") if tracked else None,
        base_url=rt.settings.base_url,
        footer=Footer(rt.settings.from_name, rt.settings.postal_address,
                      context["links"]["unsubscribe"] if message.kind != "confirm" else None),
    )
    return rendered, template, subscriber


async def build_mail(rt: Runtime, session: AsyncSession, message: Message) -> Built:
    tracked = message.kind != "confirm"
    rendered, template, subscriber = await render_message(rt, session, message, tracked=tracked)
    settings = rt.settings
    layer_part = f"layer{subscriber.layer_id}" if subscriber.layer_id else message.kind
    mail = Mail(
        from_name=settings.from_name,
        from_email=settings.from_email,
        to_name=subscriber.name,
        to_email=subscriber.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=message.message_id,
        date=rt.clock.now(),
        unsubscribe_url=(
            rt.url(f"/unsubscribe/{rt.tokens.unsubscribe(subscriber.id)}") if tracked else None
        ),
        list_id=f"<{layer_part}.{settings.sender_domain}>",
    )
    return Built(mail, template.id)
