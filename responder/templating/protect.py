"""Carrying Jinja through tools that parse HTML or MJML (mjml-python, css-inline, inscriptis).

Those tools would re-escape ``>`` in ``{% if a > 1 %}``, move text that sits between table rows,
or URL-encode braces. So before a tool runs, every Jinja tag is swapped for an inert placeholder
and swapped back afterwards:

- inside a tag (an attribute value, an ``href``) and inside ``<title>``, ``<mj-title>``,
  ``<mj-preview>``, ``<style>``: a plain word, which every tool copies verbatim;
- a ``{% block %}`` or ``{# comment #}`` in element content: an HTML comment, which parsers keep
  exactly where it stands, even between table rows or MJML sections;
- a ``{{ expression }}`` in element content: a plain word (it stands for text).

``restore`` reports the Jinja tags a tool dropped, with the source line of each, so an upload
can be refused with a message that says where the problem is.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_RAW_CONTENT = re.compile(
    r"<(mj-title|mj-preview|title|style|mj-style)\b[^>]*>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE
)


@dataclass(frozen=True)
class Tag:
    placeholder: str  # what stands in the protected text
    word: str  # the bare word inside the placeholder
    source: str  # the original Jinja tag
    line: int  # its line in the original source
    in_markup: bool  # inside a tag's attributes or a <title>/<style>, not in element content


@dataclass(frozen=True)
class Protected:
    text: str
    tags: tuple[Tag, ...]


def protect(source: str, *, comments: bool = True) -> Protected:
    """Swap every Jinja tag for a placeholder; ``comments=False`` uses words everywhere."""
    nonce = secrets.token_hex(4)
    raw_spans = [(m.start(2), m.end(2)) for m in _RAW_CONTENT.finditer(source)]
    tags: list[Tag] = []
    out: list[str] = []
    last = 0
    in_tag = False  # inside "<...>", judged on the markup only: a ">" in "{% if a > b %}" is not one
    for index, match in enumerate(_JINJA.finditer(source)):
        start = match.start()
        word = f"jx{nonce}n{index}x"
        before = source[last:start]
        lt, gt = before.rfind("<"), before.rfind(">")
        if lt >= 0 or gt >= 0:
            in_tag = lt > gt
        out.append(before)
        in_markup = in_tag or any(a <= start < b for a, b in raw_spans)
        as_comment = comments and not match.group().startswith("{{") and not in_markup
        placeholder = f"<!--{word}-->" if as_comment else word
        out.append(placeholder)
        tags.append(Tag(placeholder, word, match.group(), source.count("\n", 0, start) + 1, in_markup))
        last = match.end()
    out.append(source[last:])
    return Protected("".join(out), tuple(tags))


def restore(text: str, tags: tuple[Tag, ...]) -> tuple[str, list[Tag]]:
    """Put the Jinja tags back; returns the text and the tags the tool dropped."""
    missing = [tag for tag in tags if tag.word not in text]
    if not tags:
        return text, missing
    by_word = {tag.word: tag.source for tag in tags}
    # A comment placeholder may come back re-spaced ("<!-- w -->"); take the comment with it.
    pattern = re.compile(
        "<!--\\s*(" + "|".join(map(re.escape, by_word)) + ")\\s*-->|(" + "|".join(map(re.escape, by_word)) + ")"
    )
    return pattern.sub(lambda m: by_word[m.group(1) or m.group(2)], text), missing
