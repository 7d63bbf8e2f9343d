"""The Jinja sandbox every uploaded template runs in, with hard limits on size and time.

Defence in layers, because an uploaded template is code:
- ``ImmutableSandboxedEnvironment``: no dunder attributes, no mutation of lists or dicts, only
  plain data in the context; ``namespace`` and ``lipsum`` are removed (no state carried across
  loop iterations, no built-in text generator).
- Operators and calls that could allocate a huge value in one C-level step (``'a' * 10**9``,
  ``2 ** 10**9``, ``'%999999999d' % 1``, ``'x'.ljust(10**9)``, ``s|replace('a', big)``) are
  checked *before* they run.
- Output is streamed and counted: rendering stops as soon as it passes ``MAX_RENDERED_CHARS``.
- Time: a watchdog thread raises ``RenderTimeout`` inside the rendering thread once its deadline
  passes (``PyThreadState_SetAsyncExc``), which interrupts Python-level loops such as nested
  ``range`` loops between two bytecodes. Single C-level operations cannot be interrupted that
  way, which is why the size checks above come first.
- Recursion (``{% macro f() %}{{ f() }}{% endmacro %}``) ends in ``RecursionError``, caught.
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, nodes, pass_eval_context
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_center, do_format, do_indent, do_join, do_replace
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import TemplateError

MAX_SOURCE_BYTES = 512 * 1024
MAX_RENDERED_CHARS = 2 * 1024 * 1024
RENDER_TIME_LIMIT_S = 2.0
MAX_EXPONENT_BITS = 4096
# An integer product past this many bits is refused: one C-level multiplication, division or
# conversion of numbers that size takes milliseconds, and squaring doubles the size each time.
MAX_INT_BITS = 4096
# A width or precision in a format string ("%9999999d", "{:>9999999}") larger than this is refused.
_BIG_WIDTH = re.compile(r"\d{6,}")


class RenderTimeout(Exception):
    """Raised inside a rendering thread by the watchdog; never escapes ``render_limited``."""


def _too_big(size: int) -> bool:
    return size > MAX_RENDERED_CHARS


def _check_format_string(fmt: str) -> None:
    if _BIG_WIDTH.search(fmt):
        raise SecurityError("format width or precision too large")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


@pass_eval_context
def _safe_replace(env: Any, value: Any, old: str, new: str, count: int | None = None) -> Any:
    text = str(value)
    hits = text.count(str(old)) if old else len(text) + 1
    if count is not None:
        hits = min(hits, max(count, 0))
    if _too_big(len(text) + hits * max(0, len(str(new)) - len(str(old)))):
        raise SecurityError("replace would produce too large a value")
    return do_replace(env, value, old, new, count)


def _width_checked(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def filter_(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        size = len(width) if isinstance(width, str) else int(width)
        if _too_big(size * (str(value).count("\n") + 1) + len(str(value))):
            raise SecurityError(f"{name} width too large")
        return original(value, width, *args, **kwargs)

    return filter_


def _safe_format(value: Any, *args: Any, **kwargs: Any) -> Any:
    _check_format_string(str(value))
    return do_format(value, *args, **kwargs)


def _joined_size(sep: str, items: list[Any]) -> int:
    return sum(len(str(item)) for item in items) + len(sep) * max(len(items) - 1, 0)


@pass_eval_context
def _safe_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
    items = list(value) if not isinstance(value, (str, list, tuple)) else value
    if _too_big(_joined_size(str(d), list(items))):
        raise SecurityError("join would produce too large a value")
    return do_join(eval_ctx, items, d, attribute)


def _str_method_size(method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """How long the result of a ``str`` method called from a template would be, worked out
    before calling it (0 when it cannot grow the text)."""
    text: str = method.__self__  # type: ignore[attr-defined]
    name = method.__name__
    if name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            hits = min(hits, args[2])
        return len(text) + hits * max(0, len(new) - len(old))
    if name == "join" and args:
        return _joined_size(text, list(args[0]))
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        return max(args[0], len(text))
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        return len(text) + text.count("\t") * max(int(size), 0)
    return 0


class _SizedConcat(CodeGenerator):
    """Compiles ``a ~ b`` through ``MailEnvironment.sized_concat``, so chained concatenation
    (each step doubling a value) is refused past the size limit like ``+`` and ``*``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class MailEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with size checks on the operators and calls that can blow up memory or spend
    seconds in one C-level step: ``*``, ``**``, ``%``, ``+``, ``~``, string methods and filters
    that pad, replace, join or expand."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])
    code_generator_class = _SizedConcat

    @staticmethod
    def sized_concat(value: Any) -> Any:
        if _too_big(len(value)):
            raise SecurityError("concatenation would produce too large a value")
        return value

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=StrictUndefined)
        for name in ("namespace", "lipsum"):
            self.globals.pop(name, None)
        self.filters["replace"] = _safe_replace
        self.filters["center"] = _width_checked("center", do_center)
        self.filters["indent"] = _width_checked("indent", do_indent)
        self.filters["format"] = _safe_format
        self.filters["join"] = _safe_join

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if _sized(seq) and isinstance(times, int) and _too_big(_sized(seq) * times):
                    raise SecurityError("multiplication would produce too large a value")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise SecurityError("multiplication would produce too large a number")
        elif op == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and (abs(right) * max(abs(left), 1).bit_length() > MAX_EXPONENT_BITS)
            ):
                raise SecurityError("power would produce too large a number")
        elif op == "%" and isinstance(left, str):
            _check_format_string(left)
        elif op == "+" and _too_big(_sized(left) + _sized(right)):
            raise SecurityError("concatenation would produce too large a value")
        return super().call_binop(context, op, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and _too_big(abs(arg)):
                raise SecurityError("argument too large")
            if _too_big(_sized(arg)):
                raise SecurityError("argument too large")
        if isinstance(getattr(obj, "__self__", None), str) and _too_big(_str_method_size(obj, args, kwargs)):
            raise SecurityError(f"{obj.__name__} would produce too large a value")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_string(value.__self__)
        return wrapped


@lru_cache(maxsize=1)
def html_env() -> MailEnvironment:
    return MailEnvironment(autoescape=True)


@lru_cache(maxsize=1)
def text_env() -> MailEnvironment:
    # Subjects and text bodies are not HTML: escaping would turn "&" into "&amp;".
    return MailEnvironment(autoescape=False)


@lru_cache(maxsize=512)
def compiled(env: MailEnvironment, source: str) -> Template:
    """Jinja compiles a template to Python once per process, not once per recipient."""
    return env.from_string(source)


class _Watchdog:
    """One daemon thread that interrupts renders running past their deadline.

    The exception lands between two bytecodes of whatever Python code the rendering thread runs,
    which may be a callback the garbage collector started mid-render (a weak reference's), where
    it is swallowed ("Exception ignored in …"). So it is raised again every ``REFIRE_S`` until the
    render is over, and a swallowed one is not reported (``_unraisable``)."""

    POLL_S = 0.02
    REFIRE_S = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, list[Any]] = {}  # thread id → [deadline, fired, next firing]
        self._thread: threading.Thread | None = None

    def add(self, deadline: float) -> list[Any]:
        entry = [deadline, False, deadline]
        with self._lock:
            self._running[threading.get_ident()] = entry
            if self._thread is None:
                previous = sys.unraisablehook

                def _unraisable(unraisable: Any) -> None:
                    if unraisable.exc_type is not RenderTimeout:  # else: raised again shortly
                        previous(unraisable)

                sys.unraisablehook = _unraisable
                self._thread = threading.Thread(target=self._run, name="render-watchdog", daemon=True)
                self._thread.start()
        return entry

    def remove(self, entry: list[Any]) -> None:
        tid = threading.get_ident()
        with self._lock:
            if self._running.get(tid) is entry:
                del self._running[tid]
            if entry[1]:
                # Fired just as the render finished: drop the pending exception, if still pending.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL_S)
            now = time.monotonic()
            with self._lock:
                for tid, entry in self._running.items():
                    if now > entry[2]:
                        entry[1], entry[2] = True, now + self.REFIRE_S
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(RenderTimeout))


