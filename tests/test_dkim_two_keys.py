"""Signing with several DKIM keys (RFC 8463: RSA-2048 and Ed25519 under two selectors): every
key signs every mail, each signature verifies with dkimpy at a real SMTP server, one key still
makes one signature, the settings page shows a record per key, and a configuration that cannot
sign is refused at start."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from responder.clock import FakeClock
from responder.delivery.dkim import dns_record, generate_key, private_pem, signer_from_settings
from responder.errors import ConfigError
from responder.models import Enquiry

from .admin_fixtures import signed_in
from .conftest import SmtpSink, make_settings, running_app
from .delivery_fixtures import queue_newsletter, runtime_for, worker_for

BOTH = {"rsa2026": "rsa", "ed2026": "ed25519"}


def key_files(tmp_path: Path, keys: dict[str, str]) -> tuple[str, dict[bytes, bytes]]:
    """A fresh key per selector (``{selector: algorithm}``): the comma list of their files, and
    the DNS TXT record each selector's name answers with."""
    files, records = [], {}
    for selector, algorithm in keys.items():
        key = generate_key(algorithm)
        path = tmp_path / f"{selector}.pem"
        path.write_bytes(private_pem(key))
        files.append(str(path))
        records[f"{selector}._domainkey.acme.example.com.".encode()] = dns_record(key).encode()
    return ",".join(files), records


def signatures(data: bytes) -> list[str]:
    """``a=/s=`` of each DKIM-Signature, top first."""
    head = data.partition(b"\r\n\r\n")[0].decode()
    return [f"{a}/{s}" for a, s in re.findall(r"^DKIM-Signature: v=1; a=([\w-]+);.*?\bs=(\w+);", head, re.M | re.S)]


async def test_rsa_and_ed25519_both_sign_and_both_verify(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    files, records = key_files(tmp_path, BOTH)
    env = {"RESPONDER_DKIM_SELECTOR": "rsa2026, ed2026", "RESPONDER_DKIM_KEY_FILE": files}
    async with (
        runtime_for(database_url, smtp.url, clock, RESPONDER_RENDER_PROCESSES="1", **env) as rt,
        worker_for(rt) as worker,
    ):
        await queue_newsletter(rt, ["first@example.org", "second@example.org"])
        assert await worker.run_once() == 2
        [child] = rt.renderer._idle  # both keys signed in the render process
        assert child._process is not None and child.jobs == 2
        child._process.kill()  # gone: a fresh one signs the next mail
        await child._process.wait()
        await queue_newsletter(rt, ["third@example.org"])
        assert await worker.run_once() == 1
    for address in ("first@example.org", "second@example.org", "third@example.org"):
        [got] = smtp.to(address)
        # Signed in the order configured, each prepended: the last key's signature is on top.
        assert signatures(got.data) == ["ed25519-sha256/ed2026", "rsa-sha256/rsa2026"], address
        tampered = got.data.replace(b"Subject: ", b"Subject: X")
        for idx in (0, 1):
            assert dkim.DKIM(got.data).verify(idx=idx, dnsfunc=lambda name, timeout=5: records[name]), (address, idx)
            assert not dkim.DKIM(tampered).verify(idx=idx, dnsfunc=lambda name, timeout=5: records[name])


async def test_one_key_makes_one_signature(database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path) -> None:
    files, records = key_files(tmp_path, {"rsa2026": "rsa"})
    env = {"RESPONDER_DKIM_SELECTOR": "rsa2026", "RESPONDER_DKIM_KEY_FILE": files}
    async with runtime_for(database_url, smtp.url, clock, **env) as rt, worker_for(rt) as worker:
        await queue_newsletter(rt, ["one@example.org"])
        await worker.run_once()
    [got] = smtp.to("one@example.org")
    assert signatures(got.data) == ["rsa-sha256/rsa2026"] and got.data.count(b"DKIM-Signature:") == 1
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: records[name])


