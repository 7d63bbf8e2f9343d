"""Sending throughput, end to end, against two bare aiosmtplib loops in the same run.

    .venv/bin/python bench/send.py [--messages 20000] [--lanes 8] [--dkim rsa|ed25519|none]
                                   [--sink aiosmtpd|smtp-sink] [--database-url URL]
                                   [--render-processes auto|N] [--json PATH]

A discarding SMTP sink runs in its own process: Postfix's ``smtp-sink`` when it is installed
(Debian package ``postfix``), else aiosmtpd's ``Sink`` handler, which caps near 1.5k msg/s and
would be what is measured above that. responder's real delivery worker sends N queued
newsletter mails to N subscribers — claim, render, MIME, DKIM, SMTP over the lanes, outbox
states. Two references then use the same number of connections to the same sink: a bare loop
sending N copies of one pre-built, pre-signed message (target ≥ 0.8× for unsigned mail, for
scale with DKIM), and a bare signing loop that DKIM-signs each copy of the pre-built, unsigned
message with the same key and ``DkimSigner`` (canonicalisation, body hash, signature, all in
process) before sending it: what signing costs done the plain way (target ≥ 0.9×). responder
renders, assembles and signs in its render processes (one per core), side by side with the
sending process. Prints the rates, the ratios and peak RSS;
``--json PATH`` writes them as rows of ``bench/suite.py``'s contract.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from sqlalchemy import func, insert, select
from suite import write_rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.app import start_runtime  # noqa: E402
from responder.delivery.build import build_mail  # noqa: E402
from responder.delivery.dkim import DkimSigner, generate_key, private_pem  # noqa: E402
from responder.delivery.transport import make_transport  # noqa: E402
from responder.delivery.worker import DeliveryWorker  # noqa: E402
from responder.models import Layer, Message, Newsletter, Subscriber  # noqa: E402
from responder.settings import Settings  # noqa: E402
from responder.templating.compile import compile_template  # noqa: E402
from responder.templating.store import add_version  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(kind: str, port: int) -> subprocess.Popen[bytes]:
    if kind == "smtp-sink":
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        command = (
            [binary, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"]
            if os.geteuid() == 0
            else [binary, "-c", f"127.0.0.1:{port}", "1000"]
        )
    else:
        command = [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"sink {kind} did not start")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s(but: int) -> float:
    """CPU seconds of this process's live children but one (the sink): the render processes."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(pid) for pid in (task / "children").read_text().split())
    return sum(process_cpu_s(pid) for pid in pids - {but})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MINIMAL_HTML = """<html><body><p>Hello {{ subscriber.first_name }},</p>
<p>This week: <a href="{{ sender.website }}/news">what is new</a>.</p>
<p><a href="{{ links.unsubscribe }}">Unsubscribe</a> · {{ sender.postal_address }}</p>
</body></html>"""
MINIMAL_TEXT = """Hello {{ subscriber.first_name }},
This week: {{ sender.website }}/news
Unsubscribe: {{ links.unsubscribe }}
"""


async def queue(rt, count: int, template: str) -> None:  # type: ignore[no-untyped-def]
    now = rt.clock.now()
    async with rt.db.transaction() as session:
        if template == "minimal":
            compiled = compile_template(MINIMAL_HTML, "News for {{ subscriber.first_name }}", "html", MINIMAL_TEXT)
            await add_version(session, "layer1-welcome", compiled, "educate", now)
        layer = (await session.execute(select(Layer).order_by(Layer.position).limit(1))).scalar_one()
        newsletter = Newsletter(
            name="bench",
            template_name="layer1-welcome",
            layer_ids=[layer.id],
            tags=[],
            state="sending",
            scheduled_at=None,
            created_at=now,
        )
        session.add(newsletter)
        await session.flush()
        await session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"reader{i}@example.org",
                    "name": f"Reader {i}",
                    "status": "active",
                    "layer_id": layer.id,
                    "layer_entered_at": now,
                    "attributes": {},
                    "tags": [],
                    "created_at": now,
                }
                for i in range(count)
            ],
        )
        ids = (await session.execute(select(Subscriber.id).order_by(Subscriber.id))).scalars()
        await session.execute(
            insert(Message),
            [
                {
                    "subscriber_id": sid,
                    "kind": "newsletter",
                    "newsletter_id": newsletter.id,
                    "template_name": "layer1-welcome",
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "message_id": f"<bench{sid}@acme.example.com>",
                    "created_at": now,
                }
                for sid in ids
            ],
        )


