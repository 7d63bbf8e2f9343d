"""Uploaded templates render in child processes with hard limits, never in the event loop.

A template is code its author controls. The sandbox (``sandbox``) refuses the operations that
could allocate a huge value or run long in one step, and its watchdog interrupts slow Python
loops, but neither can stop one C-level operation nobody foresaw, and both run in whatever
process renders. So the server renders in a pool of ``RESPONDER_RENDER_PROCESSES`` children
(``python -m responder.templating.pool``, each a ``framed.FramedChild``):

- each child caps its address space (``RLIMIT_AS``, ``RESPONDER_RENDER_MEMORY_MB``) and, before
  every job, its CPU time to the job's limit (``RLIMIT_CPU``: the kernel ends it past that);
- the parent waits ``RESPONDER_RENDER_TIME_LIMIT_S`` for an answer, then kills the child;
- a child that was killed, died or ran out of memory is replaced by a fresh one on next use,
  and the job fails with a ``TemplateError`` saying why (an upload answers 422, a message is
  marked ``failed`` with the reason), while every other job goes on in the other children.

A job is a call of one of ``JOBS``: the parent pickles ``(name, args)`` (it trusts itself), the
child answers JSON (the parent does not unpickle what a template could have influenced). What
responder adds to every mail itself (footer, tracked links, the open pixel: ``render.finish``)
stays in the parent, linear in the mail's size. With ``RESPONDER_RENDER_PROCESSES=0`` jobs run in
a thread of the serving process instead: off the event loop, but without the hard limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import pickle
import resource
import signal
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..errors import RenderTimedOut, TemplateError
from ..framed import ChildGone, FramedChild, child_signals, read_frame, write_frame
from .compile import Compiled, compile_template
from .render import Rendered, render_parts
from .sandbox import html_env, render_string, text_env

log = logging.getLogger(__name__)
MB = 1024 * 1024


def _render(subject: str, html: str, text: str | None, context: Mapping[str, Any]) -> list[str]:
    parts = render_parts(subject, html, text, context)
    return [parts.subject, parts.html, parts.text]


def _check(
    subject: str, source: str | None, text: str | None, html: str, contexts: Sequence[Mapping[str, Any]]
) -> None:
    """Whether a stored template renders against each of ``contexts``: the source first, as at
    upload, so a failure names the line the author wrote; then what sending renders."""
    parts = (("subject", subject, text_env()), ("body", source, html_env()), ("text", text, text_env()))
    for context in contexts:
        for part, part_source, env in parts:
            if part_source is not None:
                render_string(env, part_source, context, part)
        render_parts(subject, html, text, context)


def _compile(
    source: str, subject: str, source_format: str | None, text: str | None, samples: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return asdict(compile_template(source, subject, source_format, text, samples=samples))


JOBS: dict[str, Callable[..., Any]] = {"render": _render, "check": _check, "compile": _compile}


def run_job(name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """One job, answered as the child answers it: ``{"ok": result}`` or ``{"error", "field"}``
    (and ``"retire": true`` when the process should not be trusted with another job)."""
    try:
        return {"ok": JOBS[name](*args)}
    except TemplateError as exc:
        answer: dict[str, Any] = {"error": exc.message, "field": exc.field}
        if isinstance(exc.__cause__, MemoryError):
            answer["retire"] = True
        return answer
    except MemoryError:
        return {"error": "the template needs more memory than a render may use", "field": "body", "retire": True}


# A child keeps the sources of the templates it rendered last, so a mail's request carries only
# its context; the parent mirrors each child's list (same size, same order of use) and sends the
# sources again only when the child no longer has them.
SOURCES_KEPT = 64
_ANSWER_PARTS = struct.Struct(">III")


class SourcesKept:
    """The least recently used template sources, by key: the child's store, the parent's mirror."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def has(self, key: int) -> bool:
        """Whether ``key`` is kept; using it counts as a use, on both sides alike."""
        if key in self._kept:
            self._kept.move_to_end(key)
            return True
        return False

    def keep(self, key: int, sources: Any) -> None:
        self._kept[key] = sources
        if len(self._kept) > SOURCES_KEPT:
            self._kept.popitem(last=False)

    def get(self, key: int) -> Any:
        self._kept.move_to_end(key)
        return self._kept[key]


def encode_answer(name: str, answer: dict[str, Any]) -> bytes:
    """A rendered mail as its three parts' UTF-8 bytes after their lengths (no JSON escaping of
    the HTML both ways); everything else as JSON. Never pickle: a template's output could
    influence it, and the parent must not unpickle what it does not trust."""
    if name == "render" and "ok" in answer:
        parts = [part.encode("utf-8", "surrogatepass") for part in answer["ok"]]
        return b"R" + _ANSWER_PARTS.pack(*(len(part) for part in parts)) + b"".join(parts)
    return b"J" + json.dumps(answer).encode()


