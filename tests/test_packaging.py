"""The wheel as an operator installs it: built with ``python -m build`` (sdist, then the wheel
from the sdist), installed with its dependencies into a fresh virtualenv outside the repository,
and ``responder serve`` from that virtualenv run in an empty folder on a new SQLite file — its
migrations, starter templates, admin pages and static files, and public pages all come from
the installed package, none from this checkout."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import aiohttp
from alembic.script import ScriptDirectory

from responder.db import MIGRATIONS_DIR
from responder.settings import default_templates_dir

from .conftest import free_port

REPO = Path(__file__).resolve().parent.parent
# What the sdist is made of: the build must not depend on anything else in the checkout.
SOURCES = ("pyproject.toml", "README.md", "responder")


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the sources so the checkout is left as it was (setuptools
    writes its egg-info and build folders beside the sources)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("responder-*.whl")
    return wheel


async def test_serve_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    timings["build"] = time.monotonic() - started
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "responder").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert sources - shipped == set(), "files of responder/ missing from the wheel: see package-data in pyproject.toml"

    # A virtualenv without pip, filled by this interpreter's pip (``--python``): no ensurepip,
    # and the dependencies come from the package index as an operator's install would.
    started = time.monotonic()
    venv = (tmp_path / "venv").resolve()
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-compile", wheel, cwd=tmp_path
    )
    timings["install"] = time.monotonic() - started

    here = tmp_path / "here"  # an empty working folder, nowhere near the checkout
    here.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    probe = "import json, responder, sys; print(json.dumps([responder.__file__, sys.path]))"
    module_file, search_path = json.loads(run(venv / "bin" / "python", "-c", probe, cwd=here, env=env))
    assert Path(module_file).is_relative_to(venv), module_file
    assert not [entry for entry in search_path if entry and Path(entry).resolve().is_relative_to(REPO)]

    started = time.monotonic()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        venv / "bin" / "responder",
        "serve",
        "--port",
        str(port),
        cwd=here,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while not any(line.startswith("admin UI:") for line in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line.decode())
        assert "first start: seeded the five default trust layers and starter templates\n" in lines
        token = next(line for line in lines if line.startswith("admin token:")).split()[2]
        manifest = tomllib.loads((default_templates_dir() / "starter.toml").read_text())
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            resp = await http.get("/healthz")
            assert resp.status == 200
            resp = await http.get("/admin/login")
            assert resp.status == 200 and 'name="password"' in await resp.text()
            resp = await http.get("/admin/static/admin.css")
            assert resp.status == 200 and len(await resp.read()) > 100
            resp = await http.get("/subscribe/default")
            assert resp.status == 200 and "<form" in await resp.text()
            resp = await http.get("/api/v1/templates", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            names = {template["name"] for template in (await resp.json())["templates"]}
            assert {entry["name"] for entry in manifest["templates"]} <= names
            resp = await http.post("/subscribe", json={"email": "ada@example.com"})
            assert resp.status == 202
        for _ in range(200):  # the confirmation mail, rendered by the installed starter template
            emls = list((here / "outbox").glob("*.eml"))
            if emls:
                break
            await asyncio.sleep(0.05)
        assert len(emls) == 1 and b"ada@example.com" in emls[0].read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=15)
    assert code == 0
    timings["serve"] = time.monotonic() - started

    db = sqlite3.connect(here / "responder.db")
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert db.execute("select version_num from alembic_version").fetchall() == [(head,)]
    assert db.execute("select count(*) from layers").fetchone() == (5,)
    db.close()
    print("packaging timings (s):", {stage: round(seconds, 1) for stage, seconds in timings.items()})
