"""Templates render in child processes with hard limits (issue 18, point 1): a render that runs
past ``RESPONDER_RENDER_TIME_LIMIT_S`` or past ``RESPONDER_RENDER_MEMORY_MB`` kills only its
child, fails with a reason (an upload 422 with nothing stored, a message ``failed``), and the
server keeps answering throughout; the next render gets a fresh child."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from responder.clock import FakeClock
from responder.errors import TemplateError
from responder.models import Message, Template
from responder.templating.pool import Renderer

from ..admin_fixtures import make_subscriber
from ..conftest import App, SmtpSink, running_app

# Python-level loops: the sandbox's own watchdog would stop them after 2 s, the pool at 1 s.
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# 70 different strings of two million 4-byte characters: 560 MB, each step within the size checks.
GREEDY = (
    "{% set a = '\U0001f600' * 2000000 %}{% set l = ["
    + ",".join(f"a ~ '{n}'" for n in range(70))
    + "] %}{{ l|length }}"
)
# Fast for the sample recipients every check renders for, slow for these real subscribers.
SLOW_FOR_REAL = '{% if subscriber.email.startswith("reader") %}' + SLOW + "{% endif %}<p>Hi</p>"


@pytest.fixture
async def lapp(database_url: str, smtp: SmtpSink, clock: FakeClock) -> AsyncIterator[App]:
    env = {"RESPONDER_RENDER_PROCESSES": "2", "RESPONDER_RENDER_TIME_LIMIT_S": "1", "RESPONDER_RENDER_MEMORY_MB": "400"}
    async with running_app(database_url, smtp, clock, **env) as running:
        yield running


async def upload(app: App, name: str, body: str) -> tuple[int, str]:
    resp = await app.client.post(
        "/api/v1/templates",
        headers=app.auth,
        json={"name": name, "subject": "Hi", "body": body, "purpose": "offer"},
    )
    return resp.status, await resp.text()


async def templates(app: App) -> int:
    async with app.rt.db.read() as session:
        return (await session.execute(select(func.count()).select_from(Template))).scalar_one()


async def slowest_health_while(app: App, work: asyncio.Future[object]) -> float:
    """The longest ``/healthz`` took, asked again and again until ``work`` is done."""
    slowest = 0.0
    while not work.done():
        began = time.monotonic()
        resp = await app.client.get("/healthz")
        assert resp.status == 200
        slowest = max(slowest, time.monotonic() - began)
        await asyncio.sleep(0.05)
    return slowest


async def test_a_slow_upload_is_killed_at_the_limit_and_nothing_waits_for_it(lapp: App) -> None:
    before = await templates(lapp)
    began = time.monotonic()
    work = asyncio.ensure_future(upload(lapp, "slow", f"<p>{SLOW}</p>"))
    slowest = await slowest_health_while(lapp, work)
    status, text = await work
    assert status == 422 and "takes longer than 1 s to render" in text, text
    assert time.monotonic() - began < 10  # killed at 1 s (the watchdog alone would need 2 s)
    assert slowest < 0.9, slowest  # a loop waiting on the render would wait the whole 1 s (loose: CI is busy)
    assert lapp.rt.renderer.replaced == 1
    # The next upload gets a fresh process.
    assert (await upload(lapp, "fine", "<p>Hello {{ subscriber.first_name }}</p>"))[0] == 201
    assert await templates(lapp) == before + 1


async def test_a_greedy_upload_runs_out_of_its_own_memory_not_the_servers(
    database_url: str, smtp: SmtpSink, clock: FakeClock
) -> None:
    env = {
        "RESPONDER_RENDER_PROCESSES": "1",
        "RESPONDER_RENDER_TIME_LIMIT_S": "30",
        "RESPONDER_RENDER_MEMORY_MB": "400",
    }
    async with running_app(database_url, smtp, clock, **env) as app:
        status, text = await upload(app, "greedy", f"<p>{GREEDY}</p>")
        assert status == 422 and "MemoryError" in text, text
        assert (await upload(app, "fine", "<p>Hello</p>"))[0] == 201


async def test_a_template_slow_only_for_real_subscribers_holds_its_messages_not_the_server(lapp: App) -> None:
    """A render past its limit kills only its render process; the mail waits for a later try
    (a busy machine runs out of time as a runaway template does), and is given up only when its
    lifetime is over, like any mail that cannot go."""
    for number in range(2):
        await make_subscriber(lapp.rt, f"reader{number}@example.com", layer=2)
    assert (await upload(lapp, "trap", SLOW_FOR_REAL))[0] == 201  # fine for the sample
    resp = await lapp.client.post(
        "/api/v1/newsletters",
        headers=lapp.auth,
        json={"name": "Trap", "template": "trap", "layers": [2], "send_now": True},
    )
    assert resp.status == 201, await resp.text()
    lapp.rt.wake_scheduler()

    async def deferred() -> list[Message]:
        while True:
            async with lapp.rt.db.read() as session:
                rows = (await session.execute(select(Message).where(Message.state == "deferred"))).scalars().all()
            if len(rows) == 2:
                return list(rows)
            await asyncio.sleep(0.1)

    work = asyncio.ensure_future(asyncio.wait_for(deferred(), 60))
    slowest = await slowest_health_while(lapp, work)
    held = await work
    assert all("takes longer than 1 s to render" in (row.last_error or "") for row in held)
    assert all(row.next_attempt_at > lapp.clock.now() and row.attempts == 1 for row in held)
    assert slowest < 0.9, slowest  # each render runs 1 s before it is killed: a waiting loop would show it
    assert lapp.smtp.received == [] and lapp.rt.renderer.replaced == 2


async def test_jobs_run_side_by_side_and_a_killed_one_spares_the_others() -> None:
    renderer = Renderer(2, 1.0, 400)
    try:
        slow = asyncio.ensure_future(renderer.render("Hi", SLOW, None, {}))
        await asyncio.sleep(0.2)
        began = time.monotonic()
        fast = await renderer.render("Hi {{ name }}", "<p>{{ name }}</p>", None, {"name": "Ann"})
        assert time.monotonic() - began < 0.9  # the other child, not behind the slow job
        assert (fast.subject, fast.html, fast.text) == ("Hi Ann", "<p>Ann</p>", "Ann")
        with pytest.raises(TemplateError, match="takes longer than 1 s"):
            await slow
        again = await renderer.render("Hi", "<p>{{ 6 * 7 }}</p>", None, {})
        assert again.html == "<p>42</p>" and renderer.replaced == 1
    finally:
        await renderer.close()


async def test_without_processes_templates_render_in_a_thread() -> None:
    renderer = Renderer(0, 1.0, 400)
    rendered = await renderer.render("Hi", "<p>{{ 6 * 7 }}</p>", None, {})
    assert rendered.html == "<p>42</p>"
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        await renderer.render("Hi", "<p>{{ nope }}</p>", None, {})
    await renderer.close()


def test_a_render_process_whose_parent_dies_mid_chunk_ends_quietly(tmp_path: Path) -> None:
    """A worker killed (SIGKILL) while its render process works through a chunk: the process
    finds nobody to answer and ends, without a traceback in the worker's log."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, os
            from responder.templating.pool import Renderer

            async def main():
                renderer = Renderer(1, 30, 400)
                slow = "{% for i in range(30000) %}{{ i }}{% endfor %}"
                jobs = renderer._start("render", [("s", slow, None, {})] * 16)
                while not jobs[0].done():
                    await asyncio.sleep(0.01)
                print(next(iter(renderer._idle or renderer._busy))._process.pid, flush=True)
                os._exit(0)  # as SIGKILL would: the chunk's other answers have nowhere to go

            asyncio.run(main())
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the render process outlived its parent"
        time.sleep(0.05)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


