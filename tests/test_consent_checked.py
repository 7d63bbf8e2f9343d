"""Consent on record is the form's, checked (issue 17, point 3): a page that sends another
version or other wording is refused and nothing is stored; the record (form, wording hash,
version, time, address, browser) is in the admin API and on the subscriber's admin page."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select

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
    resp = await papp.client.post("/subscribe", json=body, headers={"User-Agent": "Ada's browser"})
    assert resp.status == 202
    async with papp.rt.db.read() as session:
        ada = (await session.execute(select(Subscriber))).scalar_one()
    resp = await papp.client.get(f"/api/v1/subscribers/{ada.id}", headers=papp.auth)
    consent = (await resp.json())["consent"]
    first = consent[0]
    assert (first["action"], first["form"], first["consent_version"]) == ("subscribe", "landing", "2026-03")
    assert first["wording_sha256"] == hashlib.sha256(WORDING.encode()).hexdigest()
    assert first["ip"] == "127.0.0.1" and first["user_agent"] == "Ada's browser"
    browser = await signed_in(papp.rt, papp.client)
    html = await (await browser.get(f"/admin/subscribers/{ada.id}")).text()
    assert "Consent on record" in html and "2026-03" in html and first["wording_sha256"][:12] in html
