"""What the public endpoints share: forms, rate limiters, proof of work, the tracking queue,
CORS for configured origins, and reading a body with a size cap and a deadline."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.exc import DBAPIError, OperationalError

from ...audience.limits import mailbox_key
from ...errors import Busy, ResponderError, SlowBody, TooLarge, ValidationError
from ...runtime import Runtime
from ...tracking.batch import Tracker
from ...validation import clean_form_id
from ..http import client_ip, no_json_constant, runtime
from ..ratelimit import SlidingWindow, check
from .forms import Form, Forms, load_forms
from .pow import ProofOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")
HOUR_S = 3600.0
CORS_PATHS = ("/subscribe", "/enquiry")
MAX_FIELDS = 64


@dataclass
class Public:
    forms: Forms
    per_ip: SlidingWindow
    per_address: SlidingWindow
    pow: ProofOfWork
    tracker: Tracker

    def limit_ip(self, request: web.Request) -> None:
        ip = client_ip(request) or "unknown"
        check(self.per_ip, ip, runtime(request).clock.now().timestamp(), "IP address")

    async def form_post(self, request: web.Request) -> tuple[dict[str, Any], Form, str | None]:
        """The shared start of every public form POST: per-IP limit, body, form, and the
        redirect target, which must be one the form allows (exactly)."""
        self.limit_ip(request)
        data = await read_body(request)
        form = self.forms.get(clean_form_id(data.get("form")))
        redirect = data.get("redirect")
        if redirect in (None, ""):
            return data, form, None
        if redirect not in form.redirects:
            raise ValidationError("this form may not redirect there", field="redirect")
        return data, form, str(redirect)

    def limit_address(self, request: web.Request, email: str) -> None:
        # By mailbox: every +tag of an address, every dotted spelling at Gmail, is one inbox.
        check(self.per_address, mailbox_key(email), runtime(request).clock.now().timestamp(), "address")


PUBLIC = web.AppKey("public", Public)


def public(request: web.Request) -> Public:
    return request.app[PUBLIC]


def setup_public(app: web.Application, rt: Runtime) -> None:
    """Attach the shared state, the tracking flusher and CORS to the app."""
    settings = rt.settings
    assert settings.secret_key is not None
    state = Public(
        forms=load_forms(settings),
        per_ip=SlidingWindow(settings.subscribe_per_ip_per_hour, HOUR_S),
        per_address=SlidingWindow(settings.subscribe_per_address_per_hour, HOUR_S),
        pow=ProofOfWork(settings.secret_key, rt.clock),
        tracker=Tracker(rt),
    )
    app[PUBLIC] = state
    app.cleanup_ctx.append(_run_tracker)


async def _run_tracker(app: web.Application) -> AsyncIterator[None]:
    tracker = app[PUBLIC].tracker
    task = asyncio.create_task(tracker.run(), name="tracking")
    yield
    tracker.stop()
    try:  # what is queued is written before the process ends, if the database allows
        await asyncio.wait_for(asyncio.shield(task), timeout=5)
    except TimeoutError:
        task.cancel()
        await asyncio.wait([task], timeout=5)
    await tracker.close()
    await _settle_pending_writes()


async def _settle_pending_writes() -> None:
    """Let form writes that outlived their answer finish (or cancel them) before the pool goes."""
    pending = set(_pending_writes)
    if not pending:
        return
    _done, late = await asyncio.wait(pending, timeout=5)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=5)


def add_tracking_metrics(request: web.Request, registry: CollectorRegistry) -> None:
    """The tracking queue's counters on /metrics: queued, written, dropped, failed flushes."""
    if PUBLIC not in request.app:
        return
    stats = request.app[PUBLIC].tracker.stats
    gauge = Gauge(
        "responder_tracking_events",
        "Opens and clicks through the write queue, by outcome",
        ["outcome"],
        registry=registry,
    )
    for outcome in ("queued", "written", "dropped"):
        gauge.labels(outcome).set(getattr(stats, outcome))
    Gauge("responder_tracking_pending", "Opens and clicks waiting to be written", registry=registry).set(
        request.app[PUBLIC].tracker.pending
    )
    Gauge("responder_tracking_failed_flushes", "Batches the database refused (retried)", registry=registry).set(
        stats.failed_flushes
    )


def allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin:
        return None
    cors_path = request.path in CORS_PATHS or (
        request.path.startswith("/subscribe/") and request.path.endswith("/challenge")
    )
    if cors_path and PUBLIC in request.app and request.app[PUBLIC].forms.allows_origin(origin):
        return origin
    return None


def cors_headers(request: web.Request, headers: MutableMapping[str, str]) -> None:
    """Let a landing page on an allowed origin read the answer (errors and redirects too)."""
    origin = allowed_origin(request)
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"


async def preflight(request: web.Request) -> web.Response:
    if allowed_origin(request) is None:
        return web.Response(status=403, text="origin not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


async def read_body(request: web.Request) -> dict[str, Any]:
    """A form or JSON body as a dict, refused early when its declared size is too large and
    cut off when the client sends it too slowly."""
    settings = runtime(request).settings
    declared = request.content_length
    if declared is not None and declared > settings.max_body_bytes:
        raise TooLarge(f"request body is larger than {settings.max_body_bytes} bytes")
    is_json = request.content_type == "application/json"
    if not is_json and request.content_type not in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/octet-stream",
    ):
        raise ValidationError("send the form as application/x-www-form-urlencoded or JSON")
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            if is_json:
                raw = await request.read()
            else:
                form = await request.post()
    except TimeoutError as exc:
        raise SlowBody(f"the request body did not arrive within {settings.body_timeout_s:g} s") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLarge(f"request body is larger than {settings.max_body_bytes} bytes") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("the form body cannot be read") from exc
    if is_json:
        try:
            data = json.loads(raw or b"{}", parse_constant=no_json_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ValidationError("body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ValidationError("body must be a JSON object")
    else:
        data = {key: value for key, value in form.items() if isinstance(value, str)}
    if len(data) > MAX_FIELDS:
        raise ValidationError(f"more than {MAX_FIELDS} fields")
    return data


@contextmanager
def database_guard() -> Iterator[None]:
    """Turn a locked, full or unreachable database into 503 instead of 500."""
    try:
        yield
    except (OperationalError, DBAPIError, OSError) as exc:
        raise Busy("we are busy right now; please try again in a moment") from exc


MAX_PENDING_WRITES = 100
_pending_writes: set[asyncio.Task[Any]] = set()


async def with_deadline(request: web.Request, work: Coroutine[Any, Any, T]) -> T:
    """Run a form's database work, answering 503 if it does not finish in time.

    The work is not cancelled mid-statement (that would leave the connection stuck behind the
    lock): it goes on in the background and its effect is idempotent, so a retry is harmless.
    At most ``MAX_PENDING_WRITES`` run on like that; beyond, forms answer 503 at once.
    """
    if len(_pending_writes) >= MAX_PENDING_WRITES:
        work.close()
        raise Busy("we are busy right now; please try again in a moment")
    task = asyncio.ensure_future(work)
    _pending_writes.add(task)
    task.add_done_callback(_finished)
    with database_guard():
        try:
            return await asyncio.wait_for(asyncio.shield(task), runtime(request).settings.form_write_timeout_s)
        except TimeoutError as exc:
            raise Busy("we are busy right now; please try again in a moment") from exc


def _finished(task: asyncio.Task[Any]) -> None:
    _pending_writes.discard(task)
    if (
        not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), ResponderError)
    ):  # those reached the caller as a clear answer
        log.warning("a form write finished after its answer and failed: %r", task.exception())
