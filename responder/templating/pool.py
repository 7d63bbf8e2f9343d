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
child answers JSON, or bytes (the parent does not unpickle what a template could have
influenced). The delivery worker's job is ``mail``: the render, then what responder adds to
every mail itself, the MIME bytes and the DKIM signatures (``delivery.assemble``), so the sending
process only sends. With ``RESPONDER_RENDER_PROCESSES=0`` jobs run in a thread of the serving
process instead: off the event loop, but without the hard limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import pickle
import resource
import signal
import struct
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..delivery.assemble import Plan, Setup, assembler
from ..errors import RenderTimedOut, TemplateError, ValidationError
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


def _mail(subject: str, html: str, text: str | None, context: Mapping[str, Any], setup: Setup, plan: Plan) -> bytes:
    """One mail's bytes, signed: ``render_parts``, then ``delivery.assemble``."""
    return assembler(setup).bytes(render_parts(subject, html, text, context), plan)


JOBS: dict[str, Callable[..., Any]] = {"render": _render, "check": _check, "compile": _compile, "mail": _mail}


def run_job(name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """One job, answered as the child answers it: ``{"ok": result}`` or ``{"error", "field"}``
    (with ``"invalid": true`` for bad input, such as a control character in a name, and
    ``"retire": true`` when the process should not be trusted with another job)."""
    try:
        return {"ok": JOBS[name](*args)}
    except TemplateError as exc:
        answer: dict[str, Any] = {"error": exc.message, "field": exc.field}
        if isinstance(exc.__cause__, MemoryError):
            answer["retire"] = True
        return answer
    except ValidationError as exc:
        return {"error": exc.message, "field": exc.field, "invalid": True}
    except MemoryError:
        return {"error": "the template needs more memory than a render may use", "field": "body", "retire": True}
    except Exception as exc:  # a fault of ours, not the template's: said, and the process kept
        traceback.print_exc()
        return {"error": f"cannot be built: {exc.__class__.__name__}: {exc}"[:500], "field": "body"}


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
    """A mail's bytes as they are; a rendered mail as its three parts' UTF-8 bytes after their
    lengths (no JSON escaping of the HTML both ways); everything else as JSON. Never pickle: a
    template's output could influence it, and the parent must not unpickle what it does not
    trust."""
    if name == "mail" and "ok" in answer:
        return b"M" + answer["ok"]
    if name == "render" and "ok" in answer:
        parts = [part.encode("utf-8", "surrogatepass") for part in answer["ok"]]
        return b"R" + _ANSWER_PARTS.pack(*(len(part) for part in parts)) + b"".join(parts)
    return b"J" + json.dumps(answer).encode()


def decode_answer(raw: bytes) -> dict[str, Any]:
    if raw[:1] == b"M":
        return {"ok": raw[1:]}
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
    setups: dict[int, Any] = {}
    while (frame := read_frame(stdin)) is not None:
        name, jobs = pickle.loads(frame)
        for args in jobs:  # one answer each, in order
            # The kernel sends SIGXCPU (which ends the process) once this job has used its share.
            soft = math.ceil(_cpu_used() + time_limit_s) + 1
            limit = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
            if name in ("render", "mail"):  # (key, sources or None, context[, setup key, setup or None, plan])
                key, sources, context, *mail = args
                if sources is not None:
                    kept.keep(key, sources)
                args = (*kept.get(key), context)
                if mail:
                    setup_key, setup, plan = mail
                    if setup is not None:
                        setups[setup_key] = setup
                    args = (*args, setups[setup_key], plan)
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
        self.setups: set[int] = set()  # the keys of the mail setups it was sent

    async def stop(self, *, kill: bool = False) -> None:
        process = self._process
        if process is not None and kill and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await self.close()
        if process is not None:
            self.exit_status = process.returncode


# A worker's batch goes to the children in chunks of at most this many mails, one frame each way
# per chunk and one answer frame per mail: a child works through a chunk without waiting on the
# parent between mails, and the first mails can be sent while the rest are built.
CHUNK = 16


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
        self._setups: dict[Setup, int] = {}  # mail setups → their key, the same in every child
        self._chunks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Any) -> Renderer:
        return cls(settings.render_processes, settings.render_time_limit_s, settings.render_memory_mb)

    async def render(self, subject: str, html: str, text: str | None, context: Mapping[str, Any]) -> Rendered:
        """``render.render_parts`` in a child."""
        subject_out, html_out, text_out = await self._run("render", (subject, html, text, context))
        return Rendered(subject_out, html_out, text_out)

    def mails(
        self, jobs: Sequence[tuple[str, str, str | None, Mapping[str, Any], Plan]], setup: Setup
    ) -> list[asyncio.Future[bytes]]:
        """Each mail's bytes, rendered from ``(subject, html, text, context, plan)``, assembled
        and signed in a child (``delivery.assemble``), as a future resolved when that mail is
        done. A template's fault raises ``TemplateError`` (``RenderTimedOut`` past the time
        limit); a header the mail cannot carry (a control character in a name),
        ``ValidationError``."""
        return self._start("mail", [(*job[:4], setup, job[4]) for job in jobs])

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
        return await self._start(name, [args])[0]

    def _start(self, name: str, jobs: Sequence[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        """A future per job; the jobs spread over the children in chunks, side by side."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in jobs]
        size = min(CHUNK, max(1, math.ceil(len(jobs) / max(self.processes, 1))))
        for at in range(0, len(jobs), size):
            chunk = list(zip(jobs[at : at + size], futures[at : at + size], strict=True))
            task = asyncio.create_task(self._chunk(name, chunk))
            self._chunks.add(task)
            task.add_done_callback(self._chunks.discard)
        return futures

    @staticmethod
    def _settle(future: asyncio.Future[Any], answer: dict[str, Any]) -> None:
        if future.done():  # the caller gave up on it
            return
        if "error" in answer:
            error: Exception = (
                ValidationError(str(answer["error"]), field=answer.get("field"))
                if answer.get("invalid")
                else TemplateError(str(answer["error"]), field=answer.get("field") or "body")
            )
            future.set_exception(error)
        else:
            future.set_result(answer["ok"])

    @staticmethod
    def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    async def _chunk(self, name: str, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            if self._in_process:
                await self._in_thread(name, pending)
            else:
                await self._in_child(name, pending)
        except BaseException as exc:  # cancelled (closing) or a fault of ours: no job is left waiting
            stopped = RenderTimedOut("the render processes were stopped before this render was done", field="body")
            for _, future in pending:
                self._fail(future, exc if isinstance(exc, Exception) else stopped)
            raise

    async def _in_thread(self, name: str, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        for args, future in pending:
            if not future.done():
                self._settle(future, await asyncio.to_thread(run_job, name, args))

    def _payload(self, child: RenderProcess, name: str, jobs: list[tuple[Any, ...]]) -> bytes:
        """One frame for ``jobs``: each template's sources and each mail setup only the first
        time this child sees them (while it keeps them), their keys after that."""
        sent = []
        for args in jobs:
            if name in ("render", "mail"):
                subject, html, text, context, *mail = args
                sources = (subject, html, text)
                key = self._keys.get(sources)
                if key is None:
                    if len(self._keys) > 4 * SOURCES_KEPT:
                        self._keys.clear()  # keys only grow, so a fresh key is never a stale one
                    key = self._keys[sources] = next(self._next_key)
                args = (key, None if child.kept.has(key) else sources, dict(context))
                if args[1] is not None:
                    child.kept.keep(key, sources)
                if mail:
                    setup, plan = mail
                    setup_key = self._setups.get(setup)
                    if setup_key is None:
                        setup_key = self._setups[setup] = next(self._next_key)
                    args += (setup_key, None if setup_key in child.setups else setup, plan)
                    child.setups.add(setup_key)
            sent.append(args)
        return pickle.dumps((name, sent), protocol=pickle.HIGHEST_PROTOCOL)

    async def _in_child(self, name: str, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Answer ``pending`` in one child, in order. A job that runs past the time limit, or
        whose child dies, fails with the reason and costs that child; the jobs after it had not
        started, and go on in a fresh one."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        async with self._slots:
            while pending:
                child = self._idle.pop() if self._idle else RenderProcess(self.memory_mb, self.time_limit_s)
                self._busy.add(child)
                keep = False
                done = 0
                answers: list[asyncio.Future[bytes]] = []
                try:
                    answers = await child.ask_many(self._payload(child, name, [a for a, _ in pending]), len(pending))
                    for answer_future, (_, future) in zip(answers, pending, strict=True):
                        # Each job's time runs from the answer before it: the child works in order.
                        answer = decode_answer(await asyncio.wait_for(answer_future, self.time_limit_s))
                        child.jobs += 1
                        done += 1
                        self._settle(future, answer)
                        if answer.get("retire"):
                            break
                    else:
                        keep = True
                except TimeoutError:
                    self.replaced += 1
                    log.warning("a %s job ran past %g s: its render process was killed", name, self.time_limit_s)
                    self._fail(
                        pending[done][1],
                        RenderTimedOut(
                            f"the template takes longer than {self.time_limit_s:g} s to render", field="body"
                        ),
                    )
                    done += 1
                except RenderGone as exc:
                    if not exc.in_flight and child.jobs:
                        continue  # an idle child that had ended since its last job: the next, or a fresh one
                    if not exc.in_flight:  # a new process cannot be started here: render in a thread
                        log.error("%s; rendering in a thread of this process, without hard limits", exc)
                        self._in_process = True
                        await self._in_thread(name, pending)
                        return
                    self.replaced += 1
                    self._fail(pending[done][1], TemplateError(await self._death_reason(child), field="body"))
                    done += 1
                finally:
                    for unanswered in answers[done:]:  # their jobs go to a fresh child
                        if unanswered.done() and not unanswered.cancelled():
                            unanswered.exception()  # the child's death, said once above
                        unanswered.cancel()
                    self._busy.discard(child)
                    if keep:
                        self._idle.append(child)
                    else:
                        await child.stop(kill=True)
                pending = pending[done:]

    async def _death_reason(self, child: RenderProcess) -> str:
        await child.stop(kill=True)
        if child.exit_status == -signal.SIGXCPU:
            return f"the template takes more than {self.time_limit_s:g} s of CPU to render"
        return (
            f"the render process stopped while rendering (exit status {child.exit_status}): "
            f"the template needs more than {self.memory_mb} MB or crashes it"
        )

    async def close(self) -> None:
        for task in list(self._chunks):
            task.cancel()
        if self._chunks:
            await asyncio.gather(*self._chunks, return_exceptions=True)
        children, self._idle = self._idle + list(self._busy), []
        self._busy.clear()
        for child in children:
            await child.stop()


if __name__ == "__main__":
    try:
        _child(int(sys.argv[1]), float(sys.argv[2]))
    except BrokenPipeError:  # the parent is gone (killed, say) with a chunk in hand: nobody to answer
        os._exit(0)
