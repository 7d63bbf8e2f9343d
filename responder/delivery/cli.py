"""The ``responder delivery`` and ``responder dkim`` commands."""

from __future__ import annotations

import os
from pathlib import Path

from ..clock import utcnow
from ..db import Database
from ..errors import ConfigError
from ..settings import Settings
from .controls import pause_state, queue_depth, set_paused
from .dkim import dns_record, generate_key, private_pem


async def delivery_command(settings: Settings, action: str, reason: str = "") -> int:
    db = Database(settings.database_url)
    try:
        await db.migrate()
        if action == "status":
            state = await pause_state(db)
        else:
            state = await set_paused(db, action == "pause", utcnow(), reason)
        queue = await queue_depth(db)
    finally:
        await db.dispose()
    since = f" since {state.since.isoformat(timespec='seconds')}" if state.since else ""
    word = "paused" if state.paused else "running"
    print(f"sending is {word}{since}" + (f" ({state.reason})" if state.reason else ""))
    print("outbox: " + (", ".join(f"{k} {v}" for k, v in sorted(queue.items())) or "empty"))
    return 0


def dkim_keygen(settings: Settings, *, out: str, selector: str, domain: str | None, algorithm: str) -> int:
    path = Path(out)
    if path.exists():
        raise ConfigError(f"{path} exists; not overwriting a key that may be published")
    key = generate_key(algorithm)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem(key))
    signing_domain = settings.dkim_domain or settings.sender_domain
    domain = domain or signing_domain
    record = dns_record(key)
    # TXT strings are at most 255 characters each; resolvers join them.
    chunks = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
    print(f"wrote {path} ({algorithm}); publish this DNS record:\n")
    print(f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )\n")
    if settings.dkim_selector and settings.dkim_key_file and domain == signing_domain:  # beside the keys set
        print(
            f"then list it after the key(s) already set, to sign with each: "
            f"RESPONDER_DKIM_SELECTOR={settings.dkim_selector},{selector} "
            f"RESPONDER_DKIM_KEY_FILE={settings.dkim_key_file},{path.resolve()}"
        )
        return 0
    print(
        f"then set RESPONDER_DKIM_SELECTOR={selector} RESPONDER_DKIM_KEY_FILE={path.resolve()}"
        + (f" RESPONDER_DKIM_DOMAIN={domain}" if domain != settings.sender_domain else "")
    )
    other = "ed25519" if algorithm == "rsa" else "rsa"
    print(
        f"\nA second key signs beside it (one DKIM-Signature each; Ed25519 is small and fast, but not every "
        f"verifier knows it yet, so RSA stays): `responder dkim keygen --algorithm {other} --selector "
        f"{selector}-{other} --out FILE`, then list both, comma-separated in the same order, in "
        f"RESPONDER_DKIM_SELECTOR and RESPONDER_DKIM_KEY_FILE."
    )
    return 0
