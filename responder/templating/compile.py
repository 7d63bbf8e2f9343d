"""Turning an uploaded template into the stored, still-Jinja HTML; refusing what cannot work.

Once, at upload: check the Jinja of every part, render every part against the sample context of
each kind of mail it is for (so a misspelt variable is refused now, with its line, rather than at
send time), compile MJML to HTML with mjml-python and inline the CSS with css-inline. Jinja tags
are carried through both tools by ``protect``; a tag a tool dropped is reported with its source
line. Per recipient only the Jinja render, link rewriting and the text part remain (see
``render``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import TemplateSyntaxError
from mjml import mjml2html

from ..errors import TemplateError
from .protect import Tag, protect, restore
from .sandbox import MAX_SOURCE_BYTES, MailEnvironment, html_env, render_string, text_env

FORMATS = ("mjml", "html")
MAX_SUBJECT_CHARS = 998
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)


@dataclass(frozen=True)
class Compiled:
    subject: str
    source_format: str
    source: str
    html: str
    text: str | None


def detect_format(source: str) -> str:
    return "mjml" if source.lstrip().lower().startswith("<mjml") else "html"


def compile_template(
    source: str,
    subject: str,
    source_format: str | None = None,
    text: str | None = None,
    *,
    samples: Sequence[Mapping[str, Any]] = (),
) -> Compiled:
    """Check and compile; raises ``TemplateError`` naming the part, the line and the problem.

    Every part must also render against each of ``samples`` (the contexts of the kinds of mail
    the template is for: ``context.sample_context``).
    """
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise TemplateError(f"template is larger than {MAX_SOURCE_BYTES // 1024} KB", field="body")
    if not subject.strip() or len(subject) > MAX_SUBJECT_CHARS or "\n" in subject.strip():
        raise TemplateError(f"subject must be one line of 1 to {MAX_SUBJECT_CHARS} characters", field="subject")
    if _HEADER_UNSAFE.search(subject.strip()):
        raise TemplateError("subject contains a control character; a mail header cannot carry it", field="subject")
    source_format = source_format or detect_format(source)
    if source_format not in FORMATS:
        raise TemplateError(f"unknown template format {source_format!r}: use mjml or html", field="format")
    parts = [("subject", subject, text_env()), ("body", source, html_env())]
    if text is not None:
        parts.append(("text", text, text_env()))
    for part, part_source, env in parts:
        check_jinja(part_source, part, env)
    for sample in samples:
        # The source itself is rendered, so a failure names the line the author wrote.
        for part, part_source, env in parts:
            rendered = render_string(env, part_source, sample, part)
            if part == "subject" and _HEADER_UNSAFE.search(rendered.strip()):
                raise TemplateError(
                    "subject renders with a control character; a mail header cannot carry it", field="subject"
                )
    html = compile_html(source, source_format)
    check_jinja(html, "compiled body")
    for sample in samples:
        render_string(html_env(), html, sample, "compiled body")
    return Compiled(subject, source_format, source, html, text)


# What no header may carry (as ``delivery.mime`` checks at send): C0 and C1 controls, DEL,
# U+2028/2029.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@lru_cache(maxsize=64)
def compile_html(source: str, source_format: str) -> str:
    """MJML → HTML (if MJML), CSS inlined; Jinja tags come through untouched.

    Pure, so cached: a restart or a sync of unchanged files does not compile again."""
    protected = protect(source)
    html = protected.text
    if source_format == "mjml":
        try:
            html = mjml2html(html)
        except ValueError as exc:  # mrml reports no position: find the line ourselves
            raise TemplateError(
                f"body: MJML does not compile: {locate_markup_problem(source) or exc}", field="body"
            ) from exc
    html = _INLINER.inline(html)
    html, dropped = restore(html, protected.tags)
    if dropped:
        tag = dropped[0]
        raise TemplateError(
            f"body, line {tag.line}: {tag.source} sits where MJML drops it (inside mj-head or "
            "between attributes); move it into mj-text, mj-raw or an attribute value",
            field="body",
        )
    return html


def check_jinja(source: str, part: str, env: MailEnvironment | None = None) -> None:
    try:
        (env or html_env()).parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}, line {exc.lineno}: {exc.message}", field=part) from exc


@lru_cache(maxsize=256)
def generated_text(html: str) -> str | None:
    """The plain-text part as a Jinja text template, derived once from the compiled HTML.

    None when the text conversion moved Jinja tags out of order (e.g. a loop between table rows):
    the text is then converted from each recipient's rendered HTML instead.
    """
    protected = protect(html, comments=False)
    text = html_to_text(protected.text)
    if protected.tags and not _same_structure(protected.tags, text):
        return None
    restored, _ = restore(text, protected.tags)
    try:
        text_env().parse(restored)
    except TemplateSyntaxError:
        return None
    return restored


def _same_structure(tags: tuple[Tag, ...], text: str) -> bool:
    """True if every block tag of the content came through once and in order (those inside
    attributes may vanish, like the attribute itself), and every expression still sits between
    the same two block tags (it may vanish, like the <title>, or repeat)."""
    found = re.findall("|".join(re.escape(tag.word) for tag in tags), text)
    present = set(found)
    blocks = [tag for tag in tags if not tag.source.startswith("{{")]
    if any(not tag.in_markup and tag.word not in present for tag in blocks):
        return False
    block_words = [tag.word for tag in blocks if tag.word in present]
    gap: dict[str, int] = {}  # expression word → how many kept block tags precede it
    kept = 0
    for tag in tags:
        if tag.source.startswith("{{"):
            gap[tag.word] = kept
        elif tag.word in present:
            kept += 1
    seen = 0
    for word in found:
        if word in gap:
            if gap[word] != seen:
                return False
        elif seen >= len(block_words) or block_words[seen] != word:
            return False
        else:
            seen += 1
    return seen == len(block_words)


def html_to_text(body: str) -> str:
    text = get_text(body, ParserConfig(display_links=True))
    # Table layout indents and centres; a plain-text mail reads best flush left.
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


class _Balance(HTMLParser):
    """Finds the first unbalanced or malformed tag in MJML/HTML markup, with its line."""

    VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.problem: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        return None

    def handle_endtag(self, tag: str) -> None:
        if self.problem or tag in self.VOID:
            return
        line = self.getpos()[0]
        if not self.stack:
            self.problem = f"line {line}: </{tag}> closes nothing"
        elif self.stack[-1][0] != tag:
            open_tag, open_line = self.stack[-1]
            self.problem = f"line {line}: </{tag}> found where <{open_tag}> (line {open_line}) should be closed first"
        else:
            self.stack.pop()


_BARE_LT = re.compile(r"<(?![A-Za-z/!?])")


def locate_markup_problem(source: str) -> str | None:
    """A 'line N: what is wrong' for markup that does not compile, when one can be found."""
    for number, line in enumerate(source.splitlines(), start=1):
        if _BARE_LT.search(line):
            return f"line {number}: a bare '<' (write &lt; in text)"
    checker = _Balance()
    checker.feed(source)
    checker.close()
    if checker.problem:
        return checker.problem
    if checker.stack:
        tag, opened = checker.stack[-1]
        return f"line {opened}: <{tag}> is never closed"
    return None