_watchdog = _Watchdog()


def render_limited(
    template: Template,
    context: Mapping[str, Any],
    part: str,
    time_limit_s: float = RENDER_TIME_LIMIT_S,
) -> str:
    """Render within the size and time limits; any failure is a ``TemplateError`` for ``part``."""
    entry = _watchdog.add(time.monotonic() + time_limit_s)
    try:
        try:
            chunks: list[str] = []
            size = 0
            for chunk in template.generate(context):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise TemplateError(f"{part} renders larger than {MAX_RENDERED_CHARS // 1024} KB", field=part)
                chunks.append(chunk)
            return "".join(chunks)
        finally:
            _watchdog.remove(entry)
    except RenderTimeout:
        _watchdog.remove(entry)
        raise TemplateError(f"{part} takes longer than {time_limit_s:g} s to render", field=part) from None
    except TemplateError:
        raise
    except JinjaTemplateError as exc:
        line = error_line(exc)
        where = f", line {line}" if line else ""
        raise TemplateError(f"{part}{where}: {exc.message or exc}", field=part) from exc
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise TemplateError(f"{part} does not render: {exc.__class__.__name__}", field=part) from exc
    except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
        line = error_line(exc)
        where = f", line {line}" if line else ""
        raise TemplateError(f"{part}{where}: {exc.__class__.__name__}: {exc}", field=part) from exc


def error_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (Jinja rewrites its traceback frames)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_string(
    env: MailEnvironment, source: str, context: Mapping[str, Any], part: str, time_limit_s: float = RENDER_TIME_LIMIT_S
) -> str:
    return render_limited(compiled(env, source), context, part, time_limit_s)
