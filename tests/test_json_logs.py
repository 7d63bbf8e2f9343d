"""``RESPONDER_LOG_FORMAT=json``: every log line of a running server is one JSON object — the
access log, migrations, start and stop — and only the start-up banner stays plain text."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from pathlib import Path

import aiohttp
import pytest

from responder import logs
from responder.errors import ConfigError
from responder.settings import Settings

from .conftest import free_port
from .test_serve import start, stop

BANNER = ("responder listening on ", "database: ", "mail goes to: ", "first start: ", "WARNING: ", "admin token: ")
BANNER += ("subscribe form: ", "admin UI: ")


def parse(line: str) -> dict[str, object]:
    entry = json.loads(line)
    assert {"time", "level", "logger", "message"} <= entry.keys(), line
    when = dt.datetime.fromisoformat(str(entry["time"]))
    assert when.utcoffset() == dt.timedelta(0), line
    return entry


async def test_serve_logs_one_json_object_a_line(tmp_path: Path) -> None:
    port = free_port()
    proc, lines = await start(tmp_path, {"RESPONDER_LOG_FORMAT": "json"}, port)
    try:
        jar = aiohttp.CookieJar(unsafe=True)  # the login form's cookie, from an IP address
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as http:
            assert (await http.get("/healthz")).status == 200
            form = await (await http.get("/admin/login")).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf is not None
            data = {"csrf": csrf.group(1), "username": "admin", "password": "wrong"}
            assert (await http.post("/admin/login", data=data)).status == 401
    finally:
        assert await stop(proc) == 0
    assert proc.stdout is not None
    lines += (await proc.stdout.read()).decode().splitlines(keepends=True)

    entries = []
    for line in lines:
        if line.startswith(BANNER):
            continue
        entries.append(parse(line))
    loggers = {entry["logger"] for entry in entries}
    assert "alembic.runtime.migration" in loggers
    access = [entry for entry in entries if entry["logger"] == "aiohttp.access"]
    statuses = {(entry["first_request_line"], entry["response_status"]) for entry in access}
    assert {("GET /healthz HTTP/1.1", 200), ("POST /admin/login HTTP/1.1", 401)} <= statuses
    assert all(entry["level"] == "INFO" and entry["remote_address"] == "127.0.0.1" for entry in access)
    assert any(entry["logger"] == "responder" and "stopping" in str(entry["message"]) for entry in entries)


def test_exception_and_extra_fields(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("responder.test_json_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("the reason")
        except ValueError:
            logger.exception("send of %s failed", "ada@example.com", extra={"message_id": 7, "path": tmp_path})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    entry = parse(stream.getvalue())
    assert stream.getvalue().count("\n") == 1  # the traceback's lines are inside the one object
    assert entry["level"] == "ERROR" and entry["logger"] == "responder.test_json_logs"
    assert entry["message"] == "send of ada@example.com failed"
    assert "Traceback" in str(entry["exception"]) and "ValueError: the reason" in str(entry["exception"])
    assert entry["message_id"] == 7 and entry["path"] == str(tmp_path)  # not JSON: its str


def test_text_stays_the_default_and_other_formats_are_refused() -> None:
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(ConfigError, match="RESPONDER_LOG_FORMAT: must be text or json"):
        Settings.from_env({"RESPONDER_LOG_FORMAT": "xml"})
