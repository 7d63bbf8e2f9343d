"""The starter content in responder/starter/: every template compiles and renders for every
default layer, reads well as text, and lays out at 375 px in headless Chromium."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Iterator

import pytest

from responder.settings import Settings, default_templates_dir
from responder.templating.compile import compile_template
from responder.templating.context import sample_context, template_kinds
from responder.templating.render import NO_UNSUBSCRIBE_PURPOSES, Footer, Rendered, render_mail

STARTER = default_templates_dir()
MANIFEST = tomllib.loads((STARTER / "starter.toml").read_text())
SETTINGS = Settings.from_env(
    {
        "RESPONDER_BASE_URL": "https://news.example.com",
        "RESPONDER_FROM": "Acme & Sons <news@acme.example.com>",
        "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
    }
)
LABELS = {spec["position"]: spec["label"] for spec in MANIFEST["layers"]}
ENTRIES = {entry["name"]: entry for entry in MANIFEST["templates"]}


def render_starter(name: str, position: int) -> Rendered:
    entry = ENTRIES[name]
    kind = template_kinds(name, entry.get("purpose", ""))[0]
    context = sample_context(SETTINGS, kind)
    footer = None  # the acknowledgement is sent without one, and goes to no subscriber
    if kind != "enquiry-ack":
        context["subscriber"] = {
            **context["subscriber"],
            "layer": {"position": position, "name": f"layer {position}", "label": LABELS[position]},
        }
        unsubscribe = None if entry.get("purpose") in NO_UNSUBSCRIBE_PURPOSES else context["links"]["unsubscribe"]
        footer = Footer(SETTINGS.from_name, SETTINGS.postal_address, unsubscribe)
    compiled = compile_template((STARTER / entry["file"]).read_text(), entry["subject"], samples=[context])
    return render_mail(
        subject=compiled.subject,
        html=compiled.html,
        text=compiled.text,
        context=context,
        track_link=lambda url: url,
        open_pixel_url=None,
        base_url=SETTINGS.base_url,
        footer=footer,
    )


def test_manifest_lists_every_file_and_every_step_has_a_template() -> None:
    files = {path.name for path in STARTER.glob("*.mjml")}
    assert files == {entry["file"] for entry in MANIFEST["templates"]}
    for layer in MANIFEST["layers"]:
        assert all(step["template"] in ENTRIES for step in layer["steps"])
    for needed in ("base", "newsletter", "confirm", "unsubscribed"):
        assert needed in ENTRIES


@pytest.mark.parametrize("name", sorted(ENTRIES))
@pytest.mark.parametrize("position", [1, 5])
def test_starter_compiles_and_renders(name: str, position: int) -> None:
    mail = render_starter(name, position)
    for part in (mail.subject, mail.html, mail.text):
        assert "{{" not in part and "{%" not in part and "jx" not in part
    assert "Acme &amp; Sons" in mail.html and "Acme & Sons" in mail.text
    assert "1 Market Street, Springfield" in mail.html and "1 Market Street" in mail.text
    assert "<mj-" not in mail.html and 'name="viewport"' in mail.html
    if ENTRIES[name].get("purpose") not in (*NO_UNSUBSCRIBE_PURPOSES, "enquiry"):
        assert "https://news.example.com/unsubscribe/sample" in mail.text
    assert len(mail.text.splitlines()) > 5


def test_newsletter_section_follows_the_layer() -> None:
    assert "For our" not in render_starter("newsletter", 1).html
    assert "For our Premier customers" in render_starter("newsletter", 5).text


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 375, "height": 800},
        )
        context.route("**/*", lambda route: route.abort())  # the network stays closed
        yield context
        context.close()


@pytest.mark.parametrize("name", ["newsletter", "layer3-case-study", "confirm"])
def test_lays_out_at_375px_without_horizontal_scrolling(chromium, name: str) -> None:  # type: ignore[no-untyped-def]
    page = chromium.new_page()
    try:
        page.set_content(render_starter(name, 5).html, wait_until="domcontentloaded")
        scroll_width, view_width, widest = page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth,"
            " Math.max(...[...document.querySelectorAll('body *')]"
            "   .map(e => e.getBoundingClientRect().right))]"
        )
    finally:
        page.close()
    assert view_width == 375
    assert scroll_width <= 375 and widest <= 375, (scroll_width, widest)
