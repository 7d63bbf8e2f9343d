"""``responder rotate-secret`` (issue 18, point 4): a new signing key, and a grace period in which
links and reply addresses made with the old one still verify; after it, they do not."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from responder.app import start_runtime
from responder.clock import FakeClock
from responder.delivery.verp import addresses_for
from responder.errors import InvalidToken
from responder.funnel.referrals import read_referral, referral_token
from responder.runtime import Runtime
from responder.seed import rotate_secret

from ..conftest import make_settings


def issued(rt: Runtime) -> dict[str, str]:
    assert rt.settings.secret_key is not None
    return {
        "unsubscribe": rt.tokens.unsubscribe(7),
        "confirm": rt.tokens.confirm(7),
        "click": rt.tokens.click(9, "https://shop.example.com/"),
        "referral": referral_token(rt, 7),
        "reply": addresses_for(rt.settings.secret_key, rt.settings.verp_domain).reply(9),
    }


def reads(rt: Runtime, made: dict[str, str]) -> dict[str, bool]:
    assert rt.settings.secret_key is not None
    verp = addresses_for(rt.settings.secret_key, rt.settings.verp_domain, rt.settings.previous_secret_keys)
    checks = {
        "unsubscribe": lambda t: rt.tokens.read_unsubscribe(t) == 7,
        "confirm": lambda t: rt.tokens.read_confirm(t) == 7,
        "click": lambda t: rt.tokens.read_click(t) == (9, "https://shop.example.com/"),
        "referral": lambda t: read_referral(rt, t) == 7,
        "reply": lambda t: verp.parse(t) is not None,
    }
    result = {}
    for name, token in made.items():
        try:
            result[name] = bool(checks[name](token))
        except InvalidToken:
            result[name] = False
    return result


async def test_old_links_verify_during_the_grace_period_and_not_after(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    settings = make_settings(url, "file:///tmp/unused", RESPONDER_SECRET_KEY="")
    settings = settings.replace(secret_key=None)
    rt = (await start_runtime(settings, clock)).runtime
    old = issued(rt)
    until = await rotate_secret(rt.db, clock.now(), dt.timedelta(days=30))
    await rt.close()
    assert until == clock.now() + dt.timedelta(days=30)

    clock.advance(days=1)  # within the grace period (and within a confirm link's own 7 days)
    rt = (await start_runtime(settings, clock)).runtime
    try:
        new = issued(rt)
        assert all(new[name] != old[name] for name in old)  # signed with the new key
        assert reads(rt, old) == dict.fromkeys(old, True)
        assert reads(rt, new) == dict.fromkeys(new, True)
    finally:
        await rt.close()

    clock.advance(days=30)  # past the grace period: only the new key is left
    rt = (await start_runtime(settings, clock)).runtime
    try:
        assert rt.settings.previous_secret_keys == ()
        assert reads(rt, old) == dict.fromkeys(old, False)
        assert reads(rt, new)["unsubscribe"] and reads(rt, new)["reply"]
    finally:
        await rt.close()


def test_the_command_refuses_a_key_given_in_the_environment(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "RESPONDER_SECRET_KEY": "given"}
    done = subprocess.run(
        [sys.executable, "-m", "responder", "rotate-secret"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "RESPONDER_PREVIOUS_SECRET_KEYS" in done.stderr


@pytest.mark.parametrize("grace", ["7"])
def test_the_command_rotates_a_stored_key(tmp_path: Path, grace: str) -> None:
    env = {"PATH": os.environ["PATH"]}
    subprocess.run([sys.executable, "-m", "responder", "db", "upgrade"], cwd=tmp_path, env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "responder", "rotate-secret", "--grace-days", grace],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    # No key was stored yet (serve stores it on first start): a clear error, exit code 2.
    assert done.returncode == 2 and "no secret key is stored" in done.stderr
