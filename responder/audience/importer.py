"""CSV import of subscribers who already consented elsewhere: streamed, validated row by row,
inserted in batches, with a report of every rejected row and why.

Columns (header row required, any order): ``email`` (required), ``name``, ``layer`` (position,
default the first layer), ``tags`` (separated by ``;``), ``consent_source`` (required unless the
import gives one for all rows), ``consented_at`` (ISO 8601, default now). Imported subscribers
are active in their layer and get its newsletters; what they get of its sequence is the
import's choice (``enroll``: none, the steps after the welcome, or all of them, optionally
spread over a period), so importing a list never mails all of it at once unless asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import insert as insert_rows
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ..core.schedule import StepPlan, check_enroll, format_duration, imported_start, parse_duration
from ..errors import Conflict, NotFound, TooLarge, ValidationError
from ..funnel.enrollments import enrollment_values, layer_sequence, record_entries, step_plans
from ..models import ConsentRecord, Enrollment, ImportJob, Layer, Subscriber
from ..runtime import Runtime
from ..validation import clean_email, clean_name
from .directory import clean_tag

log = logging.getLogger(__name__)
BATCH_ROWS = 1000
MAX_REPORTED = 1000  # rejected rows kept in the report; the count covers all of them
MAX_FIELD_CHARS = 10_000
# A running job saves its progress after every batch of BATCH_ROWS rows, seconds apart.
STALE_AFTER = dt.timedelta(minutes=10)
_SOURCE = re.compile(r"^[\w .:@/-]{1,64}$")
_TAG_SPLIT = re.compile(r"[;,]")


@dataclass
class ImportProgress:
    bytes_total: int = 0
    bytes_read: int = 0
    rows_read: int = 0
    imported: int = 0
    rejected: int = 0
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: int, email: str, field_name: str | None, reason: str) -> None:
        self.rejected += 1
        if len(self.rejected_rows) < MAX_REPORTED:
            self.rejected_rows.append({"row": row, "email": email[:254], "field": field_name, "reason": reason})


def clean_source(value: object, field_name: str = "consent_source") -> str:
    if not isinstance(value, str) or not _SOURCE.match(value.strip()):
        raise ValidationError(
            "a consent source is required: 1-64 letters, digits, spaces or '.:@/-' naming where the consent was given",
            field=field_name,
        )
    return value.strip()


@dataclass(frozen=True)
class ImportRow:
    email: str
    name: str
    position: int
    tags: list[str]
    consent_source: str
    consented_at: dt.datetime


def parse_row(
    raw: dict[str, Any], *, positions: set[int], default_position: int, default_source: str | None, now: dt.datetime
) -> ImportRow:
    """One CSV row → a clean ``ImportRow``, or ``ValidationError`` naming the bad field."""
    if None in raw or any(v is None for v in raw.values()):
        raise ValidationError("the row does not have as many fields as the header", field=None)
    if any(len(v) > MAX_FIELD_CHARS for v in raw.values()):
        raise ValidationError("a field is too long", field=None)
    if any("\ufffd" in v for v in raw.values()):
        raise ValidationError("the row is not valid UTF-8", field=None)
    layer = (raw.get("layer") or "").strip()
    if not layer:
        position = default_position
    elif layer.isdigit() and int(layer) in positions:
        position = int(layer)
    else:
        raise ValidationError(f"there is no layer {layer!r}", field="layer")
    tags = [clean_tag(t.strip(), "tags") for t in _TAG_SPLIT.split(raw.get("tags") or "") if t.strip()]
    source = (raw.get("consent_source") or "").strip() or default_source
    consented_at = now
    when = (raw.get("consented_at") or "").strip()
    if when:
        try:
            consented_at = dt.datetime.fromisoformat(when)
        except ValueError as exc:
            raise ValidationError("consented_at is not an ISO 8601 date", field="consented_at") from exc
        if consented_at.tzinfo is None:
            consented_at = consented_at.replace(tzinfo=dt.UTC)
        if consented_at > now:
            raise ValidationError("consented_at is in the future", field="consented_at")
    return ImportRow(
        email=clean_email(raw.get("email")),
        name=clean_name(raw.get("name")),
        position=position,
        tags=list(dict.fromkeys(tags)),
        consent_source=clean_source(source),
        consented_at=consented_at,
    )


class CountingLines:
    """Decoded lines of a binary file, counting the bytes read for progress."""

    def __init__(self, binary: IO[bytes]) -> None:
        self.binary = binary
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        first = True
        for line in self.binary:
            self.bytes_read += len(line)
            text = line.decode("utf-8", errors="replace")
            if first:
                text, first = text.removeprefix("\ufeff"), False
            yield text


Progress = Callable[[ImportProgress], Awaitable[None] | None]


@dataclass(frozen=True)
class Enroll:
    """What imported subscribers get of their layer's sequence (core.schedule.imported_start)."""

    mode: str = "none"
    spread_s: int = 0

    @classmethod
    def parse(cls, mode: str | None, spread: str | None) -> Enroll:
        """From a form, the API or the command line: ``mode`` none|next|start, ``spread`` a
        duration such as 7d (empty: at once); refused with a clear error otherwise."""
        enroll = cls(mode=(mode or "none").strip(), spread_s=parse_duration(spread) if spread else 0)
        check_enroll(enroll.mode, enroll.spread_s)
        return enroll

    def describe(self) -> str:
        what = {
            "none": "their layer's newsletters only, no sequence mail",
            "next": "their layer's sequence from its second step on (no welcome)",
            "start": "their layer's whole sequence from its first step",
        }[self.mode]
        if self.mode != "none" and self.spread_s:
            what += f", their first mail spread evenly over {format_duration(self.spread_s)}"
        return what


