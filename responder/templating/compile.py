"""Turning an uploaded template into the stored, still-Jinja HTML; refusing what cannot work."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateSyntaxError
from mjml import mjml2html

from ..errors import TemplateError
from .render import html_env, subject_env

MAX_SOURCE_BYTES = 512 * 1024
FORMATS = ("mjml", "html")


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
    source: str, subject: str, source_format: str | None = None, text: str | None = None
) -> Compiled:
    """Check and compile; raises ``TemplateError`` naming the line and the problem."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise TemplateError(f"template is larger than {MAX_SOURCE_BYTES // 1024} KB")
    source_format = source_format or detect_format(source)
    if source_format not in FORMATS:
        raise TemplateError(f"unknown template format {source_format!r}: use mjml or html")
    _check_jinja(source, "body")
    _check_jinja(subject, "subject", subject_env())
    if text is not None:
        _check_jinja(text, "text", subject_env())
    if source_format == "mjml":
        try:
            html = mjml2html(source)
        except Exception as exc:  # mjml-python raises plain exceptions for broken markup
            raise TemplateError(f"MJML does not compile: {exc}") from exc
        _check_jinja(html, "compiled MJML")
    else:
        html = source
    return Compiled(subject, source_format, source, html, text)


def _check_jinja(source: str, part: str, env: object | None = None) -> None:
    env = env or html_env()
    try:
        env.parse(source)  # type: ignore[attr-defined]
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}, line {exc.lineno}: {exc.message}", field=part) from exc
