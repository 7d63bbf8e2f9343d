"""Per-recipient rendering in the sandbox, then what every mail gets: a footer when the template
lacks one, tracked links, an open pixel, and a plain-text part.

CSS is already inlined at upload (``compile``), and the text part is a Jinja text template
derived from the compiled HTML once per process (``compile.generated_text``), so a recipient
costs two sandboxed renders and a few string passes, not an HTML parse.
Only plain data goes into a template (dicts of strings and numbers), never model objects.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError
from .compile import generated_text, html_to_text
from .sandbox import html_env, render_string, text_env

_HREF = re.compile(r"""href=(["'])(https?://[^"']+)\1""", re.IGNORECASE)
# The same pattern for a lower-cased ASCII copy of the body: a case-sensitive pattern with a
# literal prefix is searched several times faster than a case-insensitive one.
_HREF_FOLDED = re.compile(rb"""href=(["'])(https?://[^"']+)\1""")
# The one non-ASCII character ``_HREF`` takes for a letter of its own: "ſ" matches "s".
_FOLDS_TO_ASCII = "\u017f"
# Our own links that must reach the subscriber untouched (unsubscribe, preferences, …).
UNTRACKED_PATHS = ("/unsubscribe/", "/preferences/", "/confirm/", "/v/", "/c/", "/o/")
# Mails to people who are not (or no longer) on the list carry no unsubscribe link.
NO_UNSUBSCRIBE_PURPOSES = ("confirm", "unsubscribe")


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Footer:
    """What the law and good manners want at the bottom of a mail: who sends it, from where,
    and (for list mail) how to leave."""

    sender_name: str
    postal_address: str
    unsubscribe_url: str | None


def render_mail(
    *,
    subject: str,
    html: str,
    text: str | None,
    context: Mapping[str, Any],
    track_link: Callable[[str], str | None] | None,
    open_pixel_url: str | None,
    base_url: str,
    footer: Footer | None = None,
) -> Rendered:
    """Render one mail for one recipient in this process (``finish(render_parts(…))``); the
    server renders through ``pool.Renderer`` instead, which runs ``render_parts`` in a child."""
    return finish(render_parts(subject, html, text, context), track_link, open_pixel_url, base_url, footer)


def render_parts(subject: str, html: str, text: str | None, context: Mapping[str, Any]) -> Rendered:
    """What the uploaded template decides, rendered in the sandbox: the subject, the HTML body
    and the text part. ``text`` is an explicit text body; without one the text part is generated
    from the HTML."""
    subject_out = " ".join(render_string(text_env(), subject, context, "subject").split())
    body = render_string(html_env(), html, context, "body")
    text_out = (
        render_string(text_env(), text, context, "text") if text is not None else generated_part(html, body, context)
    )
    return Rendered(subject_out, body, text_out)


def finish(
    parts: Rendered,
    track_link: Callable[[str], str | None] | None,
    open_pixel_url: str | None,
    base_url: str,
    footer: Footer | None = None,
) -> Rendered:
    """What every mail gets from responder itself, in time linear in its size: the footer where
    the template lacks one, tracked links (``track_link`` maps a target URL to its click URL)
    and the open pixel."""
    body, text_out = parts.html, parts.text
    if footer is not None:
        body, text_out = add_footer(body, text_out, footer)
    if track_link is not None:
        body = rewrite_links(body, track_link, base_url)
    if open_pixel_url:
        body = add_pixel(body, open_pixel_url)
    return Rendered(parts.subject, body, text_out)


def generated_part(html: str, body: str, context: Mapping[str, Any]) -> str:
    """The text part derived from the HTML: the precompiled text template when there is one and
    it renders, else a conversion of this recipient's rendered HTML."""
    text_template = generated_text(html)
    if text_template is not None:
        try:
            return render_string(text_env(), text_template, context, "text")
        except TemplateError:
            pass  # the conversion moved a tag in a way the structure check missed
    return html_to_text(body)


def rewrite_links(body: str, track_link: Callable[[str], str | None], base_url: str) -> str:
    """Every ``href`` to an http(s) URL, except our own links, replaced by its tracked URL
    (where ``track_link`` gives one: None leaves the link as it is)."""
    own = tuple(base_url + path for path in UNTRACKED_PATHS)
    signed: dict[str, str] = {}  # a target linked twice is signed once

    def replacement(original: str, url: str) -> str:
        target = htmllib.unescape(url)
        if target.startswith(own):
            return original
        if target not in signed:
            tracked = track_link(target)
            signed[target] = original if tracked is None else f'href="{htmllib.escape(tracked)}"'
        return signed[target]

    if _FOLDS_TO_ASCII in body:
        return _HREF.sub(lambda match: replacement(match.group(0), match.group(2)), body)
    # One byte per character (each non-ASCII one a "?", which the pattern treats alike), so the
    # matches found in the folded copy are at the same offsets in the body.
    folded = body.encode("ascii", "replace").lower()
    pieces: list[str] = []
    done = 0
    for match in _HREF_FOLDED.finditer(folded):
        start, end = match.span()
        pieces += body[done:start], replacement(body[start:end], body[match.start(2) : match.end(2)])
        done = end
    if not pieces:
        return body
    pieces.append(body[done:])
    return "".join(pieces)


def add_pixel(body: str, url: str) -> str:
    pixel = f'<img src="{htmllib.escape(url)}" width="1" height="1" alt="" style="display:block;border:0">'
    return _before_body_end(body, pixel)


def _before_body_end(body: str, snippet: str) -> str:
    index = body.rfind("</body>")
    if index < 0:
        index = last_body_end(body)
    return body + snippet if index < 0 else body[:index] + snippet + body[index:]


def last_body_end(body: str) -> int:
    """Where the last ``</body>`` in any case starts, else -1: ``body.lower().rfind("</body>")``
    without lower-casing the whole body (and without its offsets shifting after an "İ", which
    lower-cases to two characters)."""
    end = len(body)
    for _ in range(8):  # the closing tags at the end of a document, then the folded copy
        index = body.rfind("</", 0, end)
        if index < 0 or body[index + 2 : index + 7].lower() == "body>":
            return index
        end = index + 1
    return body.encode("ascii", "replace").lower().rfind(b"</body>", 0, end)


def add_footer(body: str, text: str, footer: Footer) -> tuple[str, str]:
    """Add the sender's address and the unsubscribe link to whichever part lacks them."""
    address = footer.postal_address.strip()
    unsubscribe = footer.unsubscribe_url

    def lacks(part: str, escape: Callable[[str], str]) -> bool:
        return bool(unsubscribe and escape(unsubscribe) not in part) or bool(address and escape(address) not in part)

    if lacks(body, htmllib.escape):
        e = htmllib.escape
        lines = [e(footer.sender_name) + (f" &middot; {e(address)}" if address else "")]
        if unsubscribe:
            lines.append(f'<a href="{e(unsubscribe)}" style="color:#6b7280;">Unsubscribe</a>')
        body = _before_body_end(
            body,
            (
                '<div style="margin:0 auto;max-width:600px;padding:16px 24px;text-align:center;'
                "font-family:Helvetica,Arial,sans-serif;font-size:12px;line-height:1.5;"
                'color:#6b7280;">' + "<br>".join(lines) + "</div>"
            ),
        )
    if lacks(text, str):
        lines = ["--", footer.sender_name + (f", {address}" if address else "")]
        if unsubscribe:
            lines.append(f"Unsubscribe: {unsubscribe}")
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    return body, text
