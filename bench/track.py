"""Open-pixel throughput: a real ``responder serve`` against a bare aiohttp handler, same run.

    .venv/bin/python bench/track.py [--seconds 10] [--rounds 5] [--connections 64] [--threads 2]
                                    [--messages 1000] [--prefill 0] [--json PATH]

Needs ``wrk`` (Debian package ``wrk``). Builds a fresh SQLite database with ``--messages`` sent
mails (one subscriber each), starts ``responder serve`` on it, and runs wrk over their ``/o/``
URLs with a browser User-Agent (so events take the human path, promotion included), and wrk
against a bare aiohttp process answering the same 43-byte GIF. The two alternate for
``--rounds`` rounds (the machine's speed drifts; alternating spreads the drift over both) and
it prints each round, the median ratio (target >= 0.6), p99 latencies, errors, and how long
after each load stopped every recorded event was on disk (target <= 1 s). ``--prefill N`` writes
N earlier opens first, spread over the mails, to measure against a table of a long-running list
(index inserts cost more as the table grows). ``--json PATH`` writes the median round as rows of
``bench/suite.py``'s contract.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from suite import write_rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.app import start_runtime  # noqa: E402
from responder.clock import SystemClock  # noqa: E402
from responder.models import Layer, Message, Subscriber  # noqa: E402
from responder.settings import Settings  # noqa: E402
from responder.tracking.tokens import Tokens  # noqa: E402

SECRET = "bench-secret-key"
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
BARE = """
import sys
from aiohttp import web
GIF = (b"GIF89a\\x01\\x00\\x01\\x00\\x80\\x00\\x00\\x00\\x00\\x00\\xff\\xff\\xff!\\xf9\\x04\\x01\\x00\\x00\\x00\\x00"
       b",\\x00\\x00\\x00\\x00\\x01\\x00\\x01\\x00\\x00\\x02\\x02D\\x01\\x00;")
async def pixel(request):
    return web.Response(body=GIF, content_type="image/gif",
                        headers={"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0"})
app = web.Application()
app.router.add_get("/o/{token}", pixel)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def prepare(db_path: Path, messages: int) -> list[str]:
    """A migrated, seeded database with ``messages`` sent mails; their open-pixel paths."""
    settings = Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
            "RESPONDER_SECRET_KEY": SECRET,
            "RESPONDER_ADMIN_TOKEN": "bench",
        }
    )
    rt = (await start_runtime(settings)).runtime
    now = dt.datetime.now(dt.UTC)
    sent_at = now - dt.timedelta(hours=1)
    async with rt.db.transaction() as session:
        from sqlalchemy import select

        layer = (await session.execute(select(Layer).where(Layer.position == 1))).scalar_one()
        subscribers = [
            Subscriber(
                email=f"reader{i}@example.com",
                name=f"Reader {i}",
                status="active",
                layer_id=layer.id,
                layer_entered_at=sent_at,
                attributes={},
                tags=[],
                created_at=sent_at,
                confirmed_at=sent_at,
            )
            for i in range(messages)
        ]
        session.add_all(subscribers)
        await session.flush()
        rows = [
            Message(
                subscriber_id=s.id,
                kind="newsletter",
                template_name="layer1-welcome",
                state="sent",
                attempts=1,
                next_attempt_at=sent_at,
                message_id=f"<bench{s.id}@example.com>",
                created_at=sent_at,
                sent_at=sent_at,
            )
            for s in subscribers
        ]
        session.add_all(rows)
        await session.flush()
        ids = [m.id for m in rows]
    await rt.close()
    tokens = Tokens(SECRET, SystemClock(), 3600)
    return [f"/o/{tokens.open(i)}" for i in ids]


