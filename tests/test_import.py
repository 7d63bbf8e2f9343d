"""CSV import (API job with progress and a report of rejected rows, CLI with a progress bar)
and CSV export."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from responder.cli import main
from responder.models import ConsentRecord, Enrollment, Subscriber

from .admin_fixtures import make_subscriber
from .conftest import App, SmtpSink, make_settings, running_app

CSV = """email,name,layer,tags,consent_source,consented_at
ada@example.com,Ada,2,preferred;vip,,2025-03-01T10:00:00+00:00
not-an-address,Bob,,,,
carl@example.com,Carl,9,,,
ADA@example.com,Ada again,,,,
dora@example.com,Dora,,,fair 2024,
old@example.com,Old,,,,
eve@example.com,Eve,,"bad tag",,
fay@example.com,Fay,,,,tomorrow
"""


async def wait_for_job(app: App, job_id: int) -> dict:  # type: ignore[type-arg]
    for _ in range(200):
        resp = await app.client.get(f"/api/v1/imports/{job_id}", headers=app.auth)
        job = await resp.json()
        if job["state"] != "running":
            return job  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError("import did not finish")


async def test_api_import_reports_each_rejected_row(app: App) -> None:
    await make_subscriber(app.rt, "old@example.com", name="Old", layer=4)
    resp = await app.client.post(
        "/api/v1/imports?consent_source=shop%20checkout", data=CSV, headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 202, await resp.text()
    job = await wait_for_job(app, (await resp.json())["id"])
    assert job["state"] == "done" and job["progress"] == 1.0
    assert (job["rows_read"], job["imported"], job["rejected"]) == (8, 2, 6)
    reasons = {(r["row"], r["field"]) for r in job["rejected_rows"]}
    assert reasons == {(3, "email"), (4, "layer"), (5, "email"), (7, "email"), (8, "tags"), (9, "consented_at")}
    assert any("row 2" in r["reason"] for r in job["rejected_rows"] if r["row"] == 5)

    async with app.rt.db.read() as session:
        ada = (await session.execute(select(Subscriber).where(Subscriber.email == "ada@example.com"))).scalar_one()
        assert ada.status == "active" and ada.tags == ["preferred", "vip"]
        assert ada.confirmed_at is not None and ada.confirmed_at.year == 2025
        sources = dict(
            (
                await session.execute(
                    select(Subscriber.email, ConsentRecord.form)
                    .join(ConsentRecord, ConsentRecord.subscriber_id == Subscriber.id)
                    .where(ConsentRecord.action == "import")
                )
            ).all()
        )
        assert sources == {"ada@example.com": "shop checkout", "dora@example.com": "fair 2024"}
        enrolled = (
            await session.execute(
                select(func.count()).select_from(Enrollment).where(Enrollment.subscriber_id == ada.id)
            )
        ).scalar_one()
        assert enrolled == 0  # by default the imported get their layer's newsletters, no sequence mail
        assert job["enroll"] == {"mode": "none", "spread_s": 0}
        old = (await session.execute(select(Subscriber).where(Subscriber.email == "old@example.com"))).scalar_one()
        assert old.name == "Old"  # left unchanged


async def test_import_needs_a_consent_source_and_an_email_header(app: App) -> None:
    resp = await app.client.post(
        "/api/v1/imports", data="email,name\nzoe@example.com,Zoe\n", headers={**app.auth, "Content-Type": "text/csv"}
    )
    job = await wait_for_job(app, (await resp.json())["id"])
    assert job["imported"] == 0 and job["rejected_rows"][0]["field"] == "consent_source"

    resp = await app.client.post(
        "/api/v1/imports?consent_source=x", data="name\nZoe\n", headers={**app.auth, "Content-Type": "text/csv"}
    )
    job = await wait_for_job(app, (await resp.json())["id"])
    assert job["state"] == "failed" and "email" in job["error"]

    resp = await app.client.post(
        "/api/v1/imports?consent_source=x", data="", headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "file"
    resp = await app.client.post(
        "/api/v1/imports?consent_source=%0A", data="email\n", headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "consent_source"


async def test_import_larger_than_the_limit_is_refused(database_url: str, smtp: SmtpSink, clock) -> None:  # type: ignore[no-untyped-def]
    async with running_app(database_url, smtp, clock, RESPONDER_IMPORT_MAX_BYTES="100") as app:
        resp = await app.client.post(
            "/api/v1/imports?consent_source=x", data="email\n" * 50, headers={**app.auth, "Content-Type": "text/csv"}
        )
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "too_large"


async def test_export_round_trips_with_filters(app: App) -> None:
    await make_subscriber(app.rt, "a@example.com", name="A, the first", layer=2, tags=["preferred"])
    await make_subscriber(app.rt, "b@example.com", name="B", layer=1)
    resp = await app.client.get("/api/v1/subscribers.csv", headers=app.auth)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [(r["email"], r["name"], r["layer"], r["tags"]) for r in rows] == [
        ("a@example.com", "A, the first", "2", "preferred"),
        ("b@example.com", "B", "1", ""),
    ]
    resp = await app.client.get("/api/v1/subscribers.csv?layer=1", headers=app.auth)
    assert [r["email"] for r in csv.DictReader(io.StringIO(await resp.text()))] == ["b@example.com"]


def test_cli_users_tokens_import_and_export(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(sqlite_url, f"file:{tmp_path / 'out'}")
    for key, value in {
        "RESPONDER_DATABASE_URL": sqlite_url,
        "RESPONDER_SMTP_URL": f"file:{tmp_path / 'out'}",
        "RESPONDER_ADMIN_TOKEN": settings.admin_token or "",
        "RESPONDER_SECRET_KEY": "k",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["admin", "create-user", "ada", "--password-stdin"]) == 0
    assert main(["tokens", "create", "shop", "--scope", "write"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("rsp_")
    assert main(["tokens", "create", "shop"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["tokens", "list"]) == 0
    assert capsys.readouterr().out.startswith("shop\twrite\t")

    data = tmp_path / "people.csv"
    data.write_text("email,name\n" + "".join(f"p{i}@example.com,P {i}\n" for i in range(50)) + "broken,X\n")
    report = tmp_path / "rejected.csv"
    argv = ["subscribers", "import", str(data), "--consent-source", "webinar", "--report", str(report)]
    with pytest.raises(SystemExit):  # refused by the parser: nothing imported
        main([*argv, "--enroll", "sometimes"])
    assert main([*argv, "--enroll", "start", "--spread", "soon"]) == 1
    assert "not a duration" in capsys.readouterr().err
    assert main([*argv, "--enroll", "start", "--spread", "3d"]) == 0
    captured = capsys.readouterr()
    assert "51 rows: 50 imported, 1 rejected" in captured.out
    assert "their first mail spread evenly over 3d" in captured.out
    assert "importing" in captured.err  # the progress bar
    assert "broken" in report.read_text()

    out = tmp_path / "export.csv"
    assert main(["subscribers", "export", str(out), "--layer", "1"]) == 0
    assert len(out.read_text().splitlines()) == 51
    assert main(["tokens", "revoke", "shop"]) == 0
    assert main(["tokens", "revoke", "shop"]) == 1


async def test_a_job_left_running_by_a_killed_server_shows_as_failed(app: App) -> None:
    """A server killed mid-import cannot mark its job; once the job has made no progress for
    STALE_AFTER, reading it marks it failed with what happened and what to do."""
    from responder.audience.importer import STALE_AFTER
    from responder.models import ImportJob

    async with app.rt.db.transaction() as session:
        job = ImportJob(
            state="running",
            consent_source="shop",
            bytes_total=1000,
            bytes_read=400,
            rows_read=10,
            imported=10,
            rejected=0,
            rejected_rows=[],
            created_at=app.clock.now() - STALE_AFTER,
            updated_at=app.clock.now(),
        )
        session.add(job)
        await session.flush()
        job_id = job.id
    app.clock.advance(STALE_AFTER.total_seconds() - 1)
    resp = await app.client.get(f"/api/v1/imports/{job_id}", headers=app.auth)
    assert (await resp.json())["state"] == "running"
    app.clock.advance(2)
    resp = await app.client.get(f"/api/v1/imports/{job_id}", headers=app.auth)
    body = await resp.json()
    assert body["state"] == "failed" and body["imported"] == 10
    assert "stopped" in body["error"] and "run the rest again" in body["error"]
    assert body["finished_at"] == app.clock.now().isoformat()
    async with app.rt.db.read() as session:
        stored = await session.get_one(ImportJob, job_id)
    assert stored.state == "failed" and stored.finished_at == app.clock.now()


async def test_an_import_declared_dead_stops_and_leaves_its_row_failed(app: App, tmp_path: Path) -> None:
    """A live import whose row was marked failed (no progress for STALE_AFTER, say a database
    stuck that long) stops at its next progress save instead of writing "done" over it."""
    from responder.audience.importer import BATCH_ROWS, run_job
    from responder.models import ImportJob

    path = tmp_path / "big.csv"
    path.write_text("email,name\n" + "".join(f"p{i}@example.com,P {i}\n" for i in range(BATCH_ROWS * 3)))
    async with app.rt.db.transaction() as session:
        job = ImportJob(
            state="failed",
            error="declared dead",
            consent_source="shop",
            bytes_total=path.stat().st_size,
            rejected_rows=[],
            created_at=app.clock.now(),
            updated_at=app.clock.now(),
        )
        session.add(job)
        await session.flush()
        job_id = job.id
    await run_job(app.rt, job_id, path, "shop")
    async with app.rt.db.read() as session:
        stored = await session.get_one(ImportJob, job_id)
        imported = (await session.execute(select(func.count()).select_from(Subscriber))).scalar_one()
    assert (stored.state, stored.error, stored.imported) == ("failed", "declared dead", 0)
    assert 0 < imported <= BATCH_ROWS  # its first batch, then it stopped
    assert not path.exists()


async def test_an_upload_left_by_a_killed_server_is_removed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server killed mid-import leaves its spooled CSV behind; the next one removes it at
    start, and leaves alone the uploads of processes still running (this one's)."""
    import signal
    import subprocess
    import sys
    import tempfile

    from responder.audience.importer import ImportJobs, spool

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, os, signal\n"
            "from responder.audience.importer import spool\n"
            "async def chunks():\n    yield b'email\\nzoe@example.com\\n'\n"
            "print(asyncio.run(spool(chunks(), 1000)), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        env={**__import__("os").environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.parent == tmp_path and left.exists()

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"email\nann@example.com\n"

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = await spool(chunks(), 1000)
    other = tmp_path / "responder-import-notes.csv"  # not one of ours: not touched
    other.write_text("x")
    jobs = ImportJobs()
    assert not left.exists() and mine.exists() and other.exists()
    await jobs.close()
    mine.unlink()