@pytest.mark.parametrize(
    ("selectors", "files", "said"),
    [
        ("a,b", "{rsa}", "RESPONDER_DKIM_SELECTOR names 2 selector(s) but RESPONDER_DKIM_KEY_FILE 1 key file(s)"),
        ("a,a", "{rsa},{ed}", "RESPONDER_DKIM_SELECTOR names a selector twice"),
        ("a,b", "{rsa},{missing}", "cannot read DKIM key"),
        ("a,b", "{rsa},{not_a_key}", "cannot read DKIM key"),
        ("a", "", "DKIM needs both"),
    ],
)
def test_a_configuration_that_cannot_sign_is_refused(tmp_path: Path, selectors: str, files: str, said: str) -> None:
    paths, _ = key_files(tmp_path, BOTH)
    rsa, ed = paths.split(",")
    (tmp_path / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    settings = make_settings(
        "sqlite+aiosqlite:///x.db",
        "smtp://127.0.0.1:1",
        RESPONDER_DKIM_SELECTOR=selectors,
        RESPONDER_DKIM_KEY_FILE=files.format(
            rsa=rsa, ed=ed, missing=tmp_path / "gone.pem", not_a_key=tmp_path / "garbage.pem"
        ),
    )
    with pytest.raises(ConfigError) as refused:
        signer_from_settings(settings)  # what the delivery worker builds as it starts
    assert said in refused.value.message and "\n" not in refused.value.message


async def test_a_worker_does_not_start_with_a_mismatched_configuration(tmp_path: Path) -> None:
    files, _ = key_files(tmp_path, BOTH)
    env = {
        "PATH": os.environ["PATH"],
        "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
        "RESPONDER_SMTP_URL": "smtp://127.0.0.1:1",
        "RESPONDER_DKIM_SELECTOR": "rsa2026",
        "RESPONDER_DKIM_KEY_FILE": files,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "responder", "worker", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1] == (
        "responder: error: RESPONDER_DKIM_SELECTOR names 1 selector(s) but RESPONDER_DKIM_KEY_FILE 2 key file(s): "
        "give one selector per key, in the same order"
    )


async def test_the_settings_page_shows_a_record_per_key(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    files, records = key_files(tmp_path, BOTH)
    env = {"RESPONDER_DKIM_SELECTOR": "rsa2026,ed2026", "RESPONDER_DKIM_KEY_FILE": files}
    async with running_app(database_url, smtp, clock, **env) as app:
        browser = await signed_in(app.rt, app.client)
        html = await (await browser.get("/admin/settings")).text()
        assert "rsa2026._domainkey.acme.example.com" in html and "ed2026._domainkey.acme.example.com" in html
        assert all(record.decode() in html for record in records.values())
        assert "cannot read DKIM key" not in html
        # A key file gone since the start: its row says so, the other key's record still shows.
        Path(files.split(",")[1]).unlink()
        html = await (await browser.get("/admin/settings")).text()
    assert html.count("cannot read DKIM key") == 1 and "ed2026._domainkey.acme.example.com" in html
    assert records[b"rsa2026._domainkey.acme.example.com."].decode() in html
    assert records[b"ed2026._domainkey.acme.example.com."].decode() not in html


async def test_mail_sent_beside_the_worker_is_signed_too(
    database_url: str, smtp: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    """An enquiry's acknowledgement and its answer, and a template's test send, leave through
    the transport directly, not the delivery worker: each carries both signatures too."""
    files, records = key_files(tmp_path, BOTH)
    env = {"RESPONDER_DKIM_SELECTOR": "rsa2026, ed2026", "RESPONDER_DKIM_KEY_FILE": files}
    async with running_app(database_url, smtp, clock, **env) as app:
        resp = await app.client.post(
            "/enquiry",
            allow_redirects=False,
            data={"email": "ann@example.com", "name": "Ann", "subject": "Pricing", "question": "Do you ship?"},
        )
        assert resp.status == 303, await resp.text()
        async with app.rt.db.read() as session:
            enquiry = (await session.execute(select(Enquiry.id))).scalar_one()
        [ack] = await smtp.wait_for(1, "ann@example.com")
        resp = await app.client.post(
            f"/api/v1/enquiries/{enquiry}/answer", headers=app.auth, json={"answer": "Yes, to Norway too."}
        )
        assert resp.status == 200, await resp.text()
        _, reply = await smtp.wait_for(2, "ann@example.com")
        resp = await app.client.post(
            "/api/v1/templates/layer1-welcome/test", headers=app.auth, json={"email": "me@example.com"}
        )
        assert resp.status == 202, await resp.text()
        [test] = await smtp.wait_for(1, "me@example.com")
    assert ack.message["Auto-Submitted"] == "auto-replied" and "Norway too" in reply.data.decode()
    for got in (ack, reply, test):
        assert signatures(got.data) == ["ed25519-sha256/ed2026", "rsa-sha256/rsa2026"]
        for idx in (0, 1):
            assert dkim.DKIM(got.data).verify(idx=idx, dnsfunc=lambda name, timeout=5: records[name])
