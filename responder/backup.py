"""``responder backup FILE``: a consistent copy of the SQLite database, taken while responder runs.

The copy goes through SQLite's online backup API a few MiB at a time with a short pause between
steps, each step a short read transaction: the serving process's writer never waits for it (the
database is in WAL mode, where readers do not block the writer). A commit by another connection
between two steps makes SQLite start the copy over, so on a database that changes all the time
the steps could start over forever; after a few restarts the rest is copied in one step, one
read transaction that sees a single snapshot while the writer goes on beside it.

The copy is written to ``FILE.tmp`` (mode 0600: the database holds the secret key), switched out
of WAL so it is one self-contained file, synced to disk and then renamed to ``FILE``: a crash
leaves the old backup or the new one, never half of one. PostgreSQL has ``pg_dump`` for this.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from .errors import ConfigError
from .settings import Settings, mask_url_password

PAGES_PER_STEP = 1024  # 4 MiB at SQLite's default page size
PAUSE_S = 0.01
MAX_RESTARTS = 3
BUSY_TIMEOUT_S = 30.0


class _StartedOver(Exception):
    """The paged copy started over more than ``MAX_RESTARTS`` times."""


def copy_sqlite(
    source: Path,
    target: Path,
    *,
    pages_per_step: int = PAGES_PER_STEP,
    pause_s: float = PAUSE_S,
    max_restarts: int = MAX_RESTARTS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Copy the database ``source`` into ``target`` (an empty or absent file); the number of
    pages copied."""
    # mode=rw: a missing file is an error rather than a new empty database.
    src = sqlite3.connect(source.resolve().as_uri() + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S)
    dst = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S)
    try:
        restarts = 0
        left: int | None = None

        def progress(status: int, remaining: int, total: int) -> None:
            nonlocal restarts, left
            if status not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                # Every step that is not refused copies pages: no fewer left means started over.
                if left is not None and remaining >= left:
                    restarts += 1
                    if restarts > max_restarts:
                        raise _StartedOver
                left = remaining
            if remaining:
                sleep(pause_s)

        try:
            src.backup(dst, pages=pages_per_step, progress=progress)
        except _StartedOver:
            src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")
        return int(dst.execute("PRAGMA page_count").fetchone()[0])
    finally:
        dst.close()
        src.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_file(source: Path, target: Path, *, force: bool) -> int:
    """Copy ``source`` to ``target`` by way of ``target.tmp``; the number of pages copied."""
    if not source.is_file():
        raise ConfigError(f"no database at {source}")
    if target.is_dir():
        raise ConfigError(f"{target} is a directory; name the backup file")
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; not overwriting it (--force replaces it)")
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"{target} is the database itself")
    tmp = target.with_name(target.name + ".tmp")
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):  # of a backup that was killed
        leftover.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        pages = copy_sqlite(source, tmp)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync(target.resolve().parent)
    return pages


def pg_dump_command(database_url: str, target: str) -> str:
    """The ``pg_dump`` command line that backs up ``database_url`` into ``target``, the password
    masked."""
    url = make_url(database_url).set(drivername="postgresql")
    uri = mask_url_password(url.render_as_string(hide_password=False))
    return f"pg_dump --format=custom --file={shlex.quote(target)} {shlex.quote(uri)}"


def backup_command(settings: Settings, target: str, *, force: bool) -> int:
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        print("responder: error: `responder backup` copies SQLite databases; on PostgreSQL run:", file=sys.stderr)
        print(f"  {pg_dump_command(settings.database_url, target)}", file=sys.stderr)
        if url.password:
            print("  (the password in place of ******, or in PGPASSWORD or ~/.pgpass)", file=sys.stderr)
        return 2
    if url.database in (None, "", ":memory:"):
        raise ConfigError("the database is in memory: there is no file to back up")
    source = Path(url.database)
    started = time.monotonic()
    pages = backup_file(source, Path(target), force=force)
    size = Path(target).stat().st_size
    print(f"{source} backed up to {target}: {pages} pages, {size} bytes in {time.monotonic() - started:.1f} s")
    return 0
