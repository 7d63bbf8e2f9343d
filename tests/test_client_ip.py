"""The client address behind a reverse proxy: X-Forwarded-For counts only from trusted proxies."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from responder.errors import ConfigError
from responder.models import ConsentRecord
from responder.settings import Settings

from .conftest import SmtpSink, running_app


async def consent_ips(
    sqlite_url: str,
    smtp: SmtpSink,
    clock,
    trusted: str,  # type: ignore[no-untyped-def]
    forwarded: list[str],
) -> list[str | None]:
    async with running_app(sqlite_url, smtp, clock, RESPONDER_TRUSTED_PROXIES=trusted) as app:
        for i, header in enumerate(forwarded):
            resp = await app.client.post(
                "/subscribe", json={"email": f"p{i}@example.com"}, headers={"X-Forwarded-For": header}
            )
            assert resp.status == 202
        async with app.rt.db.read() as session:
            return list((await session.execute(select(ConsentRecord.ip).order_by(ConsentRecord.id))).scalars())


async def test_forwarded_for_is_ignored_without_trusted_proxies(sqlite_url, smtp, clock) -> None:  # type: ignore[no-untyped-def]
    assert await consent_ips(sqlite_url, smtp, clock, "", ["203.0.113.7"]) == ["127.0.0.1"]


async def test_trusted_proxy_names_the_client(sqlite_url, smtp, clock) -> None:  # type: ignore[no-untyped-def]
    ips = await consent_ips(
        sqlite_url,
        smtp,
        clock,
        "127.0.0.1,10.0.0.0/8",
        [
            "203.0.113.7",
            "6.6.6.6, 203.0.113.8",  # the left part is the client's own claim
            "203.0.113.9, 10.1.2.3",  # a second trusted proxy in the chain
            "not-an-ip",
            "2001:db8::1",
        ],
    )
    assert ips == ["203.0.113.7", "203.0.113.8", "203.0.113.9", "127.0.0.1", "2001:db8::1"]


def test_bad_proxy_setting_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RESPONDER_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"})
    assert caught.value.message.startswith("RESPONDER_TRUSTED_PROXIES:")