async def import_csv(
    rt: Runtime,
    binary: IO[bytes],
    *,
    consent_source: str | None,
    enroll: Enroll | None = None,
    bytes_total: int = 0,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ImportProgress:
    """Read, validate and insert; ``progress`` is called after every batch."""
    default_source = clean_source(consent_source) if consent_source else None
    enroll = enroll or Enroll()
    lines = CountingLines(binary)
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    if "email" not in [h.strip() for h in header]:
        raise ValidationError("the first row must be a header naming an 'email' column", field="file")
    reader.fieldnames = [h.strip() for h in header]
    state = ImportProgress(bytes_total=bytes_total)
    layers = await _layers(rt)
    if not layers:
        raise ValidationError("there are no layers to import into", field="layer")
    positions, default_position = set(layers), min(layers)
    seen: dict[str, int] = {}
    batch: list[tuple[int, ImportRow]] = []
    now = rt.clock.now()
    for raw in reader:
        state.rows_read += 1
        row_no = reader.line_num
        try:
            row = parse_row(
                raw, positions=positions, default_position=default_position, default_source=default_source, now=now
            )
        except ValidationError as exc:
            state.reject(row_no, str(raw.get("email") or ""), exc.field, exc.message)
            continue
        if row.email in seen:
            state.reject(row_no, row.email, "email", f"the address is also on row {seen[row.email]}")
            continue
        seen[row.email] = row_no
        batch.append((row_no, row))
        if len(batch) >= batch_rows:
            await _insert(rt, batch, layers, state, now, enroll)
            batch = []
            state.bytes_read = lines.bytes_read
            await _report(progress, state)
    if batch:
        await _insert(rt, batch, layers, state, now, enroll)
    state.bytes_read = lines.bytes_read
    await _report(progress, state)
    return state


async def _report(progress: Progress | None, state: ImportProgress) -> None:
    if progress is not None:
        result = progress(state)
        if result is not None:
            await result
    await asyncio.sleep(0)  # let the server answer requests between batches


@dataclass(frozen=True)
class LayerPlan:
    layer: Layer
    sequence_id: int | None
    steps: list[StepPlan]


async def _layers(rt: Runtime) -> dict[int, LayerPlan]:
    plans: dict[int, LayerPlan] = {}
    async with rt.db.read() as session:
        for layer in (await session.execute(select(Layer).where(Layer.removed_at.is_(None)))).scalars():
            sequence = await layer_sequence(session, layer.id)
            steps = await step_plans(session, sequence.id) if sequence else []
            plans[layer.position] = LayerPlan(
                layer, sequence.id if sequence else None, [StepPlan(s.position, s.delay_s) for s in steps]
            )
    return plans


async def _insert(
    rt: Runtime,
    batch: list[tuple[int, ImportRow]],
    layers: dict[int, LayerPlan],
    state: ImportProgress,
    now: dt.datetime,
    enroll: Enroll,
    action: str = "import",
) -> None:
    """One transaction per batch: new subscribers, their consent records and enrollments.
    Addresses already on the list are left untouched and reported."""
    async with rt.db.transaction() as session:
        insert = sqlite.insert if rt.db.is_sqlite else postgresql.insert
        stmt = (
            insert(Subscriber)
            .on_conflict_do_nothing(index_elements=["email"])
            .returning(Subscriber.id, Subscriber.email)
        )
        created = dict(
            (
                await session.execute(
                    stmt,
                    [
                        {
                            "email": r.email,
                            "name": r.name,
                            "status": "active",
                            "layer_id": layers[r.position].layer.id,
                            "layer_entered_at": now,
                            "attributes": {},
                            "tags": r.tags,
                            "created_at": now,
                            "confirmed_at": r.consented_at,
                            "unsubscribed_at": None,
                        }
                        for _, r in batch
                    ],
                )
            ).all()
        )
        by_email = {email: id_ for id_, email in created.items()}
        consents, enrollments, entries = [], [], []
        for row_no, row in batch:
            subscriber_id = by_email.get(row.email)
            if subscriber_id is None:
                state.reject(row_no, row.email, "email", "already a subscriber; left unchanged")
                continue
            entries.append((subscriber_id, layers[row.position].layer))
            consents.append(
                {
                    "subscriber_id": subscriber_id,
                    "action": action,
                    "form": row.consent_source,
                    "wording_sha256": None,
                    "ip": None,
                    "user_agent": None,
                    "created_at": row.consented_at,
                }
            )
            plan = layers[row.position]
            start = imported_start(plan.steps, enroll.mode, enroll.spread_s, subscriber_id, now)
            if plan.sequence_id is not None and start is not None:
                steps, starts_at = start
                enrollments.append(enrollment_values(subscriber_id, plan.sequence_id, steps, starts_at))
        if consents:
            await session.execute(insert_rows(ConsentRecord), consents)
            await record_entries(session, entries, "imported", now)
        if enrollments:
            await session.execute(insert_rows(Enrollment), enrollments)
        state.imported += len(consents)
    if enrollments:
        rt.wake_scheduler()


async def add_one(
    rt: Runtime, fields: dict[str, Any], *, consent_source: str | None, enroll: Enroll | None = None
) -> int:
    """One subscriber added by an admin (the API, the admin page): checked as an import row is
    (address, name, layer position, tags, a consent source saying where they agreed), active
    at once, consent recorded as ``admin``; the new id, or ``Conflict`` if the address is on
    the list already (left unchanged)."""
    layers = await _layers(rt)
    if not layers:
        raise ValidationError("there are no layers to add to", field="layer")
    now = rt.clock.now()
    raw = {key: str(fields.get(key) or "") for key in ("email", "name", "layer", "tags", "consented_at")}
    default_source = clean_source(consent_source) if consent_source else None
    row = parse_row(raw, positions=set(layers), default_position=min(layers), default_source=default_source, now=now)
    state = ImportProgress()
    await _insert(rt, [(1, row)], layers, state, now, enroll or Enroll(), action="admin")
    if not state.imported:
        raise Conflict(f"{row.email} is already a subscriber; left unchanged", field="email")
    async with rt.db.read() as session:
        return int((await session.execute(select(Subscriber.id).where(Subscriber.email == row.email))).scalar_one())


async def run_job(
    rt: Runtime, job_id: int, path: Path, consent_source: str | None, enroll: Enroll | None = None
) -> None:
    """Import a spooled upload, writing progress to its job row; the file is removed after."""

    async def save(progress: ImportProgress, **extra: Any) -> None:
        async with rt.db.transaction() as session:
            job = await session.get(ImportJob, job_id)
            assert job is not None
            if job.state != "running":  # declared dead after STALE_AFTER without progress
                raise _Abandoned(job.state)
            job.updated_at = rt.clock.now()
            job.bytes_read, job.rows_read = progress.bytes_read, progress.rows_read
            job.imported, job.rejected = progress.imported, progress.rejected
            job.rejected_rows = list(progress.rejected_rows)
            for key, value in extra.items():
                setattr(job, key, value)

    async def settle(progress: ImportProgress, **extra: Any) -> None:
        with contextlib.suppress(_Abandoned):  # already failed: leave its row as it is
            await save(progress, **extra)

    state = ImportProgress(bytes_total=path.stat().st_size)
    try:
        with path.open("rb") as binary:
            state = await import_csv(
                rt,
                binary,
                consent_source=consent_source,
                enroll=enroll or Enroll(),
                bytes_total=state.bytes_total,
                progress=save,
            )
        await settle(state, state="done", finished_at=rt.clock.now())
    except _Abandoned:
        log.error("import job %s: stopped, its row was marked failed after %s without progress", job_id, STALE_AFTER)
    except ValidationError as exc:
        await settle(state, state="failed", error=exc.message, finished_at=rt.clock.now())
    except asyncio.CancelledError:
        await settle(
            state,
            state="failed",
            error="the server stopped during the import; rows imported so far stay, run the rest again",
            finished_at=rt.clock.now(),
        )
        raise
    except Exception as exc:
        log.exception("import job %s failed", job_id)
        await settle(state, state="failed", error=f"internal error: {type(exc).__name__}", finished_at=rt.clock.now())
    finally:
        path.unlink(missing_ok=True)


class _Abandoned(Exception):
    """The job's row is no longer "running": it was declared dead, so the import stops rather
    than overwrite that (its rows so far stay, as the error message says)."""


def job_json(job: ImportJob) -> dict[str, Any]:
    done = job.bytes_read / job.bytes_total if job.bytes_total else (1.0 if job.state != "running" else 0.0)
    return {
        "id": job.id,
        "state": job.state,
        "consent_source": job.consent_source or None,
        "enroll": {"mode": job.enroll, "spread_s": job.spread_s},
        "they_get": Enroll(job.enroll, job.spread_s).describe(),
        "progress": 1.0 if job.state == "done" else round(min(done, 1.0), 4),
        "rows_read": job.rows_read,
        "imported": job.imported,
        "rejected": job.rejected,
        "rejected_rows": job.rejected_rows,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


async def get_job(rt: Runtime, job_id: int) -> ImportJob:
    """The job; one still "running" without progress for ``STALE_AFTER`` is marked failed: the
    process running it was killed or lost its host (a stop it sees marks the job itself)."""
    async with rt.db.read() as session:
        job = await session.get(ImportJob, job_id)
    if job is None:
        raise NotFound("no such import")
    now = rt.clock.now()
    last = job.updated_at or job.created_at
    if job.state != "running" or now - last < STALE_AFTER:
        return job
    async with rt.db.transaction() as session:
        stale = await session.get(ImportJob, job_id)
        assert stale is not None
        if stale.state == "running" and (stale.updated_at or stale.created_at) == last:
            stale.state, stale.finished_at = "failed", now
            stale.error = (
                f"the server running it stopped (no progress since "
                f"{last:%Y-%m-%d %H:%M} UTC); rows imported so far stay, run the rest "
                "again"
            )
        job = stale
    return job


class ImportJobs:
    """The imports running in this process; stopped (and marked failed) when the app stops."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        remove_orphaned_spools()

    async def start(self, rt: Runtime, path: Path, consent_source: str | None, enroll: Enroll | None = None) -> int:
        source = clean_source(consent_source) if consent_source else None
        enroll = enroll or Enroll()
        async with rt.db.transaction() as session:
            job = ImportJob(
                state="running",
                consent_source=source or "",
                enroll=enroll.mode,
                spread_s=enroll.spread_s,
                bytes_total=path.stat().st_size,
                rejected_rows=[],
                created_at=rt.clock.now(),
                updated_at=rt.clock.now(),
            )
            session.add(job)
            await session.flush()
            job_id = job.id
        task = asyncio.create_task(run_job(rt, job_id, path, source, enroll), name=f"import-{job_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return job_id

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


SPOOL_PREFIX = "responder-import-"


def remove_orphaned_spools(directory: str | None = None) -> int:
    """Delete spooled uploads whose server process is gone (killed before it could remove
    them: each name carries its process id); how many. Files of live processes stay."""
    removed = 0
    for path in Path(directory or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*.csv"):
        pid = path.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed += 1
        except OSError:  # alive, another user's
            continue
    if removed:
        log.info("removed %d upload(s) left by import processes that were killed", removed)
    return removed


async def spool(chunks: AsyncIterator[bytes], max_bytes: int) -> Path:
    """Write an upload to a temporary file without holding it in memory; its name carries
    this process's id, so a later start can remove it if the process is killed mid-import."""
    fd, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", suffix=".csv")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"the file is larger than {max_bytes} bytes")
                handle.write(chunk)
        if size == 0:
            raise ValidationError("the CSV file is empty", field="file")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
