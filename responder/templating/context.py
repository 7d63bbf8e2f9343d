"""The plain data a template sees for one recipient: subscriber, sender and links."""

from __future__ import annotations

from typing import Any

from ..models import Layer, Subscriber
from ..referrals import referral_url
from ..runtime import Runtime


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
        "subscriber": {
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
        },
        "sender": {
            "name": settings.from_name,
            "email": settings.from_email,
            "website": settings.website,
            "postal_address": settings.postal_address,
        },
        "links": links,
    }