def decode_answer(raw: bytes) -> dict[str, Any]:
    if raw[:1] == b"R":
        sizes = _ANSWER_PARTS.unpack_from(raw, 1)
        at, parts = 1 + _ANSWER_PARTS.size, []
        for size in sizes:
            parts.append(raw[at : at + size].decode("utf-8", "surrogatepass"))
            at += size
        return {"ok": parts}
    answer: dict[str, Any] = json.loads(raw[1:])
    return answer


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(memory_mb: int, time_limit_s: float) -> None:
    child_signals()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the answer stream
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MB, memory_mb * MB))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    kept = SourcesKept()
    while (frame := read_frame(stdin)) is not None:
        # The kernel sends SIGXCPU (which ends the process) once this job has used its share.
        soft = math.ceil(_cpu_used() + time_limit_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        name, args = pickle.loads(frame)
        if name == "render":  # (key, sources or None, context)
            key, sources, context = args
            if sources is not None:
                kept.keep(key, sources)
            args = (*kept.get(key), context)
        answer = run_job(name, args)
        write_frame(stdout, encode_answer(name, answer))
        if answer.get("retire"):
            return


class RenderGone(ChildGone):
    pass


class RenderProcess(FramedChild):
    gone = RenderGone
    what = "render process"
    after_death = "its job fails and a fresh process takes its place"

    def __init__(self, memory_mb: int, time_limit_s: float) -> None:
        super().__init__("responder.templating.pool", str(memory_mb), repr(time_limit_s))
        self.jobs = 0
        self.exit_status: int | None = None
        self.kept = SourcesKept()  # the mirror of what the child keeps

    async def stop(self, *, kill: bool = False) -> None:
        process = self._process
        if process is not None and kill and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await self.close()
        if process is not None:
            self.exit_status = process.returncode


class Renderer:
    """The pool. Children start on first use and are kept for the next job; ``close`` ends them."""

    def __init__(self, processes: int, time_limit_s: float, memory_mb: int) -> None:
        self.processes = processes
        self.time_limit_s = time_limit_s
        self.memory_mb = memory_mb
        self._idle: list[RenderProcess] = []
        self._busy: set[RenderProcess] = set()
        self._slots: asyncio.Semaphore | None = None
        self._in_process = processes == 0
        self.replaced = 0  # children killed or lost with a job in hand
        self._keys: dict[tuple[str, str, str | None], int] = {}  # template sources → their key
        self._next_key = itertools.count(1)

    @classmethod
    def from_settings(cls, settings: Any) -> Renderer:
        return cls(settings.render_processes, settings.render_time_limit_s, settings.render_memory_mb)

    async def render(self, subject: str, html: str, text: str | None, context: Mapping[str, Any]) -> Rendered:
        """``render.render_parts`` in a child."""
        subject_out, html_out, text_out = await self._run("render", (subject, html, text, context))
        return Rendered(subject_out, html_out, text_out)

    async def check(
        self, subject: str, source: str | None, text: str | None, html: str, contexts: Sequence[Mapping[str, Any]]
    ) -> None:
        await self._run("check", (subject, source, text, html, [dict(context) for context in contexts]))

    async def compile(
        self,
        source: str,
        subject: str,
        source_format: str | None,
        text: str | None,
        samples: Sequence[Mapping[str, Any]],
    ) -> Compiled:
        """``compile.compile_template`` in a child: MJML, CSS and every sample render."""
        args = (source, subject, source_format, text, [dict(sample) for sample in samples])
        return Compiled(**await self._run("compile", args))

    async def _run(self, name: str, args: tuple[Any, ...]) -> Any:
        if self._in_process:
            answer = await asyncio.to_thread(run_job, name, args)
        else:
            answer = await self._in_child(name, args)
        if "error" in answer:
            raise TemplateError(str(answer["error"]), field=answer.get("field") or "body")
        return answer["ok"]

    def _payload(self, child: RenderProcess, name: str, args: tuple[Any, ...]) -> bytes:
        if name == "render":  # the sources once per child (while it keeps them), then their key
            subject, html, text, context = args
            sources = (subject, html, text)
            key = self._keys.get(sources)
            if key is None:
                if len(self._keys) > 4 * SOURCES_KEPT:
                    self._keys.clear()  # keys only grow, so a fresh key is never a stale one
                key = self._keys[sources] = next(self._next_key)
            args = (key, None if child.kept.has(key) else sources, dict(context))
            if args[1] is not None:
                child.kept.keep(key, sources)
        return pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)

    async def _in_child(self, name: str, args: tuple[Any, ...]) -> dict[str, Any]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        async with self._slots:
            for attempt in range(2):
                child = self._idle.pop() if self._idle else RenderProcess(self.memory_mb, self.time_limit_s)
                self._busy.add(child)
                keep = False
                try:
                    raw = await asyncio.wait_for(child.ask(self._payload(child, name, args)), self.time_limit_s)
                    answer = decode_answer(raw)
                    keep = not answer.get("retire")
                    return answer
                except TimeoutError:
                    self.replaced += 1
                    log.warning("a %s job ran past %g s: its render process was killed", name, self.time_limit_s)
                    raise RenderTimedOut(
                        f"the template takes longer than {self.time_limit_s:g} s to render", field="body"
                    ) from None
                except RenderGone as exc:
                    if not exc.in_flight and attempt == 0 and child.jobs:
                        continue  # it had ended since its last job (a retired child, say): a fresh one
                    if not exc.in_flight:  # no process can be started here: render in a thread
                        log.error("%s; rendering in a thread of this process, without hard limits", exc)
                        self._in_process = True
                        return await asyncio.to_thread(run_job, name, args)
                    self.replaced += 1
                    raise TemplateError(await self._death_reason(child), field="body") from None
                finally:
                    self._busy.discard(child)
                    child.jobs += 1
                    if keep:
                        self._idle.append(child)
                    else:
                        await child.stop(kill=True)
            raise AssertionError("unreachable")

    async def _death_reason(self, child: RenderProcess) -> str:
        await child.stop(kill=True)
        if child.exit_status == -signal.SIGXCPU:
            return f"the template takes more than {self.time_limit_s:g} s of CPU to render"
        return (
            f"the render process stopped while rendering (exit status {child.exit_status}): "
            f"the template needs more than {self.memory_mb} MB or crashes it"
        )

    async def close(self) -> None:
        children, self._idle = self._idle + list(self._busy), []
        self._busy.clear()
        for child in children:
            await child.stop()


if __name__ == "__main__":
    _child(int(sys.argv[1]), float(sys.argv[2]))
