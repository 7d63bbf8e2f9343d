"""Promotion latency: from a purchase recorded over the API to the next layer's first mail at an
SMTP server, on an idle server and while a newsletter is being sent through the same server.

    .venv/bin/python bench/promotion.py [--messages 20000] [--promotions 200] [--interval-ms 50]
                                        [--dkim rsa|ed25519|none] [--database-url URL] [--full]
                                        [--json PATH]

A fresh database (SQLite by default) holds ``--messages`` active layer-1 readers tagged ``load``
and 2 × ``--promotions`` buyers in layer 1 with no tag and no enrollment, so every mail a buyer
receives is the mail of the promotion. Layer 1's rule is set to promote on a purchase
(``PATCH /api/v1/layers/1``, ``{"promote": {"on_any": ["purchase"]}}``); layer 2's first step
(``layer2-how-to``) is due at once (delay ``0s``). ``responder serve`` runs as a process, as in
production; an aiosmtpd server in a process of its own accepts every mail and notes the arrival
time of each buyer's.

1. Reference, idle server: ``POST /api/v1/events`` ``{"type": "purchase"}`` for the first
   half of the buyers, one every ``--interval-ms``; each latency is the mail's arrival minus the
   moment its POST was sent.
2. Under load: ``POST /api/v1/newsletters`` (``send_now``, layer 1, tag ``load``); once a tenth
   of it has arrived, the same purchases for the other half of the buyers while it goes out.

Prints p50, p99 and the slowest of both, the newsletter's own rate, and how much of it was still
to go when the last purchase was made. The engine wakes the scheduler at once; the step mail is
then one more row in the outbox, which workers claim ahead of the newsletter's rows (mail
that is not a newsletter goes first), so under load it waits for a claim, not for the
newsletter. ``--json PATH`` writes
``bench/suite.py``'s rows; ``--full`` is ``--messages 100000 --promotions 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from send import free_port
from sqlalchemy import insert, select
from suite import write_rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.app import start_runtime  # noqa: E402
from responder.delivery.dkim import generate_key, private_pem  # noqa: E402
from responder.models import Layer, Subscriber  # noqa: E402
from responder.settings import Settings  # noqa: E402

TOKEN = "bench"
WARMUP = 10  # purchases before the measured ones: render processes, signer, first ticks
RULE = {"promote": {"on_any": ["purchase"]}}


def sink_process(port: int, arrivals: Any, received: Any, ready: Any) -> None:
    """An aiosmtpd server that accepts everything; a buyer's arrival goes to ``arrivals``."""
    from aiosmtpd.controller import Controller

    class Recorder:
        async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
            now = time.time()
            for rcpt in envelope.rcpt_tos:
                if rcpt.startswith("buyer"):
                    arrivals.put((rcpt, now))
            with received.get_lock():
                received.value += 1
            return "250 OK"

    controller = Controller(Recorder(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


async def fill(settings: Settings, readers: int, buyers: int) -> None:
    """The readers and buyers, written directly: a list import is not what is measured."""
    rt = (await start_runtime(settings)).runtime
    try:
        now = rt.clock.now()
        async with rt.db.transaction() as session:
            layer = (await session.execute(select(Layer).order_by(Layer.position).limit(1))).scalar_one()
            people = [(f"reader{i}@example.org", ["load"]) for i in range(readers)]
            people += [(f"buyer{i}@example.org", []) for i in range(buyers)]
            for start in range(0, len(people), 10_000):
                await session.execute(
                    insert(Subscriber),
                    [
                        {
                            "email": email,
                            "name": email.split("@")[0].title(),
                            "status": "active",
                            "layer_id": layer.id,
                            "layer_entered_at": now,
                            "attributes": {},
                            "tags": tags,
                            "created_at": now,
                        }
                        for email, tags in people[start : start + 10_000]
                    ],
                )
    finally:
        await rt.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Bench:
    def __init__(self, base: str, arrivals: Any, received: Any) -> None:
        self.base = base
        self.arrivals, self.received = arrivals, received
        self.arrived: dict[str, float] = {}
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    async def api(self, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any]) -> Any:
        async with http.request(method, self.base + path, json=body, headers=self.headers) as response:
            if response.status >= 300:
                raise SystemExit(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json()

    def drain(self) -> None:
        while not self.arrivals.empty():
            rcpt, at = self.arrivals.get()
            self.arrived.setdefault(rcpt, at)

    async def promotions(
        self, http: aiohttp.ClientSession, buyers: range, interval_s: float, timeout_s: float
    ) -> tuple[list[float], list[float], int]:
        """Purchases at a steady pace; (latencies to arrival, POST answer times, mails received by
        the sink when the last purchase was posted)."""
        posted: dict[str, float] = {}
        answers: list[float] = []

        async def purchase(email: str) -> None:
            posted[email] = time.time()
            result = await self.api(http, "POST", "/api/v1/events", {"email": email, "type": "purchase"})
            answers.append(time.time() - posted[email])
            if result["promoted_to"] != 2:
                raise SystemExit(f"{email} was not promoted to layer 2: {result}")

        tasks = []
        for i in buyers:
            tasks.append(asyncio.create_task(purchase(f"buyer{i}@example.org")))
            await asyncio.sleep(interval_s)
        await asyncio.gather(*tasks)
        received_at_last = self.received.value
        deadline = time.monotonic() + timeout_s
        while not all(email in self.arrived for email in posted):
            if time.monotonic() > deadline:
                missing = len([e for e in posted if e not in self.arrived])
                raise SystemExit(f"{missing} of {len(posted)} promotion mails did not arrive in {timeout_s:.0f} s")
            await asyncio.sleep(0.05)
            self.drain()
        return [self.arrived[email] - at for email, at in posted.items()], answers, received_at_last


def summary(label: str, latencies: list[float], answers: list[float]) -> str:
    return (
        f"{label:<26} p50 {percentile(latencies, 0.5) * 1000:8.0f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:8.0f} ms"
        f"   max {max(latencies) * 1000:8.0f} ms   (POST answered: p50 {statistics.median(answers) * 1000:.0f} ms,"
        f" p99 {percentile(answers, 0.99) * 1000:.0f} ms)"
    )


async def main(args: argparse.Namespace) -> None:
    if args.full:
        args.messages, args.promotions = 100_000, 1_000
    work = Path(tempfile.mkdtemp(prefix="responder-bench-promotion-"))
    smtp_port, port = free_port(), free_port()
    env = {
        "RESPONDER_DATABASE_URL": args.database_url or f"sqlite+aiosqlite:///{work}/bench.db",
        "RESPONDER_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "RESPONDER_BASE_URL": f"http://127.0.0.1:{port}",
        "RESPONDER_PORT": str(port),
        "RESPONDER_FROM": "Acme <news@acme.example.com>",
        "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
        "RESPONDER_SECRET_KEY": "bench",
        "RESPONDER_ADMIN_TOKEN": TOKEN,
        "RESPONDER_WORKER_LANES": str(args.lanes),
        "RESPONDER_GOVERNOR_MX_LOOKUP": "off",
    }
    if args.dkim != "none":
        key_file = work / "dkim.pem"
        key_file.write_bytes(private_pem(generate_key(args.dkim)))
        env |= {"RESPONDER_DKIM_SELECTOR": "bench", "RESPONDER_DKIM_KEY_FILE": str(key_file)}
    t0 = time.perf_counter()
    buyers = WARMUP + 2 * args.promotions
    await fill(Settings.from_env(env), args.messages, buyers)
    print(f"{args.messages:,} readers and {buyers:,} buyers in {time.perf_counter() - t0:.1f} s")

    context = multiprocessing.get_context("spawn")
    arrivals, received, ready = context.Queue(), context.Value("q", 0), context.Event()
    sink = context.Process(target=sink_process, args=(smtp_port, arrivals, received, ready), daemon=True)
    sink.start()
    ready.wait(30)
    log = (work / "serve.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "responder", "serve"], env={**os.environ, **env}, stdout=log, stderr=log, cwd=ROOT
    )
    bench = Bench(f"http://127.0.0.1:{port}", arrivals, received)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(bench.base + "/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the server did not start:\n{(work / 'serve.log').read_text()[-3000:]}")
                await asyncio.sleep(0.2)
            await bench.api(http, "PATCH", "/api/v1/layers/1", {"rule": RULE})
            interval_s = args.interval_ms / 1000
            await bench.promotions(http, range(args.promotions * 2, buyers), interval_s, 120)
            idle, idle_answers, _ = await bench.promotions(http, range(args.promotions), interval_s, 120)
            print(summary("idle server", idle, idle_answers))

            body = {"name": "load", "template": "layer1-welcome", "layers": [1], "tags": ["load"], "send_now": True}
            before = received.value
            started = time.time()
            await bench.api(http, "POST", "/api/v1/newsletters", body)
            while received.value - before < args.messages // 10:
                if time.time() - started > args.timeout_s:
                    raise SystemExit("the newsletter did not start going out")
                await asyncio.sleep(0.05)
            warm = received.value - before
            loaded, loaded_answers, at_last = await bench.promotions(
                http, range(args.promotions, 2 * args.promotions), interval_s, args.timeout_s
            )
            while received.value - before < args.messages + args.promotions:
                if time.time() - started > args.timeout_s:
                    raise SystemExit(f"the newsletter did not finish: {received.value - before:,} mails arrived")
                await asyncio.sleep(0.05)
            newsletter_s = time.time() - started
    finally:
        server.terminate()
        server.wait(30)
        sink.terminate()
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    still = args.messages + args.promotions - (at_last - before)
    rate = args.messages / newsletter_s
    print(summary(f"during a {args.messages:,} newsletter", loaded, loaded_answers))
    print(
        f"the newsletter: {rate:,.0f} mails/s ({newsletter_s:.1f} s to the last mail); purchases began after "
        f"{warm:,} of it had arrived; at the last purchase {max(still, 0):,} mails were still to arrive"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; sink: aiosmtpd in its own process")
    if args.json:
        database = "PostgreSQL" if args.database_url and "postgresql" in args.database_url else "SQLite"
        setup = f"{args.promotions:,} purchases, one every {args.interval_ms} ms, {database}, {args.dkim} DKIM"
        extra = {
            "promotions": args.promotions,
            "messages": args.messages,
            "newsletter_msg_per_s": rate,
            "newsletter_left_at_last_purchase": max(still, 0),
            "post_p99_ms": {
                "idle": percentile(idle_answers, 0.99) * 1000,
                "load": percentile(loaded_answers, 0.99) * 1000,
            },
        }
        rows = [
            {
                "name": f"promotion to first mail, {label}, during a {args.messages:,}-mail newsletter ({setup})",
                "value": percentile(loaded, share) * 1000,
                "unit": "ms",
                "reference": percentile(idle, share) * 1000,
                "reference_name": "the same on an idle server",
                "ratio": percentile(loaded, share) / percentile(idle, share),
                "target": None,
                "value_name": "under load",
                **extra,
            }
            for label, share in (("p50", 0.5), ("p99", 0.99))
        ]
        write_rows(args.json, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="the newsletter's size: the load")
    parser.add_argument("--promotions", type=int, default=200, help="purchases measured, idle and under load each")
    parser.add_argument("--interval-ms", type=int, default=50, help="between two purchases")
    parser.add_argument("--lanes", type=int, default=8, help="RESPONDER_WORKER_LANES")
    parser.add_argument("--dkim", choices=("rsa", "ed25519", "none"), default="rsa")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--full", action="store_true", help="--messages 100000 --promotions 1000")
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    asyncio.run(main(parser.parse_args()))
