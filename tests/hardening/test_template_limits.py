"""Uploaded templates cannot freeze the server or eat its memory (issue 18, point 1, the sandbox
part): every operation that could build a huge number or string in one C-level step is refused
before it runs, at upload (422, nothing stored) and at send; ``/healthz`` keeps answering."""

from __future__ import annotations

import asyncio
import time

import pytest

from responder.errors import TemplateError
from responder.templating.sandbox import html_env, render_string

from ..conftest import App

SQUARED = "{% set a = 3**1000 %}{% set b = a*a %}{% set c = b*b %}{% set d = c*c %}{% set e = d*d %}"
PAYLOADS = [
    SQUARED + "{{ e // 7 }}",
    "{{ ('a'*2000000).replace('a','a'*500)|length }}",
    "{% set a = 'a'*1000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{{ c|length }}",
    "{{ ('a'*2000000)|join('xxxxxxxx')|length }}",
    "{{ 'xxxxxxxx'.join('a'*2000000)|length }}",
    "{{ ('\t'*100000).expandtabs(100)|length }}",
    "{{ 'a'.ljust(10000000)|length }}",
    "{{ 'a'|center(10000000)|length }}",
    "{{ '{:>99999999}'.format(1) }}",
    "{{ '%99999999d' % 1 }}",
    "{{ 2 ** 100000 }}",
    "{{ ('ab' * 1100000)|length }}",
]


@pytest.mark.parametrize("source", PAYLOADS)
def test_each_payload_is_refused_before_it_runs(source: str) -> None:
    began = time.monotonic()
    with pytest.raises(TemplateError) as refused:
        render_string(html_env(), source, {}, "body")
    assert time.monotonic() - began < 1.0
    assert "too large" in refused.value.message


def test_ordinary_templates_still_render() -> None:
    source = (
        "{{ 'ok' ~ 'fine' }} {{ [1,2]|join(',') }} {{ 'a b'.replace(' ', '-') }} {{ 2**10 * 3 }} {{ 'x'|center(9) }}"
    )
    assert render_string(html_env(), source, {}, "body") == "okfine 1,2 a-b 3072     x    "


async def test_uploads_are_refused_while_healthz_answers(app: App) -> None:
    slowest_health = 0.0
    for number, source in enumerate(PAYLOADS):
        body = {"name": f"evil{number}", "subject": "Hi", "body": f"<p>{source}</p>", "purpose": "offer"}
        upload = asyncio.ensure_future(app.client.post("/api/v1/templates", json=body, headers=app.auth))
        began = time.monotonic()
        health = await app.client.get("/healthz")
        slowest_health = max(slowest_health, time.monotonic() - began)
        assert health.status == 200
        resp = await upload
        assert resp.status == 422, (source, await resp.text())
    assert slowest_health < 2.0
    listing = await (await app.client.get("/api/v1/templates", headers=app.auth)).json()
    assert not [t for t in listing["templates"] if t["name"].startswith("evil")]
