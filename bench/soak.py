"""A soak: one newsletter to a large list through an SMTP server that misbehaves, while
``responder serve`` is killed with SIGKILL again and again. At the end every message must be in
a final state and the counts must add up.

    .venv/bin/python bench/soak.py [--messages 100000] [--kills 10] [--every 15] [--batch 50]

What it does, as a user would:

1. ``responder subscribers import`` of ``--messages`` addresses (CSV, one consent source) into a
   fresh SQLite database, then ``responder serve`` and ``POST /api/v1/newsletters`` with
   ``send_now`` to layer 1.
2. The SMTP server (here, plain asyncio) answers by the recipient's local part, as real servers
   do to real lists:

   ========  =====  =========================================  ==================
   prefix    share  answer                                      expected end
   ========  =====  =========================================  ==================
   bad       1 %    ``550 5.1.1`` at RCPT, every time            bounced
   full      0.5 %  ``552 5.2.2`` at RCPT, first try only        sent (after retry)
   temp      1 %    ``451 4.3.0`` at RCPT, first try only        sent (after retry)
   blocked   0.5 %  ``554 5.7.1 … spamhaus`` after DATA, first   sent (after retry)
   content   0.2 %  ``554 5.6.0`` after DATA, every time         failed
   drop      0.3 %  connection dropped after the final dot,      sent; may arrive twice
                    first try only (the mail was received)
   ========  =====  =========================================  ==================

3. Every ``--every`` seconds the server process is SIGKILLed and started again, ``--kills``
   times; then it runs until no message is queued, sending or deferred.

It prints the final states against the expected ones, Message-IDs accepted (250) more than once,
and the messages lost (expected sent, never accepted): must be 0. Retries wait
``RESPONDER_RETRY_FIRST_S=5`` here instead of 5 minutes, and the domain pause after policy
refusals is set out of reach, so the run ends in minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SHARES = (("bad", 100), ("full", 50), ("temp", 100), ("blocked", 50), ("content", 20), ("drop", 30))  # per 10,000
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kind_of(local: str) -> str:
    return re.sub(r"\d+$", "", local)


def addresses(count: int) -> list[str]:
    """``count`` addresses over 400 domains, the faulty ones spread evenly by their shares."""
    out = []
    for i in range(count):
        slot = i % 10_000
        kind = "ok"
        edge = 0
        for name, share in SHARES:
            if edge <= slot < edge + share:
                kind = name
                break
            edge += share
        out.append(f"{kind}{i}@d{i % 400}.example")
    return out


class Sink:
    """A small SMTP server answering by the recipient's local part (see the module's table)."""

    def __init__(self) -> None:
        self.tries: Counter[str] = Counter()
        self.accepted: Counter[bytes] = Counter()  # Message-ID → times answered 250
        self.received = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        rcpt = ""
        try:
            say("220 soak.test ESMTP")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    say("250-soak.test")
                    say("250 8BITMIME")
                elif verb == b"MAIL":
                    say("250 2.1.0 ok")
                elif verb == b"RCPT":
                    rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                    kind = kind_of(rcpt.split("@")[0])
                    self.tries[rcpt] += 1
                    first = self.tries[rcpt] == 1
                    if kind == "bad":
                        say(f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
                    elif kind == "full" and first:
                        say("552 5.2.2 Mailbox full")
                    elif kind == "temp" and first:
                        say("451 4.3.0 Temporary lookup failure")
                    else:
                        say("250 2.1.5 ok")
                elif verb == b"DATA":
                    say("354 end with .")
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    self.received += 1
                    found = MESSAGE_ID.search(data)
                    message_id = found.group(1) if found else b""
                    kind = kind_of(rcpt.split("@")[0])
                    first = self.tries[rcpt] == 1
                    if kind == "drop" and first:
                        writer.close()  # received, never answered: the sender must try again
                        return
                    if kind == "blocked" and first:
                        say("554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org")
                    elif kind == "content":
                        say("554 5.6.0 Message content rejected")
                    else:
                        self.accepted[message_id] += 1
                        say("250 2.0.0 queued")
                elif verb == b"RSET":
                    say("250 2.0.0 ok")
                elif verb == b"NOOP":
                    say("250 2.0.0 ok")
                elif verb == b"QUIT":
                    say("221 2.0.0 bye")
                    await writer.drain()
                    break
                else:
                    say("502 5.5.2 not implemented")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM messages WHERE kind = 'newsletter' GROUP BY state"))


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between kills")
    parser.add_argument("--batch", type=int, default=50, help="RESPONDER_WORKER_BATCH")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    sink = Sink()
    smtp_port = free_port()
    server = await asyncio.start_server(sink.session, "127.0.0.1", smtp_port)
    work = Path(tempfile.mkdtemp(prefix="responder-soak-"))
    db = work / "soak.db"
    port = free_port()
    env = {
        **os.environ,
        "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "RESPONDER_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "RESPONDER_BASE_URL": f"http://127.0.0.1:{port}",
        "RESPONDER_PORT": str(port),
        "RESPONDER_FROM": "Soak <news@soak.example>",
        "RESPONDER_POSTAL_ADDRESS": "1 Test Street",
        "RESPONDER_SECRET_KEY": "soak-secret",
        "RESPONDER_ADMIN_TOKEN": "soak-admin",
        "RESPONDER_WORKER_BATCH": str(args.batch),
        "RESPONDER_LEASE_S": "10",
        "RESPONDER_RETRY_FIRST_S": "5",
        "RESPONDER_BLOCKED_PAUSE_AFTER": "1000000",
        "RESPONDER_GOVERNOR_MX_LOOKUP": "off",
    }
    listing = addresses(args.messages)
    expected = Counter({"bad": "bounced", "content": "failed"}.get(kind_of(a.split("@")[0]), "sent") for a in listing)
    with (work / "list.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name"])
        writer.writerows([a, "Reader"] for a in listing)
    started = time.monotonic()
    subprocess.run(
        [PYTHON, "-m", "responder", "subscribers", "import", str(work / "list.csv"), "--consent-source", "soak"]
        + ["--enroll", "none", "--quiet"],
        env=env,
        check=True,
        cwd=ROOT,
    )
    print(f"imported {args.messages:,} in {time.monotonic() - started:.0f} s", flush=True)
    log = (work / "serve.log").open("ab")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([PYTHON, "-m", "responder", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT)

    process = spawn()
    await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/newsletters",
        data=json.dumps({"name": "Soak", "template": "layer1-welcome", "layers": [1], "send_now": True}).encode(),
        headers={"Authorization": "Bearer soak-admin", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=60).read()
    began = time.monotonic()
    kills = 0
    while kills < args.kills:
        await asyncio.sleep(args.every)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        state = counts(db)
        print(f"kill {kills}: accepted {sum(sink.accepted.values()):,}, states {state}", flush=True)
        process = spawn()
    deadline = time.monotonic() + args.timeout
    while True:
        await asyncio.sleep(2)
        state = counts(db)
        if sum(state.values()) >= args.messages and not set(state) & {"queued", "sending", "deferred"}:
            break
        if time.monotonic() > deadline:
            print(f"timed out: {state}")
            break
    elapsed = time.monotonic() - began
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 30)  # the sink in this loop must answer its QUIT
    server.close()

    with sqlite3.connect(db) as conn:
        sent_ids = {row[0].encode() for row in conn.execute("SELECT message_id FROM messages WHERE state = 'sent'")}
        statuses = dict(conn.execute("SELECT status, count(*) FROM subscribers GROUP BY status"))
    accepted = set(sink.accepted)
    lost = len(sent_ids - accepted)
    twice = sum(1 for n in sink.accepted.values() if n > 1)
    extra = sum(n - 1 for n in sink.accepted.values())
    drops = sum(1 for a in listing if a.startswith("drop"))
    print()
    print(f"messages {args.messages:,}, kills {kills}, {elapsed:.0f} s from the newsletter to the last final state")
    print(f"{'state':10} {'expected':>10} {'found':>10}")
    for name in ("sent", "bounced", "failed", "queued", "sending", "deferred"):
        print(f"{name:10} {expected.get(name, 0):10,} {state.get(name, 0):10,}")
    print(f"subscribers by status: {statuses}")
    print(f"accepted (250) Message-IDs: {len(accepted):,}; accepted more than once: {twice} ({extra} extra copies)")
    print(f"  bound: drops after the dot ({drops}) + kills x batch ({kills} x {args.batch} = {kills * args.batch})")
    print(f"lost (recorded sent, never accepted): {lost}")
    ok = (
        dict(expected) == {k: v for k, v in state.items() if v}
        and lost == 0
        and accepted >= sent_ids
        and extra <= drops + kills * args.batch
    )
    print("OK" if ok else "FAILED")
    log.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