def prefill(db_path: Path, events: int) -> None:
    """``events`` earlier human opens of the bench's mails, written straight to the file."""
    with sqlite3.connect(db_path) as conn:
        pairs = conn.execute("SELECT id, subscriber_id FROM messages ORDER BY id").fetchall()
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=50)
        for done in range(0, events, 100_000):
            rows = []
            for i in range(done, min(events, done + 100_000)):
                message, subscriber = pairs[i % len(pairs)]
                at = (start + dt.timedelta(microseconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
                rows.append((subscriber, message, "open", "127.0.0.1", AGENT, 0, "{}", at))
            conn.executemany(
                "INSERT INTO events (subscriber_id, message_id, type, ip, user_agent,"
                " machine, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.commit()


def wrk(url: str, lua: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(lua),
            "-H",
            f"User-Agent: {AGENT}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        match = re.search(pattern, out)
        if match:
            errors += sum(int(g) for g in match.groups())
    return {"rps": rps, "total": total, "p99_ms": p99_ms, "errors": errors}


def count_events(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE type = 'open'").fetchone()[0])


def wait_for_events(db_path: Path, total: int, timeout_s: float = 10) -> float | None:
    """Seconds until ``total`` open events are on disk, or None if they are not within the timeout."""
    stopped = time.monotonic()
    while time.monotonic() - stopped < timeout_s:
        if count_events(db_path) >= total:
            return time.monotonic() - stopped
        time.sleep(0.02)
    return None


def tracking_dropped(url: str) -> int:
    """Events the server's tracking queue refused because it was full (from /metrics)."""
    request = urllib.request.Request(url, headers={"Authorization": "Bearer bench"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    match = re.search(r'^responder_tracking_events\{outcome="dropped"\} ([\d.e+]+)$', text, re.M)
    return int(float(match.group(1))) if match else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--prefill", type=int, default=0, help="earlier events already stored")
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench/track.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="responder-bench-"))
    db_path = work / "bench.db"
    paths = asyncio.run(prepare(db_path, args.messages))
    if args.prefill:
        started = time.monotonic()
        prefill(db_path, args.prefill)
        print(f"prefilled {args.prefill} events in {time.monotonic() - started:.0f} s", flush=True)
    lua = work / "paths.lua"
    lua.write_text(
        "local paths = {\n" + ",\n".join(f'"{p}"' for p in paths) + "\n}\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(#paths)])\nend\n"
    )
    port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "RESPONDER_SECRET_KEY": SECRET,
        "RESPONDER_ADMIN_TOKEN": "bench",
        "RESPONDER_SMTP_URL": f"file:{work / 'outbox'}",
        "RESPONDER_PORT": str(port),
    }
    env.update(dict(item.split("=", 1) for item in os.environ.get("BENCH_ENV", "").split() if item))
    responder_bin = Path(sys.executable).with_name("responder")
    server = subprocess.Popen(
        [str(responder_bin), "serve"], env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
    rounds = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{bare_port}{paths[0]}")
        before = count_events(db_path)
        requested = 0  # requests answered by responder so far, all rounds

        def load(target_port: int) -> dict[str, float]:
            return wrk(f"http://127.0.0.1:{target_port}", lua, args.seconds, args.connections, args.threads)

        for n in range(args.rounds):
            bare_first = n % 2 == 0  # alternate which server goes first
            if bare_first:
                reference = load(bare_port)
            ours = load(port)
            requested += int(ours["total"])
            on_disk_after_s = wait_for_events(db_path, before + requested)
            if not bare_first:
                reference = load(bare_port)
            rounds.append((reference, ours, on_disk_after_s))
            print(
                f"round {n + 1}: bare {reference['rps']:8.0f} req/s  responder {ours['rps']:8.0f} req/s"
                f"  ratio {ours['rps'] / reference['rps']:.2f}",
                flush=True,
            )
        recorded = count_events(db_path) - before
        dropped = tracking_dropped(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.terminate()
        bare.terminate()
        server.wait(30)
        bare.wait(30)
    by_ratio = sorted(rounds, key=lambda r: r[1]["rps"] / r[0]["rps"])
    reference, ours, _ = by_ratio[len(by_ratio) // 2]
    ratio = ours["rps"] / reference["rps"]
    errors = sum(int(r[1]["errors"]) for r in rounds)
    waits = [r[2] for r in rounds]
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s over {len(paths)} open URLs, "
        f"{args.rounds} alternating rounds; median round:"
    )
    print(
        f"bare aiohttp GIF handler: {reference['rps']:10.0f} req/s  p99 {reference['p99_ms']:.2f} ms"
        f"  errors {reference['errors']}"
    )
    print(f"responder serve /o/:      {ours['rps']:10.0f} req/s  p99 {ours['p99_ms']:.2f} ms  errors {ours['errors']}")
    print(f"ratio responder/bare:     {ratio:10.2f}  (target >= 0.60)")
    all_on_disk = all(w is not None for w in waits)
    slowest = max((w for w in waits if w is not None), default=0.0)
    print(
        f"events: {requested} requests, {recorded} recorded, {dropped} dropped by a full queue, "
        f"{errors} errors in all rounds; "
        + (
            f"all on disk at most {slowest * 1000:.0f} ms after each load stopped"
            if all_on_disk
            else "NOT all on disk within 10 s"
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    ok = ratio >= 0.6 and errors == 0 and dropped == 0 and all_on_disk and slowest <= 1
    if args.json:
        setup = f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, median of {args.rounds} rounds"
        write_rows(
            args.json,
            [
                {
                    "name": f"open pixel /o/ under load ({setup})",
                    "value": ours["rps"],
                    "unit": "req/s",
                    "value_name": "responder serve /o/",
                    "reference": reference["rps"],
                    "reference_name": "bare aiohttp GIF handler",
                    "ratio": ratio,
                    "target": ">= 0.6",
                    "rounds": [r[1]["rps"] / r[0]["rps"] for r in rounds],
                    "p99_ms": ours["p99_ms"],
                    "reference_p99_ms": reference["p99_ms"],
                },
                {
                    "name": "open events on disk after the load stopped (slowest round)",
                    "value": slowest * 1000 if all_on_disk else float("inf"),
                    "unit": "ms",
                    "reference": None,
                    "ratio": None,
                    "target": "<= 1000 ms, none dropped, no errors",
                    "met": all_on_disk and slowest <= 1 and errors == 0 and dropped == 0,
                    "requests": requested,
                    "recorded": recorded,
                    "dropped": dropped,
                    "errors": errors,
                },
            ],
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