async def sent_count(rt) -> int:  # type: ignore[no-untyped-def]
    async with rt.db.read() as session:
        return (
            await session.execute(select(func.count()).select_from(Message).where(Message.state == "sent"))
        ).scalar_one()


def recorded_sent(worker: DeliveryWorker) -> float:
    """Sends the worker has recorded: its counter moves after each outcome's transaction commits,
    so reading it costs the measured loop nothing and never runs ahead of the database."""
    value = worker.metrics.registry.get_sample_value("responder_delivery_outcomes_total", {"outcome": "sent"})
    return value or 0.0


async def run_responder(rt, count: int, sink_pid: int):  # type: ignore[no-untyped-def]
    """Our rate, the message as the worker signed it, the unsigned message, the signer (None
    without DKIM) and the render processes' CPU seconds (they render, assemble and sign)."""
    async with rt.db.read() as session:  # one message as the bare loop will send it
        sample = (await session.execute(select(Message).limit(1))).scalar_one()
        built = await build_mail(rt, session, sample)
    transport = make_transport(rt.settings)
    worker = DeliveryWorker(rt, transport)
    unsigned = data = built.data
    if worker.signer is not None:
        data = worker.signer.sign(unsigned, int(time.time()))
    child0 = children_cpu_s(but=sink_pid)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    # Polling the worker's own counter, not the database: a count(*) every 50 ms in this event
    # loop took CPU from the worker being measured. The database is checked once at the end.
    while recorded_sent(worker) < count:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    child_s = children_cpu_s(but=sink_pid) - child0  # read while the render processes still run
    worker.stop()
    await task
    await transport.close()
    stored = await sent_count(rt)
    if stored != count:
        raise SystemExit(f"{stored} messages stored as sent, {count} expected")
    return count / elapsed, data, unsigned, worker.signer, child_s


