"""From a rendered template to the bytes that go out: what responder adds to every mail itself
(footer, tracked links, the open pixel, the scanners' trap), the MIME bytes, the DKIM
signatures.

The delivery worker does all of this where the template renders, in a render process
(``templating.pool``'s ``mail`` job), so the sending process only claims, sends and records: on
two cores the per-recipient work runs beside the SMTP exchange instead of taking turns with it.
What a render process needs besides the mail comes in two parts:

- a ``Setup``, the same for every mail of a worker (the secret keys tracked links are signed
  with, the base URL, the DKIM keys), sent to each process once and kept there;
- a ``Plan`` per mail: everything the worker decided about it (headers, envelope, footer,
  whether it is tracked). The template only fills in the subject, the HTML and the text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import serialization

from ..clock import SystemClock
from ..templating.render import Footer, Rendered, finish
from ..tracking.links import TRAP, add_trap, safe_target
from ..tracking.tokens import MAX_TOKEN_LEN, Tokens
from .dkim import DkimKey, DkimSigner, private_pem
from .mime import Mail, compose


@dataclass(frozen=True)
class Setup:
    """What assembling any of a worker's mails needs besides the mail: made once per worker."""

    secret_key: str = field(repr=False)
    previous_keys: tuple[str, ...] = field(repr=False)
    base_url: str
    # (selector, domain, private key PEM) of each DKIM key, in signing order; empty: unsigned.
    dkim: tuple[tuple[str, str, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, secret_key: str, previous_keys: tuple[str, ...], base_url: str, signer: DkimSigner | None) -> Setup:
        keys = () if signer is None else tuple((k.selector, k.domain, private_pem(k.private_key)) for k in signer.keys)
        return cls(secret_key, tuple(previous_keys), base_url, keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """One mail as the worker decided it: ``mail``'s subject, HTML and text are left empty for
    the render to fill in."""

    message_pk: int
    tracked: bool
    footer: Footer
    mail: Mail


class Assembler:
    """A ``Setup`` made ready to use: the token serializers built, the keys parsed."""

    def __init__(self, setup: Setup) -> None:
        # Click and open tokens carry no time: the clock is never read.
        self.tokens = Tokens(setup.secret_key, SystemClock(), 1, setup.previous_keys)
        self.base_url = setup.base_url
        keys = [
            DkimKey(selector, domain, serialization.load_pem_private_key(pem, password=None))  # type: ignore[arg-type]
            for selector, domain, pem in setup.dkim
        ]
        self.signer = DkimSigner(*keys) if keys else None

    def bytes(self, parts: Rendered, plan: Plan) -> bytes:
        """The mail's bytes, signed with every DKIM key of the setup."""
        rendered = finished(parts, plan.message_pk, plan.tracked, plan.footer, self.tokens, self.base_url)
        mail = replace(plan.mail, subject=rendered.subject, html=rendered.html, text=rendered.text)
        data = compose(mail)
        if self.signer is not None:
            data = self.signer.sign(data, int(mail.date.timestamp()))
        return data


@functools.lru_cache(maxsize=8)
def assembler(setup: Setup) -> Assembler:
    """The ``Assembler`` of ``setup``, made once per process."""
    return Assembler(setup)


def finished(
    parts: Rendered, message_pk: int, tracked: bool, footer: Footer, tokens: Tokens, base_url: str
) -> Rendered:
    """The rendered parts with what responder adds: the footer, and for a tracked mail its
    click links, open pixel and trap link (a hidden link only scanners follow, see
    ``tracking/machine.py``)."""
    rendered = finish(
        parts,
        track_link=click_link(tokens, base_url, message_pk) if tracked else None,
        open_pixel_url=f"{base_url}/o/{tokens.open(message_pk)}" if tracked else None,
        base_url=base_url,
        footer=footer,
    )
    if tracked:
        trap_url = f"{base_url}/c/{tokens.click(message_pk, TRAP)}"
        rendered = replace(rendered, html=add_trap(rendered.html, trap_url))
    return rendered


def click_link(tokens: Tokens, base_url: str, message_pk: int) -> Callable[[str], str | None]:
    """The tracked URL of a link in message ``message_pk``, or None to leave the link as the
    author wrote it: a target ``/c/`` would refuse to redirect to (not plain http(s), over 4096
    characters), or one whose token outgrows what ``/c/`` reads (a long URL in a non-Latin
    script: its UTF-8 compresses poorly). Tracking such a link would break it for the reader."""

    def track(url: str) -> str | None:
        if not safe_target(url):
            return None
        token = tokens.click(message_pk, url)
        return None if len(token) > MAX_TOKEN_LEN else f"{base_url}/c/{token}"

    return track
