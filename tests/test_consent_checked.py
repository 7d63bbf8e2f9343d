"""Consent on record is the form's, checked (issue 17, point 3): a page that sends another
version or other wording is refused and nothing is stored; the record (form, wording hash,
version, time, address, browser) is in the admin API and on the subscriber's admin page."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from responder.audience.subscribers import page_url
from responder.models import ConsentRecord, Subscriber

from .admin_fixtures import signed_in
from .conftest import App

WORDING = "Yes, send me the spring guide & related emails."


async def test_another_version_or_wording_is_refused_and_nothing_stored(papp: App) -> None:
    for given in ({"consent_version": "999"}, {"consent": "I agree to nothing", "consent_version": "2026-03"}):
        resp = await papp.client.post("/subscribe", json={"email": "ada@example.com", "form": "landing", **given})
        assert resp.status == 400, await resp.text()
        assert "reload the page" in (await resp.json())["error"]["message"]
    async with papp.rt.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Subscriber))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(ConsentRecord))).scalar_one() == 0


async def test_the_record_is_the_forms_and_the_admin_sees_it(papp: App) -> None:
    body = {"email": "ada@example.com", "form": "landing", "consent": f"  {WORDING} ", "consent_version": "2026-03"}
    page = "https://landing.example.org/spring?email=ada%40example.com#top"
    resp = await papp.client.post("/subscribe", json=body, headers={"User-Agent": "Ada's browser", "Referer": page})
    assert resp.status == 202
    async with papp.rt.db.read() as session:
        ada = (await session.execute(select(Subscriber))).scalar_one()
    resp = await papp.client.get(f"/api/v1/subscribers/{ada.id}", headers=papp.auth)
    consent = (await resp.json())["consent"]
    first = consent[0]
    assert (first["action"], first["form"], first["consent_version"]) == ("subscribe", "landing", "2026-03")
    assert first["wording_sha256"] == hashlib.sha256(WORDING.encode()).hexdigest()
    assert first["ip"] == "127.0.0.1" and first["user_agent"] == "Ada's browser"
    assert first["page_url"] == "https://landing.example.org/spring"  # no query: it held the address
    browser = await signed_in(papp.rt, papp.client)
    html = await (await browser.get(f"/admin/subscribers/{ada.id}")).text()
    assert "Consent on record" in html and "2026-03" in html and first["wording_sha256"][:12] in html
    assert "https://landing.example.org/spring<" in html


@pytest.mark.parametrize(
    "referer", ["javascript:alert(1)", "https://x.example/a\x00b", "not a url", "data:text/html,hi"]
)
def test_a_referer_that_is_not_a_web_page_is_not_recorded(referer: str) -> None:
    assert page_url(referer) is None


def test_a_web_page_is_recorded_without_query_or_fragment() -> None:
    assert page_url("http://Shop.Example:8080/sign-up/?utm=1#f") == "http://shop.example:8080/sign-up/"
    assert page_url("https://shop.example") == "https://shop.example/"