async def run_bare(port: int, lanes: int, count: int, data: bytes, signer: DkimSigner | None = None) -> float:
    """Sends ``count`` copies of ``data``; with ``signer``, each copy is signed first, in this
    process, as code without a signing helper would."""
    remaining = iter(range(count))

    async def lane() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for i in remaining:
            mail = data if signer is None else signer.sign(data, int(time.time()))
            await client.sendmail("bounces@acme.example.com", [f"reader{i}@example.org"], mail)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    sink = start_sink(args.sink, port)
    workdir = Path(tempfile.mkdtemp(prefix="responder-bench-"))
    try:
        env = {
            "RESPONDER_DATABASE_URL": args.database_url or f"sqlite+aiosqlite:///{workdir}/b.db",
            "RESPONDER_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "RESPONDER_BASE_URL": "https://news.example.com",
            "RESPONDER_FROM": "Acme <news@acme.example.com>",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
            "RESPONDER_WORKER_LANES": str(args.lanes),
            "RESPONDER_WORKER_POLL_S": "0.05",
            "RESPONDER_WORKER_BATCH": str(args.batch),
            "RESPONDER_RENDER_PROCESSES": args.render_processes,
            "RESPONDER_INBOUND": "127.0.0.1:1",  # Reply-To and mailto headers, as in production
        }
        if args.dkim != "none":
            key_file = workdir / "dkim.pem"
            key_file.write_bytes(private_pem(generate_key(args.dkim)))
            env |= {"RESPONDER_DKIM_SELECTOR": "bench", "RESPONDER_DKIM_KEY_FILE": str(key_file)}
        started = await start_runtime(Settings.from_env(env))
        rt = started.runtime
        t0 = time.perf_counter()
        await queue(rt, args.messages, args.template)
        print(
            f"queued {args.messages} messages in {time.perf_counter() - t0:.1f} s "
            f"({rt.db.dialect}); sink {args.sink} in its own process; {args.lanes} lanes; "
            f"DKIM {args.dkim}; template {args.template}"
        )
        cpu0, sink0 = cpu_s(), process_cpu_s(sink.pid)
        ours, data, unsigned, signer, child_s = await run_responder(rt, args.messages, sink.pid)
        cpu1, sink1 = cpu_s(), process_cpu_s(sink.pid)
        ours_rss = peak_rss_mb()
        await rt.close()
        cpu2, sink2 = cpu_s(), process_cpu_s(sink.pid)
        bare = await run_bare(port, args.lanes, args.messages, data)
        cpu3, sink3 = cpu_s(), process_cpu_s(sink.pid)
        signing = await run_bare(port, args.lanes, args.messages, unsigned, signer) if signer else None
        cpu4 = cpu_s()
        per = 1000 / args.messages
        ours_cpu_ms, bare_cpu_ms = (cpu1 - cpu0) * per, (cpu3 - cpu2) * per
        print(f"message size           {len(data):>8} bytes")
        print(
            f"responder end to end   {ours:>8.0f} msg/s   {ours_cpu_ms:.2f} ms CPU/msg   (peak RSS {ours_rss:.0f} MB)"
        )
        print(f"bare aiosmtplib loop   {bare:>8.0f} msg/s   {bare_cpu_ms:.2f} ms CPU/msg")
        print(
            f"ratio                  {ours / bare:>8.2f}x  "
            + ("(target ≥ 0.8x)" if args.dkim == "none" else "(for scale)")
        )
        if signing is not None:
            print(
                f"bare signing loop      {signing:>8.0f} msg/s   {(cpu4 - cpu3) * per:.2f} ms CPU/msg  "
                f"(DkimSigner.sign in process, then send)"
            )
            print(f"ratio                  {ours / signing:>8.2f}x  (target ≥ 0.9x)")
        print(
            f"CPU per message, ms    responder: sender {ours_cpu_ms:.2f} + render processes "
            f"{child_s * per:.2f} + sink {(sink1 - sink0) * per:.2f};  "
            f"bare: sender {bare_cpu_ms:.2f} + sink {(sink3 - sink2) * per:.2f}"
        )
        if args.json:
            what = f"{args.dkim} DKIM" if args.dkim != "none" else "no DKIM"
            setup = f"{args.messages:,} mails, {what}, {args.sink}, {args.lanes} lanes, {rt.db.dialect}"
            extra = {
                "sink": args.sink,
                "messages": args.messages,
                "lanes": args.lanes,
                "dkim": args.dkim,
                "message_bytes": len(data),
                "cpu_ms_per_msg": {
                    "sender": ours_cpu_ms,
                    "render_processes": child_s * per,
                    "sink": (sink1 - sink0) * per,
                    "bare_sender": bare_cpu_ms,
                    "bare_signing_sender": (cpu4 - cpu3) * per if signing is not None else None,
                },
                "peak_rss_mb": ours_rss,
            }
            rows = [
                {
                    "name": f"send end to end ({setup}) vs bare loop of pre-signed bytes",
                    "value": ours,
                    "unit": "msg/s",
                    "reference": bare,
                    "reference_name": "bare aiosmtplib loop, pre-signed",
                    "ratio": ours / bare,
                    # Against unsigned bytes the target holds for unsigned mail only; signed
                    # mail is judged against the signing loop below, this row gives the scale.
                    "target": ">= 0.8" if args.dkim == "none" else None,
                    **extra,
                }
            ]
            if signing is not None:
                rows.append(
                    {
                        "name": f"send end to end ({setup}) vs bare signing loop",
                        "value": ours,
                        "unit": "msg/s",
                        "reference": signing,
                        "reference_name": "bare loop, DkimSigner.sign per mail",
                        "ratio": ours / signing,
                        "target": ">= 0.9",
                        **extra,
                    }
                )
            write_rows(args.json, rows)
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument(
        "--batch",
        type=int,
        default=Settings.worker_batch,
        help="messages one worker has claimed at most (RESPONDER_WORKER_BATCH)",
    )
    parser.add_argument(
        "--render-processes",
        default="auto",
        help="RESPONDER_RENDER_PROCESSES: auto (one per core) or a number; 0 renders in a thread",
    )
    parser.add_argument("--dkim", choices=("rsa", "ed25519", "none"), default="rsa")
    parser.add_argument(
        "--sink",
        choices=("aiosmtpd", "smtp-sink"),
        default="smtp-sink" if shutil.which("smtp-sink") or Path("/usr/sbin/smtp-sink").exists() else "aiosmtpd",
        help="default: smtp-sink when installed (package postfix), else aiosmtpd",
    )
    parser.add_argument(
        "--template",
        choices=("starter", "minimal"),
        default="starter",
        help="starter: the layer-1 welcome (MJML, text part derived from HTML); "
        "minimal: a short HTML template with its own text part",
    )
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    asyncio.run(main(parser.parse_args()))
