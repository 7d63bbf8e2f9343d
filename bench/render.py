"""Renders per second per core of one starter newsletter through the whole per-recipient
pipeline (sandboxed render, tracked links, open pixel, footer, text part, MIME bytes) against
the same mail built the way most Python code does it, measured in the same run: ``jinja2``
renders of the same HTML and text templates, an ``email.message.EmailMessage`` with both parts
and the same headers, ``as_bytes()`` (target: ours ≥ 8×). A bare ``jinja2.Template.render`` of
the compiled HTML alone is printed for scale.

    .venv/bin/python bench/render.py [--seconds 2] [--json PATH]

CSS inlining and MJML compilation happen once at upload and are not part of the per-recipient
cost; their one-off time is printed too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import time
import tomllib
from collections.abc import Callable
from email.message import EmailMessage

import jinja2
from suite import write_rows

from responder.clock import SystemClock
from responder.delivery.mime import Mail, compose
from responder.settings import Settings, default_templates_dir
from responder.templating.compile import compile_template, generated_text
from responder.templating.context import sample_context
from responder.templating.render import Footer, add_footer, add_pixel, render_mail, rewrite_links
from responder.templating.sandbox import html_env, render_string, text_env
from responder.tracking.links import add_trap
from responder.tracking.tokens import Tokens

STARTER = default_templates_dir()
BASE = "https://news.example.com"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` on one core, after a short warm-up."""
    for _ in range(20):
        fn()
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(20):
            fn()
        count += 20
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    args = parser.parse_args()
    settings = Settings.from_env(
        {
            "RESPONDER_BASE_URL": BASE,
            "RESPONDER_FROM": "Acme <news@acme.example.com>",
            "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
        }
    )
    entry = next(
        e for e in tomllib.loads((STARTER / "starter.toml").read_text())["templates"] if e["name"] == "newsletter"
    )
    source = (STARTER / entry["file"]).read_text()
    tokens = Tokens("bench-secret", SystemClock(), 3600)
    context = sample_context(settings, "newsletter")
    context["subscriber"]["layer"] = {"position": 3, "name": "Mastery", "label": "Expert"}

    started = time.perf_counter()
    compiled = compile_template(source, entry["subject"], samples=[context])
    compile_ms = (time.perf_counter() - started) * 1000
    text_template = generated_text(compiled.html)
    assert text_template is not None
    bare = jinja2.Template(compiled.html)
    footer = Footer(settings.from_name, settings.postal_address, context["links"]["unsubscribe"])
    now = dt.datetime.now(dt.UTC)

    def track(url: str) -> str:
        return f"{BASE}/c/{tokens.click(42, url)}"

    def links() -> dict[str, str]:
        unsubscribe = tokens.unsubscribe(7)
        return {
            "unsubscribe": f"{BASE}/unsubscribe/{unsubscribe}",
            "preferences": f"{BASE}/preferences/{unsubscribe}",
            "view": f"{BASE}/v/{tokens.view(42)}",
        }

    def rendered():  # type: ignore[no-untyped-def]
        ctx = {**context, "links": links()}
        return render_mail(
            subject=compiled.subject,
            html=compiled.html,
            text=None,
            context=ctx,
            track_link=track,
            open_pixel_url=f"{BASE}/o/{tokens.open(42)}",
            base_url=BASE,
            footer=footer,
        )

    def full() -> bytes:
        mail = rendered()
        return compose(
            Mail(
                settings.from_name,
                settings.from_email,
                "Sam Sample",
                "sam@example.com",
                mail.subject,
                mail.html,
                mail.text,
                "<42@acme.example.com>",
                now,
                f"{BASE}/unsubscribe/x",
                list_id="<layer3.acme.example.com>",
            )
        )

    plain_html = jinja2.Environment(autoescape=True).from_string(compiled.html)
    plain_text = jinja2.Environment().from_string(text_template)
    plain_subject = jinja2.Environment().from_string(compiled.subject)

    def typical() -> bytes:
        """The mail as most Python code builds it: the same templates, context and headers."""
        ctx = {**context, "links": links()}
        message = EmailMessage()
        message["From"] = email.utils.formataddr((settings.from_name, settings.from_email))
        message["To"] = email.utils.formataddr(("Sam Sample", "sam@example.com"))
        message["Subject"] = plain_subject.render(ctx)
        message["Date"] = email.utils.format_datetime(now)
        message["Message-ID"] = "<42@acme.example.com>"
        message["List-Unsubscribe"] = f"<{BASE}/unsubscribe/x>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["List-Id"] = "<layer3.acme.example.com>"
        message.set_content(plain_text.render(ctx))
        message.add_alternative(plain_html.render(ctx), subtype="html")
        return message.as_bytes()

    body = render_string(html_env(), compiled.html, context, "body")
    one = rendered()
    one_mail = Mail(
        settings.from_name,
        settings.from_email,
        "Sam",
        "sam@example.com",
        one.subject,
        one.html,
        one.text,
        "<42@acme.example.com>",
        now,
    )
    stages: dict[str, Callable[[], object]] = {
        "recipient links (3 tokens)": links,
        "sandboxed HTML render": lambda: render_string(html_env(), compiled.html, context, "body"),
        "text part (precompiled)": lambda: render_string(text_env(), text_template, context, "text"),
        "subject": lambda: render_string(text_env(), compiled.subject, context, "subject"),
        "footer check": lambda: add_footer(body, one.text, footer),
        "link rewrite (signed clicks)": lambda: rewrite_links(body, track, BASE),
        "open pixel": lambda: add_pixel(body, f"{BASE}/o/{tokens.open(42)}"),
        "MIME bytes (compose)": lambda: compose(one_mail),
    }

    seconds = args.seconds
    bare_rate = rate(lambda: bare.render(context), seconds)
    typical_rate = rate(typical, seconds)
    full_rate = rate(full, seconds)
    no_mime_rate = rate(rendered, seconds)
    print(
        f"template: starter newsletter, {len(compiled.html):,} chars compiled HTML, "
        f"{len(full()):,} bytes as MIME; compile once (MJML + css-inline + checks): "
        f"{compile_ms:.1f} ms"
    )
    print(f"jinja2 + EmailMessage.as_bytes()  {typical_rate:9,.0f} mails/s per core    (reference)")
    print(f"bare jinja2.Template.render       {bare_rate:9,.0f} renders/s per core  (HTML only, for scale)")
    print(
        f"full pipeline to MIME bytes       {full_rate:9,.0f} renders/s per core  "
        f"ratio {full_rate / typical_rate:.2f}x the EmailMessage build (target >= 8x), "
        f"{full_rate / bare_rate:.2f}x the bare render"
    )
    print(
        f"pipeline without MIME composition {no_mime_rate:9,.0f} renders/s per core  "
        f"ratio {no_mime_rate / bare_rate:.2f}x the bare render"
    )
    if args.json:
        size = f"starter newsletter, {len(full()):,} bytes"
        write_rows(
            args.json,
            [
                {
                    "name": f"render to MIME bytes ({size}) vs jinja2 + EmailMessage",
                    "value": full_rate,
                    "unit": "mails/s per core",
                    "value_name": "responder pipeline",
                    "reference": typical_rate,
                    "reference_name": "jinja2 + EmailMessage.as_bytes()",
                    "ratio": full_rate / typical_rate,
                    "target": ">= 8",
                },
                {
                    "name": f"render to MIME bytes ({size}) vs bare HTML render, for scale",
                    "value": full_rate,
                    "unit": "mails/s per core",
                    "value_name": "responder pipeline",
                    "reference": bare_rate,
                    "reference_name": "bare jinja2.Template.render (HTML only)",
                    "ratio": full_rate / bare_rate,
                    "target": None,
                },
                {
                    "name": "render without MIME composition vs bare HTML render",
                    "value": no_mime_rate,
                    "unit": "mails/s per core",
                    "value_name": "pipeline without MIME",
                    "reference": bare_rate,
                    "reference_name": "bare jinja2.Template.render (HTML only)",
                    "ratio": no_mime_rate / bare_rate,
                    "target": None,
                    "compile_once_ms": compile_ms,
                },
            ],
        )
    print("where a full render's time goes (each stage alone, µs per call):")
    costs = {name: 1e6 / rate(fn, seconds / 4) for name, fn in stages.items()}
    total = sum(costs.values())
    for name, cost in sorted(costs.items(), key=lambda item: -item[1]):
        print(f"  {name:30} {cost:8.1f} µs  {cost / total:6.1%}")
    # Not part of the pipeline measured above: build_mail adds it to every tracked message.
    trap = 1e6 / rate(lambda: add_trap(one.html, track("responder:trap")), seconds / 4)
    print(f"  {'+ trap link (build_mail only)':30} {trap:8.1f} µs")
    print(f"  {'bare render, for scale':30} {1e6 / bare_rate:8.1f} µs")


if __name__ == "__main__":
    main()
