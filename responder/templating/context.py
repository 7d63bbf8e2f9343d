"""The plain data a template sees for one recipient: subscriber, sender and links."""

from __future__ import annotations

from typing import Any

from ..funnel.referrals import referral_url
from ..models import Layer, Subscriber
from ..runtime import Runtime
from ..settings import Settings


def first_name(name: str) -> str:
    return name.split()[0] if name.strip() else ""


def recipient_context(
    rt: Runtime,
    subscriber: Subscriber,
    layer: Layer | None,
    *,
    message_pk: int | None = None,
    confirm_url: str | None = None,
) -> dict[str, Any]:
    settings = rt.settings
    unsubscribe_token = rt.tokens.unsubscribe(subscriber.id)
    links: dict[str, str] = {
        "unsubscribe": rt.url(f"/unsubscribe/{unsubscribe_token}"),
        "preferences": rt.url(f"/preferences/{unsubscribe_token}"),
        "view": rt.url(f"/v/{rt.tokens.view(message_pk)}") if message_pk is not None else "",
        "referral": referral_url(rt, subscriber.id),
    }
    if confirm_url is not None:
        links["confirm"] = confirm_url
    return {
        "subscriber": subscriber_context(subscriber, layer),
        "sender": sender_context(settings),
        "links": links,
    }


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


SAMPLE_SUBSCRIBER = {
    "email": "sam.sample@example.com",
    "name": "Sam Sample",
    "first_name": "Sam",
    "layer": {"position": 1, "name": "New customer", "label": "Welcome"},
    "attributes": {},
    "tags": [],
}


def sample_context(settings: Settings, subscriber: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipient context for checks, previews and test sends: links lead to harmless pages."""
    base = settings.base_url
    return {
        "subscriber": subscriber or SAMPLE_SUBSCRIBER,
        "sender": sender_context(settings),
        "links": {
            "unsubscribe": f"{base}/unsubscribe/sample",
            "preferences": f"{base}/preferences/sample",
            "view": f"{base}/v/sample",
            "confirm": f"{base}/confirm/sample",
        },
        # What the enquiry acknowledgement sees (see enquiries.py); harmless for other templates.
        "enquiry": {
            "name": "Ada Lovelace",
            "first_name": "Ada",
            "email": "ada@example.com",
            "subject": "A question about my order",
            "body": "Could you tell me when the next workshop is?",
            "answer_by": "Wednesday 4 March",
            "answer_within_h": 48,
        },
    }
