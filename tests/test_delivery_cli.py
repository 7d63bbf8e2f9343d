"""``responder delivery pause|resume|status`` and ``responder dkim keygen``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import dkim
import pytest

from responder.cli import main
from responder.db import Database
from responder.delivery.controls import pause_state
from responder.delivery.dkim import DkimKey, DkimSigner, load_key
from responder.delivery.mime import compose

from .test_delivery_core import mail


def paused(url: str) -> bool:
    async def read() -> bool:
        db = Database(url)
        try:
            return (await pause_state(db)).paused
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_pause_resume_status(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["delivery", "pause", "--reason", "new copy", "--database-url", sqlite_url]) == 0
    assert paused(sqlite_url)
    assert main(["delivery", "status", "--database-url", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "sending is paused since" in out and "(new copy)" in out and "outbox: empty" in out
    assert main(["delivery", "resume", "--database-url", sqlite_url]) == 0
    assert not paused(sqlite_url)
    assert "sending is running" in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_writes_a_key_and_prints_its_record(
    tmp_path: Path, algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dkim.pem"
    assert (
        main(
            [
                "dkim",
                "keygen",
                "--out",
                str(out),
                "--selector",
                "s2",
                "--domain",
                "acme.example.com",
                "--algorithm",
                algorithm,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert out.stat().st_mode & 0o777 == 0o600
    assert "s2._domainkey.acme.example.com. IN TXT" in printed
    record = "".join(re.findall(r'"([^"]+)"', printed)).encode()
    signed = DkimSigner(DkimKey("s2", "acme.example.com", load_key(out))).sign(compose(mail()), 1_700_000_000)
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    assert main(["dkim", "keygen", "--out", str(out)]) == 2  # never overwrites a key
