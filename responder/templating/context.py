"""The plain data a template sees, for each kind of mail: who it is for, who sends it, their links.

Every kind of mail renders its template against one context shape (``KINDS``):

- ``step`` and ``newsletter`` (list mail): ``subscriber``, ``sender``, ``links`` (unsubscribe,
  preferences, view, referral);
- ``confirm`` (the double opt-in mail): the same, plus ``links.confirm``;
- ``ask`` (the re-permission mail sent before a sunset): the same, plus ``links.keep``;
- ``enquiry-ack`` (the acknowledgement of a question): ``enquiry`` and ``sender`` only.

The real context (``recipient_context``, ``enquiry_context``) and the sample one that uploads,
previews and the checks of newsletters and steps render against (``sample_context``) are built
by the same functions here, so a template that renders against the sample renders when sent.
"""

from __future__ import annotations

from typing import Any

from ..funnel.referrals import referral_url
from ..models import Layer, Subscriber
from ..runtime import Runtime
from ..settings import Settings

KINDS = ("step", "newsletter", "confirm", "ask", "privacy", "enquiry-ack")
# How a message names each kind in an error ("cannot be sent as a newsletter").
KIND_NAMES = {
    "step": "a sequence step",
    "newsletter": "a newsletter",
    "confirm": "the confirmation mail",
    "ask": "the re-permission mail",
    "privacy": "the mail with the link to download or erase one's data",
    "enquiry-ack": "the enquiry acknowledgement",
}
# The templates the confirmation and the acknowledgement are sent with, by name.
KIND_OF_NAME = {"confirm": "confirm", "enquiry-ack": "enquiry-ack", "sunset-ask": "ask", "privacy": "privacy"}
KIND_OF_PURPOSE = {"confirm": "confirm", "enquiry": "enquiry-ack", "ask": "ask", "privacy": "privacy"}


def first_name(name: str) -> str:
    return name.split()[0] if name.strip() else ""


# Templates no list mail is written with: the layout others extend, the goodbye page's mail.
NOT_PICKED = ("layout", "unsubscribe")


def pickable(name: str, purpose: str, kind: str) -> bool:
    """Whether a template belongs in the picker of ``kind`` (``step``, ``newsletter``) mail."""
    return purpose not in NOT_PICKED and kind in template_kinds(name, purpose)


def template_kinds(name: str, purpose: str) -> tuple[str, ...]:
    """The kinds of mail a template is written for: the confirmation and the acknowledgement by
    their names (what sends them) or purposes, any other template for list mail."""
    kind = KIND_OF_NAME.get(name) or KIND_OF_PURPOSE.get(purpose)
    return (kind,) if kind else ("step", "newsletter")


def recipient_context(
    rt: Runtime, subscriber: Subscriber, layer: Layer | None, kind: str, *, message_pk: int | None = None
) -> dict[str, Any]:
    """The context of a ``step``, ``newsletter`` or ``confirm`` mail to ``subscriber``;
    ``message_pk`` None (a preview, not a sent message) leaves ``links.view`` empty."""
    unsubscribe_token = rt.tokens.unsubscribe(subscriber.id)
    links = links_context(
        unsubscribe=rt.url(f"/unsubscribe/{unsubscribe_token}"),
        preferences=rt.url(f"/preferences/{unsubscribe_token}"),
        view=rt.url(f"/v/{rt.tokens.view(message_pk)}") if message_pk is not None else "",
        referral=referral_url(rt, subscriber.id),
        confirm=rt.url(f"/confirm/{rt.tokens.confirm(subscriber.id)}") if kind == "confirm" else None,
        keep=rt.url(f"/keep/{rt.tokens.keep(subscriber.id)}") if kind == "ask" else None,
        privacy=rt.url(f"/privacy/{rt.tokens.privacy(subscriber.id)}") if kind == "privacy" else None,
    )
    return mail_context(rt.settings, subscriber, layer, links)


def mail_context(
    settings: Settings, subscriber: Subscriber, layer: Layer | None, links: dict[str, str]
) -> dict[str, Any]:
    return {
        "subscriber": subscriber_context(subscriber, layer),
        "sender": sender_context(settings),
        "links": links,
    }


