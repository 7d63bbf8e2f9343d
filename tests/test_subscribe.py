"""POST /subscribe through the real app: form and JSON, consent record, attributes, redirects,
CORS, honeypot, rate limits, proof of work, confirmation throttling, no enumeration."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, select

from responder.clock import FakeClock
from responder.models import ConsentRecord, Message, Subscriber
from responder.web.public.pow import solve

from .conftest import App, SmtpSink, forms_file, running_app
from .public_fixtures import make_subscriber

LANDING = "https://landing.example.org"


async def count(app: App, model: type, **where: object) -> int:
    async with app.rt.db.read() as session:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int((await session.execute(query)).scalar_one())


async def test_form_post_records_consent_and_redirects_to_allowed_target(papp: App) -> None:
    resp = await papp.client.post(
        "/subscribe",
        allow_redirects=False,
        data={
            "email": "ada@example.com",
            "name": "Ada",
            "form": "landing",
            "consent": "Yes, send me the spring guide & related emails.",
            "consent_version": "2026-03",
            "attr_company": "Analytical Engines",
            "redirect": f"{LANDING}/thanks",
        },
    )
    assert resp.status == 303
    assert resp.headers["Location"] == f"{LANDING}/thanks"
    async with papp.rt.db.read() as session:
        ada = (await session.execute(select(Subscriber))).scalar_one()
        [consent] = (await session.execute(select(ConsentRecord))).scalars().all()
    assert ada.status == "pending" and ada.attributes == {"company": "Analytical Engines"}
    assert consent.form == "landing" and consent.consent_version == "2026-03"
    assert consent.wording_sha256 == hashlib.sha256(b"Yes, send me the spring guide & related emails.").hexdigest()
    assert consent.ip == "127.0.0.1" and consent.user_agent
    await papp.smtp.wait_for(1, "ada@example.com")


async def test_json_post_and_form_defaults_for_consent(papp: App) -> None:
    resp = await papp.client.post("/subscribe", json={"email": "bob@example.com", "form": "landing"})
    assert resp.status == 202
    assert (await resp.json())["status"] == "pending"
    async with papp.rt.db.read() as session:
        consent = (await session.execute(select(ConsentRecord))).scalar_one()
    assert consent.consent_version == "2026-03"
    assert consent.wording_sha256 == hashlib.sha256(b"Yes, send me the spring guide & related emails.").hexdigest()


async def test_redirects_and_attributes_outside_the_allow_list_are_refused(papp: App) -> None:
    for extra in (
        {"redirect": "https://evil.example/"},
        {"redirect": "//evil.example"},
        {"redirect": f"{LANDING}/thanks/../x"},
        {"attr_password": "x"},
        {"attr_company": "x" * 201},
        {"attr_company": "a\r\nb"},
    ):
        resp = await papp.client.post(
            "/subscribe", allow_redirects=False, data={"email": "eve@example.com", "form": "landing", **extra}
        )
        assert resp.status == 400, extra
        assert "Location" not in resp.headers
    resp = await papp.client.post(
        "/subscribe", json={"email": "eve@example.com", "form": "landing", "attributes": {"plan": ["a"]}}
    )
    assert resp.status == 400
    resp = await papp.client.post("/subscribe", json={"email": "eve@example.com", "form": "nope"})
    assert resp.status == 404
    assert await count(papp, Subscriber) == 0


async def test_cors_for_configured_origins_only(papp: App) -> None:
    resp = await papp.client.options("/subscribe", headers={"Origin": LANDING, "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == LANDING
    resp = await papp.client.post(
        "/subscribe", json={"email": "c@example.com", "form": "landing"}, headers={"Origin": LANDING}
    )
    assert resp.headers["Access-Control-Allow-Origin"] == LANDING
    resp = await papp.client.post("/subscribe", json={"email": "bad"}, headers={"Origin": LANDING})
    assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == LANDING
    resp = await papp.client.options("/subscribe", headers={"Origin": "https://evil.example"})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await papp.client.post(
        "/subscribe", json={"email": "d@example.com"}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_honeypot_gets_the_same_answer_and_stores_nothing(papp: App) -> None:
    resp = await papp.client.post(
        "/subscribe", allow_redirects=False, data={"email": "bot@example.com", "hp_website": "http://spam.example"}
    )
    assert resp.status == 303 and resp.headers["Location"] == "/subscribe/default/thanks"
    assert await count(papp, Subscriber) == 0


async def test_active_address_gets_the_same_answer_and_no_mail(papp: App) -> None:
    await make_subscriber(papp, "known@example.com")
    answers = []
    for email in ("known@example.com", "new@example.com"):
        resp = await papp.client.post("/subscribe", json={"email": email})
        answers.append((resp.status, await resp.json()))
    assert answers[0] == answers[1]
    await papp.smtp.wait_for(1, "new@example.com")
    assert await count(papp, Message, kind="confirm") == 1


async def test_flood_from_one_ip_gets_429_and_one_confirmation(papp: App) -> None:
    statuses = []
    for _ in range(30):
        resp = await papp.client.post("/subscribe", data={"email": "victim@example.com"}, allow_redirects=False)
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) > 0
    assert statuses[:5] == [303] * 5  # 5 per address per hour
    assert set(statuses[5:]) == {429}
    # Those 30 requests spent the IP's 20 per hour: another address from it waits too.
    resp = await papp.client.post("/subscribe", json={"email": "other@example.com"})
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    await papp.smtp.wait_for(1, "victim@example.com")
    assert await count(papp, Message, kind="confirm", subscriber_id=1) == 1
    papp.clock.advance(3601)
    resp = await papp.client.post("/subscribe", json={"email": "late@example.com"})
    assert resp.status == 202


async def test_confirmation_mail_throttle(database_url: str, smtp: SmtpSink, clock: FakeClock) -> None:
    async with running_app(database_url, smtp, clock, RESPONDER_SUBSCRIBE_PER_ADDRESS_PER_HOUR="100") as app:
        for minutes in (0, 5, 11, 22, 33, 44):
            clock.advance(minutes * 60)
            await app.client.post("/subscribe", json={"email": "pending@example.com"})
        # at 0, 5, 16, 38, 71, 115 min: one per 10 minutes, three per day
        assert await count(app, Message, kind="confirm") == 3
        clock.advance(days=1)
        await app.client.post("/subscribe", json={"email": "pending@example.com"})
        assert await count(app, Message, kind="confirm") == 4


async def test_proof_of_work_form(papp: App) -> None:
    resp = await papp.client.post("/subscribe", json={"email": "p@example.com", "form": "guarded"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "pow_nonce"
    challenge = await (await papp.client.get("/subscribe/guarded/challenge")).json()
    assert challenge["bits"] == 8
    body = {"email": "p@example.com", "form": "guarded", "pow_challenge": challenge["challenge"]}
    resp = await papp.client.post("/subscribe", json={**body, "pow_nonce": "wrong"})
    assert resp.status == 400
    nonce = solve(challenge["challenge"], 8)
    resp = await papp.client.post("/subscribe", json={**body, "pow_nonce": nonce})
    assert resp.status == 202
    resp = await papp.client.post("/subscribe", json={**body, "pow_nonce": nonce})
    assert resp.status == 400  # a challenge is spent once
    other = await (await papp.client.get("/subscribe/landing/challenge")).json()
    resp = await papp.client.post(
        "/subscribe",
        json={
            "email": "q@example.com",
            "form": "guarded",
            "pow_challenge": other["challenge"],
            "pow_nonce": solve(other["challenge"], 8),
        },
    )
    assert resp.status == 400  # a challenge belongs to its form
    assert await count(papp, Subscriber) == 1


async def test_hosted_form_and_snippet(papp: App) -> None:
    resp = await papp.client.get("/subscribe/landing")
    page = await resp.text()
    assert resp.status == 200
    assert 'name="consent_version" value="2026-03"' in page
    assert "spring guide &amp; related" in page and 'name="attr_company"' in page
    assert "nonce-" in resp.headers["Content-Security-Policy"]
    assert (await papp.client.get("/subscribe/unknown")).status == 404
    resp = await papp.client.get("/api/v1/forms/landing/snippet", headers=papp.auth)
    body = await resp.json()
    assert body["html"].startswith(
        '<form class="responder-subscribe" method="post" action="https://news.example.com/subscribe"'
    )
    guarded = await (await papp.client.get("/api/v1/forms/guarded/snippet", headers=papp.auth)).json()
    assert "crypto.subtle.digest" in guarded["html"]
    forms = await (await papp.client.get("/api/v1/forms", headers=papp.auth)).json()
    assert [f["id"] for f in forms["forms"]] == ["default", "guarded", "landing"]
    assert (await papp.client.get("/api/v1/forms")).status == 401


def test_cli_prints_the_snippet(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import os

    from responder.cli import main

    env = {"RESPONDER_FORMS_FILE": forms_file(tmp_path), "RESPONDER_BASE_URL": "https://n.example"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["forms", "snippet", "landing"]) == 0
        assert main(["forms", "snippet", "missing"]) == 2
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr().out
    assert 'action="https://n.example/subscribe"' in out and 'value="landing"' in out
