"""Reports that read in proportion to the list, built apart from the event loop.

Funnel analytics and the dashboard fold every subscriber's layer history and group a month of
events: seconds at 100k subscribers. Run on the server's loop and reader pool, such a scan froze
everything else (a ``/healthz`` waited 13 s behind ``/api/v1/stats``). ``build_apart`` runs the
build in a child process (a thread would still share the interpreter lock with the loop, and
the fold is Python), on a database engine of its own, so the server's loop keeps answering
health checks, open pixels and the scheduler while it scans. Requests for the same report that
arrive while it is being built share that one build: a burst of dashboard loads costs one scan,
not one each, and the figures stay exact (nothing older than a build already under way when the
request arrived is served).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import weakref
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ..db import Database

T = TypeVar("T")
Build = Callable[..., Awaitable[T]]  # build(session, *args): a module-level function, sent by name

BUILDERS = 2  # processes; started on the first report, kept for the next ones
_pool: ProcessPoolExecutor | None = None
_under_way: weakref.WeakKeyDictionary[Database, dict[Hashable, asyncio.Future[Any]]] = weakref.WeakKeyDictionary()


def _builders() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:  # spawned: forking a process that runs threads and an event loop is unsafe
        _pool = ProcessPoolExecutor(BUILDERS, mp_context=multiprocessing.get_context("spawn"))
    return _pool


async def build_apart(db: Database, key: Hashable, build: Build[T], *args: Any) -> T:
    """``build(session, *args)`` on a read session of its own, in a builder process; a build of
    the same ``key`` already under way on ``db`` is joined instead of started again."""
    under_way = _under_way.setdefault(db, {})
    running = under_way.get(key)
    if running is None:
        running = asyncio.ensure_future(_in_builder(db.url, build, args))
        under_way[key] = running

        def finished(future: asyncio.Future[Any]) -> None:
            if under_way.get(key) is future:
                del under_way[key]
            if not future.cancelled():
                future.exception()  # retrieved: a build whose requests all left logs nothing

        running.add_done_callback(finished)
    # Shielded: a request that leaves (client gone, timeout) does not cancel a build others wait on.
    result: T = await asyncio.shield(running)
    return result


async def _in_builder(url: str, build: Build[T], args: tuple[Any, ...]) -> T:
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


def _run(url: str, build: Build[T], args: tuple[Any, ...]) -> T:
    return asyncio.run(_build(url, build, args))


async def _build(url: str, build: Build[T], args: tuple[Any, ...]) -> T:
    db = Database(url)
    try:
        async with db.read() as session:
            return await build(session, *args)
    finally:
        await db.dispose()
