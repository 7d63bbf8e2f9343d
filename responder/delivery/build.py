"""From an outbox row to a ready ``Mail``: pick the template version, render, add list headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import TemplateError
from ..models import Layer, Message, Subscriber, Template
from ..runtime import Runtime
from ..templating.context import recipient_context
from ..templating.render import Footer, Rendered, finish
from ..tracking.links import TRAP, add_trap, safe_target
from ..tracking.tokens import MAX_TOKEN_LEN
from .mime import Mail
from .verp import addresses_for


@dataclass(frozen=True)
class Built:
    mail: Mail
    template_id: int


class RenderedMessage(NamedTuple):
    rendered: Rendered
    template: Template
    subscriber: Subscriber
    links: dict[str, str]  # the recipient's links the template saw (unsubscribe, view, …)


async def newest_template(session: AsyncSession, name: str) -> Template | None:
    return (
        await session.execute(select(Template).where(Template.name == name).order_by(Template.version.desc()).limit(1))
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


@dataclass(frozen=True)
class Sources:
    """What a message is rendered from besides itself. The delivery worker loads a whole
    batch's in one query and passes plain rows with the attributes rendering reads: subscriber
    ``id email name status layer_id attributes tags``, layer ``id position name label``, and
    every column of the template."""

    subscriber: Subscriber
    layer: Layer | None
    template: Template


async def load_sources(session: AsyncSession, message: Message) -> Sources:
    subscriber = await session.get(Subscriber, message.subscriber_id)
    assert subscriber is not None
    layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
    return Sources(subscriber, layer, await template_for(session, message))


async def render_message(
    rt: Runtime,
    session: AsyncSession | None,
    message: Message,
    *,
    tracked: bool,
    sources: Sources | None = None,
) -> RenderedMessage:
    if sources is None:
        assert session is not None
        sources = await load_sources(session, message)
    subscriber, template = sources.subscriber, sources.template
    context = message_context(rt, message, sources)
    rendered = finish(
        await rt.renderer.render(template.subject, template.html, template.text, context),
        track_link=click_link(rt, message.id) if tracked else None,
        open_pixel_url=rt.url(f"/o/{rt.tokens.open(message.id)}") if tracked else None,
        base_url=rt.settings.base_url,
        footer=Footer(
            rt.settings.from_name,
            rt.settings.postal_address,
            context["links"]["unsubscribe"] if message.kind not in UNTRACKED else None,
        ),
    )
    if tracked:  # a hidden link only scanners follow (see tracking/machine.py)
        trap_url = rt.url(f"/c/{rt.tokens.click(message.id, TRAP)}")
        rendered = replace(rendered, html=add_trap(rendered.html, trap_url))
    return RenderedMessage(rendered, template, subscriber, context["links"])


# Mails someone asked for, not list mail: no tracking, no list headers, no unsubscribe footer.
UNTRACKED = ("confirm", "privacy")


def message_context(rt: Runtime, message: Message, sources: Sources) -> dict[str, Any]:
    """What the template of ``message`` is rendered against (``templating.context``)."""
    return recipient_context(rt, sources.subscriber, sources.layer, message.kind, message_pk=message.id)


def click_link(rt: Runtime, message_pk: int) -> Callable[[str], str | None]:
    """The tracked URL of a link in message ``message_pk``, or None to leave the link as the
    author wrote it: a target ``/c/`` would refuse to redirect to (not plain http(s), over 4096
    characters), or one whose token outgrows what ``/c/`` reads (a long URL in a non-Latin
    script: its UTF-8 compresses poorly). Tracking such a link would break it for the reader."""

    def track(url: str) -> str | None:
        if not safe_target(url):
            return None
        token = rt.tokens.click(message_pk, url)
        return None if len(token) > MAX_TOKEN_LEN else rt.url(f"/c/{token}")

    return track


async def build_mail(
    rt: Runtime, session: AsyncSession | None, message: Message, sources: Sources | None = None
) -> Built:
    """``sources`` already loaded, or read through ``session``."""
    tracked = message.kind not in UNTRACKED
    rendered, template, subscriber, links = await render_message(rt, session, message, tracked=tracked, sources=sources)
    settings = rt.settings
    layer_part = f"layer{subscriber.layer_id}" if subscriber.layer_id else message.kind
    list_part = f"newsletter{message.newsletter_id}" if message.newsletter_id else layer_part
    assert settings.secret_key is not None
    addresses = addresses_for(settings.secret_key, settings.verp_domain)
    # Reply and mailto addresses only when the inbound server is there to hear them.
    inbound = settings.inbound is not None
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
        unsubscribe_url=links["unsubscribe"] if tracked else None,  # the link the mail shows
        list_id=f"<{list_part}.{settings.sender_domain}>",
        unsubscribe_mailto=(
            f"mailto:{addresses.unsubscribe(subscriber.id)}?subject=unsubscribe" if tracked and inbound else None
        ),
        envelope_from=addresses.bounce(message.id),
        reply_to=addresses.reply(message.id) if inbound else None,
        # Gmail's Feedback-ID: campaign:layer-or-list:kind:sender, most specific first.
        feedback_id=f"{message.newsletter_id or message.step_id or 0}:{list_part}:"
        f"{message.kind}:{settings.sender_domain}",
    )
    return Built(mail, template.id)