async def test_a_job_past_its_limit_mid_chunk_fails_alone_and_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A chunk of six with a runaway second: the first answers, the second times out, the four
    after it go on in a fresh child; no unread error is left behind and no process "stopped"
    error is logged for a kill the pool made on purpose."""
    loop = asyncio.get_running_loop()
    unread: list[object] = []
    loop.set_exception_handler(lambda _, context: unread.append(context.get("message")))
    renderer = Renderer(1, 0.7, 400)
    try:
        jobs = [("s", f"<p>{n}</p>", None, {}) for n in range(6)]
        jobs[1] = ("s", SLOW, None, {})
        results = await asyncio.gather(*renderer._start("render", jobs), return_exceptions=True)
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        await renderer.close()
    assert [r if isinstance(r, Exception) else r[1] for r in results][2:] == [f"<p>{n}</p>" for n in range(2, 6)]
    assert results[0][1] == "<p>0</p>" and "longer than 0.7 s" in str(results[1])
    assert unread == [] and renderer.replaced == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_dead_idle_children_are_replaced_not_given_up_for_a_thread() -> None:
    """Render processes that died while idle (killed by an operator, the OOM killer) are
    replaced by fresh ones; rendering never falls back to the unguarded thread for them."""
    renderer = Renderer(2, 2.0, 400)
    try:
        await asyncio.gather(*renderer._start("render", [("s", "<p>a</p>", None, {}), ("s", "<p>b</p>", None, {})]))
        assert len(renderer._idle) == 2
        for child in renderer._idle:
            assert child._process is not None
            child._process.kill()
            await child._process.wait()
        [rendered] = await asyncio.gather(*renderer._start("render", [("s", "<p>{{ 6 * 7 }}</p>", None, {})]))
        assert rendered[1] == "<p>42</p>" and not renderer._in_process
    finally:
        await renderer.close()
