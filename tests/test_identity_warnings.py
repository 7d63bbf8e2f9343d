"""What providers will hold against a configuration is said by `responder config` and at start
(issue 17, point 6): an http:// public URL, a DKIM domain not aligned with From, no DKIM key, no
postal address. A trial run on localhost gets no warning about its URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from responder.cli import main
from responder.delivery.dkim import dns_record, generate_key, private_pem
from responder.settings import Settings

from .admin_fixtures import signed_in
from .conftest import running_app

BASE = {
    "RESPONDER_DATABASE_URL": "sqlite+aiosqlite:////tmp/x.db",
    "RESPONDER_FROM": "Acme <news@acme.example.com>",
    "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
    "RESPONDER_SMTP_URL": "smtp://relay.example.com:25",
}


def warnings(tmp_path: Path, **env: str) -> list[str]:
    key = tmp_path / "dkim.pem"
    key.write_text("not read here")
    return Settings.from_env({**BASE, "RESPONDER_DKIM_KEY_FILE": str(key), **env}).identity_warnings()


def test_a_sound_configuration_has_no_warning(tmp_path: Path) -> None:
    assert warnings(tmp_path, RESPONDER_BASE_URL="https://news.acme.example.com") == []
    # relaxed alignment: the From domain under the signing domain
    assert warnings(tmp_path, RESPONDER_BASE_URL="https://n.example.com", RESPONDER_DKIM_DOMAIN="example.com") == []
    assert warnings(tmp_path, RESPONDER_BASE_URL="http://127.0.0.1:8080") == []  # a trial run
    # siblings under the organisation's domain align under relaxed DMARC too
    sibling = {"RESPONDER_FROM": "Acme <news@shop.acme.example.com>", "RESPONDER_DKIM_DOMAIN": "mail.acme.example.com"}
    assert warnings(tmp_path, RESPONDER_BASE_URL="https://news.acme.example.com", **sibling) == []


def test_each_problem_is_named(tmp_path: Path) -> None:
    said = warnings(
        tmp_path,
        RESPONDER_BASE_URL="http://news.acme.example.com",
        RESPONDER_DKIM_DOMAIN="mailer.other.example",
        RESPONDER_POSTAL_ADDRESS="",
    )
    assert len(said) == 3
    assert "https" in said[0] and "not aligned" in said[1] and "postal address" in said[2]
    bare = Settings.from_env({**BASE, "RESPONDER_BASE_URL": "https://news.acme.example.com"}).identity_warnings()
    assert bare == [bare[0]] and "no DKIM key" in bare[0]


def test_responder_config_prints_them(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {**BASE, "RESPONDER_BASE_URL": "http://news.acme.example.com"}.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: RESPONDER_BASE_URL is http://" in out and "WARNING: no DKIM key" in out


async def test_the_settings_page_shows_the_real_dkim_record(database_url, smtp, clock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = generate_key("ed25519")
    path = tmp_path / "k.pem"
    path.write_bytes(private_pem(key))
    env = {
        "RESPONDER_DKIM_SELECTOR": "s2026",
        "RESPONDER_DKIM_KEY_FILE": str(path),
        "RESPONDER_DKIM_DOMAIN": "mail.other.example",
    }
    async with running_app(database_url, smtp, clock, **env) as app:
        browser = await signed_in(app.rt, app.client)
        html = await (await browser.get("/admin/settings")).text()
    assert "s2026._domainkey.mail.other.example" in html and dns_record(key) in html
    assert "no signing key" not in html and "not aligned" in html  # From is acme.example.com