def links_context(
    *,
    unsubscribe: str,
    preferences: str,
    view: str,
    referral: str,
    confirm: str | None,
    keep: str | None = None,
    privacy: str | None = None,
) -> dict[str, str]:
    links = {"unsubscribe": unsubscribe, "preferences": preferences, "view": view, "referral": referral}
    if confirm is not None:
        links["confirm"] = confirm
    if keep is not None:
        links["keep"] = keep
    if privacy is not None:
        links["privacy"] = privacy
    return links


def subscriber_context(subscriber: Subscriber, layer: Layer | None) -> dict[str, Any]:
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "first_name": first_name(subscriber.name),
        "layer": {
            "position": layer.position if layer else 0,
            "name": layer.name if layer else "",
            "label": layer.label if layer else "",
        },
        "attributes": dict(subscriber.attributes or {}),
        "tags": list(subscriber.tags or []),
    }


def sender_context(settings: Settings) -> dict[str, str]:
    return {
        "name": settings.from_name,
        "email": settings.from_email,
        "website": settings.website,
        "postal_address": settings.postal_address,
    }


def enquiry_context(
    settings: Settings, *, name: str, email: str, subject: str, body: str, answer_by: str
) -> dict[str, Any]:
    """The context of the acknowledgement of an enquiry (there may be no subscriber behind it)."""
    return {
        "enquiry": {
            "name": name,
            "first_name": first_name(name),
            "email": email,
            "subject": subject,
            "body": body,
            "answer_by": answer_by,
            "answer_within_h": settings.enquiry_answer_h,
        },
        "sender": sender_context(settings),
    }


def sample_subscriber() -> tuple[Subscriber, Layer]:
    """A subscriber with no attributes and no tags (a template must not count on either)."""
    return (
        Subscriber(id=0, email="sam.sample@example.com", name="Sam Sample", attributes={}, tags=[]),
        Layer(id=0, position=1, name="New customer", label="Welcome"),
    )


def sample_contexts(settings: Settings, kind: str) -> list[dict[str, Any]]:
    """``sample_context``, then recipients unlike it that real lists hold: one with no name at
    all, one with a long name in another script, a plus address and the top layer. An upload
    and the checks of newsletters and steps render against each, so a template that only works
    for Sam Sample (``{{ subscriber.name[0] }}``, a branch on the sample's address) is refused."""
    first = sample_context(settings, kind)
    if kind == "enquiry-ack":
        # Someone who is not a subscriber gets no quote of what they sent (``ack_context``).
        nameless = {**first, "enquiry": {**first["enquiry"], "name": "", "first_name": "", "subject": "", "body": ""}}
        return [first, nameless]
    variants = [first]
    for name, email, position, label in (
        ("", "x@example.org", 1, "Welcome"),
        ("Zoë Ångström-Nakamura 中村 " + "é" * 100, "long.name+tag@example.co.uk", 7, "Partner"),
    ):
        subscriber = {
            **first["subscriber"],
            "email": email,
            "name": name,
            "first_name": first_name(name),
            "layer": {"position": position, "name": f"Layer {position}", "label": label},
        }
        variants.append({**first, "subscriber": subscriber})
    return variants


def sample_context(settings: Settings, kind: str) -> dict[str, Any]:
    """The context a ``kind`` mail gets, for a sample recipient: every variable a real one has,
    links to harmless pages. Uploads, previews and the checks of newsletters and steps all
    render against it."""
    if kind not in KINDS:
        raise ValueError(f"no kind of mail {kind!r}")
    if kind == "enquiry-ack":
        return enquiry_context(
            settings,
            name="Ada Lovelace",
            email="ada@example.com",
            subject="A question about my order",
            body="Could you tell me when the next workshop is?",
            answer_by="Wednesday 4 March 2026",
        )
    base = settings.base_url
    subscriber, layer = sample_subscriber()
    links = links_context(
        unsubscribe=f"{base}/unsubscribe/sample",
        preferences=f"{base}/preferences/sample",
        view=f"{base}/v/sample",
        referral=f"{base}/r/sample",
        confirm=f"{base}/confirm/sample" if kind == "confirm" else None,
        keep=f"{base}/keep/sample" if kind == "ask" else None,
        privacy=f"{base}/privacy/sample" if kind == "privacy" else None,
    )
    return mail_context(settings, subscriber, layer, links)