async def _import(app: App, csv_text: str, query: str) -> dict:  # type: ignore[type-arg]
    resp = await app.client.post(
        f"/api/v1/imports?consent_source=fair&{query}", data=csv_text, headers={**app.auth, "Content-Type": "text/csv"}
    )
    assert resp.status == 202, await resp.text()
    return await wait_for_job(app, (await resp.json())["id"])


async def _enrollments(app: App) -> list[Enrollment]:
    async with app.rt.db.read() as session:
        return list((await session.execute(select(Enrollment).order_by(Enrollment.subscriber_id))).scalars())


async def test_an_import_mails_nobody_unless_asked_and_then_spreads_its_first_mails(app: App) -> None:
    """Importing a list and starting the server does not mail the whole list at once: by
    default the imported get their layer's newsletters only; ``next`` starts them after the
    welcome, ``start`` from the welcome, and ``spread`` spreads their first mails evenly."""
    people = "email\n" + "".join(f"n{i}@example.com\n" for i in range(40))
    job = await _import(app, people, "")
    assert (job["imported"], job["they_get"]) == (40, "their layer's newsletters only, no sequence mail")
    assert await _enrollments(app) == []

    job = await _import(app, people.replace("n", "x"), "enroll=next")
    assert job["enroll"] == {"mode": "next", "spread_s": 0}
    rows = await _enrollments(app)
    now = app.clock.now()
    # Layer 1's starter sequence: welcome at once, then 2 d, then 4 d; "next" skips the welcome.
    assert {(e.next_position, e.due_at) for e in rows} == {(2, now + dt.timedelta(days=2))}

    job = await _import(app, people.replace("n", "s"), "enroll=start&spread=4d")
    assert "spread evenly over 4d" in job["they_get"]
    spread = [e for e in await _enrollments(app) if e.next_position == 1]
    assert len(spread) == 40
    offsets = sorted((e.due_at - now).total_seconds() / 86400 for e in spread)
    assert 0 <= offsets[0] and offsets[-1] < 4
    per_day = [sum(1 for o in offsets if day <= o < day + 1) for day in range(4)]
    assert max(per_day) <= 20, per_day  # spread over the days, not all on one

    resp = await app.client.post(
        "/api/v1/imports?consent_source=fair&enroll=always",
        data=people.replace("n", "b"),
        headers={**app.auth, "Content-Type": "text/csv"},
    )
    assert resp.status == 400 and "enroll must be one of" in (await resp.json())["error"]["message"]
    async with app.rt.db.read() as session:
        assert (
            await session.execute(select(func.count()).select_from(Subscriber).where(Subscriber.email.like("b%")))
        ).scalar_one() == 0
