"""From an outbox row to a mail ready to send: pick the template version, decide the headers, render
and assemble it in a render process (``delivery.assemble``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import TemplateError
from ..models import Layer, Message, Subscriber, Template
from ..runtime import Runtime
from ..templating.context import recipient_context
from ..templating.render import Footer, Rendered
from .assemble import Plan, Setup, finished
from .dkim import DkimSigner
from .mime import Envelope, Mail
from .verp import addresses_for


@dataclass(frozen=True)
class Built:
    """A mail ready to send: where it goes, its bytes (signed when the setup has DKIM keys) and
    the template version it was made from."""

    envelope: Envelope
    data: bytes
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
    """The message rendered and finished in this process, as it was sent (the view-online page)."""
    if sources is None:
        assert session is not None
        sources = await load_sources(session, message)
    subscriber, template = sources.subscriber, sources.template
    context = message_context(rt, message, sources)
    rendered = finished(
        await rt.renderer.render(template.subject, template.html, template.text, context),
        message.id,
        tracked,
        footer(rt, message, context["links"]),
        rt.tokens,
        rt.settings.base_url,
    )
    return RenderedMessage(rendered, template, subscriber, context["links"])


def footer(rt: Runtime, message: Message, links: dict[str, str]) -> Footer:
    unsubscribe = links["unsubscribe"] if message.kind not in UNTRACKED else None
    return Footer(rt.settings.from_name, rt.settings.postal_address, unsubscribe)


# Mails someone asked for, not list mail: no tracking, no list headers, no unsubscribe footer.
UNTRACKED = ("confirm", "privacy")


def message_context(rt: Runtime, message: Message, sources: Sources) -> dict[str, Any]:
    """What the template of ``message`` is rendered against (``templating.context``)."""
    return recipient_context(rt, sources.subscriber, sources.layer, message.kind, message_pk=message.id)


def setup_of(rt: Runtime, signer: DkimSigner | None = None) -> Setup:
    """What every mail's assembly needs besides the mail: unsigned without ``signer``."""
    settings = rt.settings
    assert settings.secret_key is not None
    return Setup.of(settings.secret_key, settings.previous_secret_keys, settings.base_url, signer)


@dataclass(frozen=True)
class MailJob:
    """A message made ready for a render process: its template's sources, the context they
    render against, and everything else about the mail (``Plan``)."""

    template: Template
    context: dict[str, Any]
    plan: Plan
    envelope: Envelope

    @property
    def render(self) -> tuple[str, str, str | None, dict[str, Any], Plan]:
        return (self.template.subject, self.template.html, self.template.text, self.context, self.plan)


def mail_job(rt: Runtime, message: Message, sources: Sources) -> MailJob:
    """``ValidationError`` for an address the mail cannot go to (an invalid internationalised
    domain)."""
    context = message_context(rt, message, sources)
    plan = mail_plan(rt, message, sources.subscriber, context["links"])
    return MailJob(sources.template, context, plan, plan.mail.envelope)


async def build_mail(
    rt: Runtime,
    session: AsyncSession | None,
    message: Message,
    sources: Sources | None = None,
    *,
    setup: Setup | None = None,
) -> Built:
    """The mail of one message, rendered, assembled and signed (with the keys of ``setup``;
    unsigned without one) in a render process; ``sources`` already loaded, or read through
    ``session``. The delivery worker sends a whole batch's ``mail_job``s at once instead."""
    if sources is None:
        assert session is not None
        sources = await load_sources(session, message)
    job = mail_job(rt, message, sources)
    [data] = rt.renderer.mails([job.render], setup or setup_of(rt))
    return Built(job.envelope, await data, job.template.id)


def mail_plan(rt: Runtime, message: Message, subscriber: Subscriber, links: dict[str, str]) -> Plan:
    """Everything about the mail of ``message`` but what its template renders."""
    tracked = message.kind not in UNTRACKED
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
        subject="",
        html="",
        text="",
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
    return Plan(message.id, tracked, footer(rt, message, links), mail)
