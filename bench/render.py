"""Renders per second per core of one starter newsletter through the whole per-recipient
pipeline (sandboxed render, tracked links, open pixel, footer, text part, MIME bytes) against a
bare ``jinja2.Template.render`` of the same compiled HTML, measured in the same run.

    .venv/bin/python bench/render.py [--seconds 2]

CSS inlining and MJML compilation happen once at upload and are not part of the per-recipient
cost; their one-off time is printed too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import tomllib
from collections.abc import Callable

import jinja2

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
    context = sample_context(settings)
    context["subscriber"]["layer"] = {"position": 3, "name": "Mastery", "label": "Expert"}

    started = time.perf_counter()
    compiled = compile_template(source, entry["subject"], sample=context)
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
    full_rate = rate(full, seconds)
    no_mime_rate = rate(rendered, seconds)
    print(
        f"template: starter newsletter, {len(compiled.html):,} chars compiled HTML, "
        f"{len(full()):,} bytes as MIME; compile once (MJML + css-inline + checks): "
        f"{compile_ms:.1f} ms"
    )
    print(f"bare jinja2.Template.render       {bare_rate:9,.0f} renders/s per core  (reference)")
    print(
        f"full pipeline to MIME bytes       {full_rate:9,.0f} renders/s per core  "
        f"ratio {full_rate / bare_rate:.2f}x (target >= 0.5x)"
    )
    print(
        f"pipeline without MIME composition {no_mime_rate:9,.0f} renders/s per core  "
        f"ratio {no_mime_rate / bare_rate:.2f}x"
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
