"""Send throughput with 1, 2 and 4 ``responder worker`` processes on one PostgreSQL database,
and what each mail costs the database.

    .venv/bin/python bench/workers.py [--messages 20000] [--workers 1,2,4] [--lanes 8]
                                      [--dkim rsa|ed25519|none] [--pg postgresql://postgres@127.0.0.1:5432]
                                      [--json PATH]

For each K: a fresh PostgreSQL database (created, dropped at the end) gets N queued newsletter
mails for N subscribers while sending is paused (``delivery_controls``), K ``responder worker``
processes start and connect, then sending is resumed and the clock runs until no message is
queued, sending or deferred (one cheap ``EXISTS`` every 0.1 s, subtracted from the figures).
Postfix's ``smtp-sink`` discards the mail in its own process. Reference in the same run: a bare
aiosmtplib loop sending N copies of one pre-built, pre-signed message to the same sink over the
same number of connections (K × lanes), as ``bench/send.py`` does.

The database's share, per mail: ``pg_stat_database`` deltas (commits, rows inserted, updated,
fetched), WAL bytes (``pg_current_wal_lsn``; server-wide), and the CPU of the PostgreSQL
processes from ``/proc`` — the backends of the workers' connections and the background
processes (WAL writer, checkpointer, autovacuum…) — beside the CPU of the workers themselves
(each worker with its render processes, which also sign). Divided into a core, the database CPU per
mail says how many mails/s one PostgreSQL could carry for many hosts of workers.

On a 2-core machine the workers, their render processes, PostgreSQL and the sink
share two cores: K=4 cannot be 4× K=1, and K=2 shows what spreading rendering over the second
core buys, not how far many hosts go. ``--json PATH`` writes ``bench/suite.py``'s rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from send import cpu_s, free_port, process_cpu_s, queue, run_bare, start_sink
from sqlalchemy import select
from suite import write_rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.app import start_runtime  # noqa: E402
from responder.delivery.build import build_mail, setup_of  # noqa: E402
from responder.delivery.controls import set_paused  # noqa: E402
from responder.delivery.dkim import generate_key, private_pem, signer_from_settings  # noqa: E402
from responder.models import Message  # noqa: E402
from responder.settings import Settings  # noqa: E402

POLL_S = 0.1
STATS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched", "tup_returned")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (its render processes)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += process_cpu_s(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return total


@dataclass
class Snapshot:
    stats: dict[str, int]
    wal_lsn: str
    backends_cpu: dict[int, float]  # pid → CPU seconds of the workers' backends
    background_cpu: dict[int, float]  # pid → CPU seconds of WAL writer, checkpointer, autovacuum…
    workers_cpu: float
    sink_cpu: float
    at: float = field(default_factory=time.perf_counter)


async def postgres_pids(conn: asyncpg.Connection, database: str) -> tuple[list[int], list[int]]:
    """The backends serving this database but our own; the server's background processes
    (shared with whatever else the server does)."""
    rows = await conn.fetch(
        "SELECT pid, backend_type = 'client backend' AS backend FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND (datname = $1 OR backend_type <> 'client backend')",
        database,
    )
    return [r["pid"] for r in rows if r["backend"]], [r["pid"] for r in rows if not r["backend"]]


async def snapshot(
    conn: asyncpg.Connection, database: str, workers: list[subprocess.Popen[bytes]], sink_pid: int
) -> Snapshot:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(f"SELECT {', '.join(STATS)} FROM pg_stat_database WHERE datname = $1", database)
    wal = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    backends, background = await postgres_pids(conn, database)
    return Snapshot(
        stats=dict(row),
        wal_lsn=wal,
        backends_cpu={pid: process_cpu_s(pid) for pid in backends},
        background_cpu={pid: process_cpu_s(pid) for pid in background},
        workers_cpu=sum(tree_cpu_s(w.pid) for w in workers),
        sink_cpu=process_cpu_s(sink_pid),
    )


def pg_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the PostgreSQL processes spent between two snapshots; a process that started in
    between counts whole (an autovacuum worker that came and went in between is missed)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def sample_bytes(rt) -> bytes:  # type: ignore[no-untyped-def]
    """One of the queued mails, built and signed as a worker would: what the bare loop sends."""
    async with rt.db.read() as session:
        message = (await session.execute(select(Message).limit(1))).scalar_one()
        return (await build_mail(rt, session, message, setup=setup_of(rt, signer_from_settings(rt.settings)))).data


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "responder", "worker"], env=env, stdout=out, stderr=out, cwd=ROOT
        )


def tails(logs: list[Path]) -> str:
    return "\n".join(f"{log.name}: {log.read_text()[-1500:]}" for log in logs)


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def run(args: argparse.Namespace, k: int, port: int, sink_pid: int, workdir: Path) -> dict[str, Any]:
    database = f"bench_workers_{k}_{os.getpid()}"
    admin = await asyncpg.connect(f"{args.pg}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
    await admin.execute(f'CREATE DATABASE "{database}"')
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            "RESPONDER_DATABASE_URL": f"{args.pg.replace('postgresql://', 'postgresql+asyncpg://')}/{database}",
            "RESPONDER_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "RESPONDER_BASE_URL": "https://news.example.com",
            "RESPONDER_FROM": "Acme <news@acme.example.com>",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
            "RESPONDER_WORKER_LANES": str(args.lanes),
            "RESPONDER_WORKER_POLL_S": str(POLL_S),
            "RESPONDER_WORKER_BATCH": str(args.batch),
            "RESPONDER_RENDER_PROCESSES": args.render_processes,
            "RESPONDER_INBOUND": "127.0.0.1:1",  # Reply-To and mailto headers, as in production
        }
        if args.dkim != "none":
            key_file = workdir / f"dkim-{args.dkim}.pem"
            if not key_file.exists():
                key_file.write_bytes(private_pem(generate_key(args.dkim)))
            env |= {"RESPONDER_DKIM_SELECTOR": "bench", "RESPONDER_DKIM_KEY_FILE": str(key_file)}
        rt = (await start_runtime(Settings.from_env(env))).runtime
        t0 = time.perf_counter()
        await set_paused(rt.db, True, rt.clock.now(), "bench/workers.py: filling the outbox")
        await queue(rt, args.messages, "starter")
        data = await sample_bytes(rt)
        await rt.close()
        conn = await asyncpg.connect(f"{args.pg}/{database}")
        # The completion poll below must not scan the table (statistics taken while every row is
        # queued make a scan that stops at the first match look free): its rows would count as
        # the workers' in pg_stat_database.
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("ANALYZE")  # as autovacuum would have by then: the claim's plan
        print(f"K={k}: queued {args.messages:,} mails in {time.perf_counter() - t0:.1f} s; starting {k} workers")

        logs = [workdir / f"worker-{k}-{i}.log" for i in range(k)]
        workers = [spawn({**os.environ, **env}, log) for log in logs]
        deadline = time.monotonic() + 90
        # Each worker started and polling (paused): start-up is not measured.
        while not all("responder worker running" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise SystemExit(f"workers did not start:\n{logs[0].read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)

        before = await snapshot(conn, database, workers, sink_pid)
        await conn.execute("UPDATE delivery_controls SET value = '0' WHERE name = 'paused'")
        started = time.perf_counter()
        polls = 0
        # Two index look-ups (the due rows' partial index, in-flight rows by state): a scan of
        # the table here would show in the figures as the workers' cost.
        while await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE state IN ('queued', 'deferred'))"
            " OR EXISTS (SELECT 1 FROM messages WHERE state = 'sending')"
        ):
            polls += 1
            if time.perf_counter() - started > args.timeout_s or any(w.poll() is not None for w in workers):
                raise SystemExit(f"K={k}: not done in time or a worker died:\n{tails(logs)}")
            await asyncio.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        after = await snapshot(conn, database, workers, sink_pid)
        stop(workers)  # the backends' last stats reach pg_stat_database when they disconnect
        await asyncio.sleep(1.0)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        final = dict(
            await conn.fetchrow(f"SELECT {', '.join(STATS)} FROM pg_stat_database WHERE datname = $1", database)
        )
        states = dict(await conn.fetch("SELECT state, count(*) FROM messages GROUP BY state"))
        errors = await conn.fetch(
            "SELECT left(last_error, 160) AS error, count(*) FROM messages WHERE state <> 'sent' GROUP BY 1"
        )
        messages_bytes = await conn.fetchval("SELECT pg_total_relation_size('messages')")
        events_bytes = await conn.fetchval("SELECT pg_total_relation_size('events')")
        wal_bytes = await conn.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", after.wal_lsn, before.wal_lsn
        )
        await conn.close()
        if sum(states.values()) != args.messages or set(states) - {"sent", "failed", "bounced"}:
            raise SystemExit(f"K={k}: outbox ended as {states}")
        for error in errors:  # a final state but not sent: counted, shown, not hidden in the rate
            print(f"K={k}: {error['count']} not sent: {error['error']}")
        for log in logs:
            text = log.read_text()
            if "Traceback" in text:
                print(f"K={k}: {log.name} logged a traceback:\n{text[text.index('Traceback') :][:1500]}")

        per = 1 / args.messages
        deltas = {name: (final[name] - before.stats[name]) * per for name in STATS}
        deltas["xact_commit"] = (final["xact_commit"] - before.stats["xact_commit"] - polls - 1) * per
        deltas["transactions"] = deltas["xact_commit"] + deltas["xact_rollback"]  # reads end in a rollback
        rate = args.messages / elapsed
        print(f"K={k}: {rate:,.0f} mails/s to a final state ({elapsed:.1f} s); the bare loop next", flush=True)
        cpu_before, sink_before = cpu_s(), process_cpu_s(sink_pid)
        bare = await run_bare(port, k * args.lanes, args.messages, data)
        return {
            "workers": k,
            "rate": rate,
            "elapsed_s": elapsed,
            "bare": bare,
            "bare_cpu_ms": (cpu_s() - cpu_before) * per * 1000,
            "bare_sink_cpu_ms": (process_cpu_s(sink_pid) - sink_before) * per * 1000,
            "pg_cpu_ms": (
                pg_cpu_delta(before.backends_cpu, after.backends_cpu)
                + pg_cpu_delta(before.background_cpu, after.background_cpu)
            )
            * per
            * 1000,
            "pg_backends_cpu_ms": pg_cpu_delta(before.backends_cpu, after.backends_cpu) * per * 1000,
            "pg_background_cpu_ms": pg_cpu_delta(before.background_cpu, after.background_cpu) * per * 1000,
            "workers_cpu_ms": (after.workers_cpu - before.workers_cpu) * per * 1000,
            "sink_cpu_ms": (after.sink_cpu - before.sink_cpu) * per * 1000,
            "per_message": deltas,
            "wal_bytes": float(wal_bytes) * per,
            "messages_table_bytes": messages_bytes * per,
            "events_table_bytes": events_bytes * per,
            "message_bytes": len(data),
            "not_sent": args.messages - states.get("sent", 0),
        }
    finally:
        stop(workers)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    one = results[0]["rate"]
    print(
        f"\n{'K':>2} {'mails/s':>8} {'vs K=1':>7} {'bare':>7} {'ratio':>6} │ per mail: {'xacts':>5} {'ins':>5} "
        f"{'upd':>5} {'fetch':>6} {'ret':>6} {'WAL B':>6} │ "
        f"CPU ms: {'backends':>8} {'bg':>5} {'workers':>8} {'sink':>5}"
    )
    for r in results:
        d = r["per_message"]
        print(
            f"{r['workers']:>2} {r['rate']:>8,.0f} {r['rate'] / one:>6.2f}x {r['bare']:>7,.0f} "
            f"{r['rate'] / r['bare']:>5.2f}x │ {d['transactions']:>15.3f} {d['tup_inserted']:>5.2f} "
            f"{d['tup_updated']:>5.2f} {d['tup_fetched']:>6.2f} {d['tup_returned']:>6.1f} {r['wal_bytes']:>6,.0f} │ "
            f"{r['pg_backends_cpu_ms']:>16.3f} {r['pg_background_cpu_ms']:>5.3f} {r['workers_cpu_ms']:>8.3f} "
            f"{r['sink_cpu_ms']:>5.3f}"
        )
    print(
        "xacts: commits and rollbacks (a read ends in one); ret: rows and index entries read; WAL and 'bg' "
        "(WAL writer, checkpointer, autovacuum) are the server's: other databases' work counts there too"
    )
    pg_ms = min(r["pg_cpu_ms"] for r in results)
    load = os.getloadavg()[0]
    print(f"load average at the end {load:.1f} on {os.cpu_count()} cores (other jobs make the figures noisy)")
    print(
        f"\nmessage {results[0]['message_bytes']:,} bytes; the outbox row with its indexes "
        f"{results[0]['messages_table_bytes']:,.0f} bytes, events {results[0]['events_table_bytes']:,.0f} bytes a mail"
    )
    print(
        f"PostgreSQL CPU per mail {pg_ms:.3f} ms at best: one database core carries ~{1000 / pg_ms:,.0f} mails/s "
        f"of this work, 8 cores ~{8000 / pg_ms:,.0f} mails/s (CPU only; WAL and disk are apart)"
    )
    print(
        f"2 cores here: the workers, their render processes, PostgreSQL and the sink share them; "
        f"K workers cannot go K times as fast (bare loop {results[-1]['bare']:,.0f} msg/s over "
        f"{results[-1]['workers'] * args.lanes} connections is the machine's ceiling for SMTP alone)"
    )
    what = f"{args.dkim} DKIM" if args.dkim != "none" else "no DKIM"
    rows: list[dict[str, Any]] = []
    for r in results:
        k, d = r["workers"], r["per_message"]
        setup = f"{args.messages:,} mails, {what}, smtp-sink, {args.lanes} lanes each, PostgreSQL"
        extra = {
            "workers": k,
            "messages": args.messages,
            "dkim": args.dkim,
            "not_sent": r["not_sent"],
            "speedup_vs_1": r["rate"] / one,
            "per_message": d,
            "wal_bytes_per_msg": r["wal_bytes"],
            "cpu_ms_per_msg": {
                "postgres": r["pg_cpu_ms"],
                "postgres_backends": r["pg_backends_cpu_ms"],
                "workers": r["workers_cpu_ms"],
                "sink": r["sink_cpu_ms"],
                "bare_sender": r["bare_cpu_ms"],
                "bare_sink": r["bare_sink_cpu_ms"],
            },
        }
        rows.append(
            {
                "name": f"send with {k} worker process{'es' if k > 1 else ''} ({setup})",
                "value": r["rate"],
                "unit": "msg/s",
                "reference": r["bare"],
                "reference_name": f"bare aiosmtplib loop, pre-signed, {k * args.lanes} connections",
                "ratio": r["rate"] / r["bare"],
                # Pre-signed bytes are the scale for signed mail, a target for unsigned mail.
                "target": ">= 0.8" if args.dkim == "none" else None,
                **extra,
            }
        )
        if k != results[0]["workers"]:
            rows.append(
                {
                    "name": f"{k} workers against {results[0]['workers']} ({os.cpu_count()} cores)",
                    "value": r["rate"],
                    "unit": "msg/s",
                    "reference": one,
                    "reference_name": f"{results[0]['workers']} worker",
                    "ratio": r["rate"] / one,
                    "target": None,
                    "value_name": f"{k} workers",
                }
            )
        rows.append(
            {
                "name": f"PostgreSQL CPU per mail, {k} worker{'s' if k > 1 else ''}",
                "value": r["pg_cpu_ms"],
                "unit": "ms",
                "reference": r["workers_cpu_ms"],
                "reference_name": "the workers' own CPU per mail (with their render processes)",
                "ratio": r["pg_cpu_ms"] / r["workers_cpu_ms"],
                "target": None,
                "value_name": "PostgreSQL",
                "transactions_per_msg": d["transactions"],
                "commits_per_msg": d["xact_commit"],
                "backends_cpu_ms": r["pg_backends_cpu_ms"],
                "background_cpu_ms": r["pg_background_cpu_ms"],
                "tup_inserted_per_msg": d["tup_inserted"],
                "tup_updated_per_msg": d["tup_updated"],
                "tup_fetched_per_msg": d["tup_fetched"],
                "wal_bytes_per_msg": r["wal_bytes"],
            }
        )
    return rows


async def main(args: argparse.Namespace) -> None:
    counts = [int(k) for k in args.workers.split(",")]
    port = free_port()
    sink = start_sink("smtp-sink", port)
    workdir = Path(tempfile.mkdtemp(prefix="responder-bench-workers-"))
    try:
        results = [await run(args, k, port, sink.pid, workdir) for k in counts]
        rows = report(results, args)
        if args.json:
            write_rows(args.json, rows)
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated")
    parser.add_argument("--lanes", type=int, default=8, help="SMTP connections per worker (RESPONDER_WORKER_LANES)")
    parser.add_argument("--batch", type=int, default=Settings.worker_batch, help="RESPONDER_WORKER_BATCH")
    parser.add_argument("--render-processes", default="auto", help="RESPONDER_RENDER_PROCESSES of each worker")
    parser.add_argument("--dkim", choices=("rsa", "ed25519", "none"), default="rsa")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="server; databases are made")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    asyncio.run(main(parser.parse_args()))
