"""The OpenAPI document matches the API: schemathesis drives a live server from the document
and checks every answer (no 500s, documented status codes, bodies that match their schemas)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from .admin_fixtures import make_subscriber
from .conftest import App

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def test_openapi_document_lists_every_admin_route(app: App) -> None:
    resp = await app.client.get("/api/v1/openapi.json")
    paths = (await resp.json())["paths"]
    documented = {(path, method.upper()) for path, ops in paths.items() for method in ops}
    routes = {
        (route.resource.canonical.replace("{id:\\d+}", "{id}"), route.method)  # type: ignore[union-attr]
        for route in app.client.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/api/v1/") and route.method != "HEAD"
    }
    assert routes - {("/api/v1/openapi.json", "GET")} == documented


@pytest.mark.slow
async def test_schemathesis_finds_no_failures(app: App, tmp_path: Path) -> None:
    await make_subscriber(app.rt, "ada@example.com", name="Ada")
    base = str(app.client.make_url("")).rstrip("/")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base}/api/v1/openapi.json",
        "--url",
        base,
        "--checks",
        CHECKS,
        "--max-examples",
        "5",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--seed",
        "1",
        "--no-color",
        "-H",
        f"Authorization: Bearer {app.rt.settings.admin_token}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    assert "No issues found" in text or "passed" in text, text
