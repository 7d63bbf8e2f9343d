"""Reports that read in proportion to the list, built apart from the event loop.

Funnel analytics and the dashboard fold every subscriber's layer history and group a month of
events: seconds at 100k subscribers. Run on the server's loop and reader pool, such a scan froze
everything else (a ``/healthz`` waited 13 s behind ``/api/v1/stats``). ``build_apart`` runs the
build in a child process (a thread would still share the interpreter lock with the loop, and
the fold is Python), on a database engine of its own, so the server's loop keeps answering
health checks, open pixels and the scheduler while it scans. Requests for the same report that
arrive while it is being built share that one build: a burst of dashboard loads costs one scan,
not one each.

A report whose build took longer than ``SLOW_S`` (a list of hundreds of thousands) is kept: the
next requests get it at once, with the time it was built for in it, while a new build starts
in the background when it is older than ``REFRESH_S``; a request waits for a build only when
there is none of that report yet. Faster reports are built for each request (with the build
already under way joined), so their figures are always those of the moment.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from ..db import Database

T = TypeVar("T")
Build = Callable[..., Awaitable[T]]  # build(session, *args): a module-level function, sent by name

BUILDERS = 2  # processes; started on the first report, kept for the next ones
_pool: ProcessPoolExecutor | None = None
SLOW_S = 2.0  # a report built in longer than this is kept and served while it is rebuilt
REFRESH_S = 60.0  # a kept report older than this is rebuilt in the background when asked for


@dataclass
class Kept:
    value: Any
    built_at: float  # time.monotonic() when its build ended


_under_way: weakref.WeakKeyDictionary[Database, dict[Hashable, asyncio.Future[Any]]] = weakref.WeakKeyDictionary()
_kept: weakref.WeakKeyDictionary[Database, dict[Hashable, Kept]] = weakref.WeakKeyDictionary()


def _builders() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:  # spawned: forking a process that runs threads and an event loop is unsafe
        _pool = ProcessPoolExecutor(BUILDERS, mp_context=multiprocessing.get_context("spawn"))
    return _pool


async def build_apart(db: Database, key: Hashable, build: Build[T], *args: Any) -> T:
    """``build(session, *args)`` on a read session of its own, in a builder process; a build of
    the same ``key`` already under way on ``db`` is joined instead of started again, and a slow
    one's last result is served while it is rebuilt."""
    kept = _kept.setdefault(db, {}).get(key)
    if kept is not None:
        if time.monotonic() - kept.built_at > REFRESH_S:
            _start(db, key, build, args)
        value: T = kept.value
        return value
    # Shielded: a request that leaves (client gone, timeout) does not cancel a build others wait on.
    result, _ = await asyncio.shield(_start(db, key, build, args))
    return result


def _start(db: Database, key: Hashable, build: Build[T], args: tuple[Any, ...]) -> asyncio.Future[tuple[T, float]]:
    under_way = _under_way.setdefault(db, {})
    running = under_way.get(key)
    if running is None:
        running = asyncio.ensure_future(_in_builder(db.url, build, args))
        under_way[key] = running

        def finished(future: asyncio.Future[Any]) -> None:
            if under_way.get(key) is future:
                del under_way[key]
            if future.cancelled() or future.exception() is not None:
                return  # retrieved: a build whose requests all left logs nothing
            value, seconds = future.result()
            kept = _kept.setdefault(db, {})
            if seconds > SLOW_S:
                kept[key] = Kept(value, time.monotonic())
            else:
                kept.pop(key, None)

        running.add_done_callback(finished)
    return running


async def _in_builder(url: str, build: Build[T], args: tuple[Any, ...]) -> tuple[T, float]:
    """Run in a builder; once more in fresh builders if one died (killed, out of memory), which
    leaves the whole pool broken."""
    global _pool
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_builders(), _run, url, build, args)
    except BrokenProcessPool:
        broken, _pool = _pool, None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        return await loop.run_in_executor(_builders(), _run, url, build, args)


def _run(url: str, build: Build[T], args: tuple[Any, ...]) -> tuple[T, float]:
    """The report, and the seconds its build took in the builder (not the start of a builder)."""
    return asyncio.run(_build(url, build, args))


async def _build(url: str, build: Build[T], args: tuple[Any, ...]) -> tuple[T, float]:
    started = time.perf_counter()
    db = Database(url)
    try:
        async with db.read() as session:
            return await build(session, *args), time.perf_counter() - started
    finally:
        await db.dispose()
