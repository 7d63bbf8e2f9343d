"""Every benchmark in one run: ``make bench`` writes docs/benchmarks.md's figures and charts.

    .venv/bin/python bench/suite.py [--full] [--only render,send] [--timeout-s 1200]
                                    [--doc docs/benchmarks.md] [--charts docs/bench] [--pg-url URL]

Runs each bench below as its own subprocess with ``--json PATH``, collects the rows they write,
and rewrites the section of ``docs/benchmarks.md`` between ``<!-- bench:begin -->`` and
``<!-- bench:end -->``: the machine (CPU, cores, RAM, Python, SQLite, PostgreSQL, date, load
average) and one table row per figure — ours, the reference measured in the same run, the
ratio, the target, whether it is met, and the command that reproduces it — then the charts
(matplotlib, PNG, in ``docs/bench/``). The default sizes take some 10–15 minutes on two cores;
``--full`` passes the big sizes. A bench that fails, times out or writes no rows becomes a row
saying so with the tail of its stderr; a bench whose file is absent, a row saying
"not present". A bench that exits non-zero after writing its rows (``bench/track.py`` does when
a target is missed) is reported from its rows.

The ``--json`` contract
-----------------------
A bench given ``--json PATH`` writes to PATH a JSON list of rows, one per figure; each row is
an object with

- ``name`` (str): what was measured, with its setup ("send end to end (8,000 mails, RSA, ...)");
- ``value`` (number): our figure; ``unit`` (str): its unit ("msg/s", "ms", "s");
- ``reference`` (number or null): the reference figure measured in the same run, same unit;
- ``reference_name`` (str, optional): what the reference is ("bare aiosmtplib loop");
- ``ratio`` (number or null): as the bench defines it and the target reads it (usually
  ours / reference for rates, ours / reference for times where lower is better);
- ``target`` (str or null): ">= 0.9", "<= 1.5" (on the ratio) or free text;
- ``met`` (bool, optional): computed from ``target`` and ``ratio`` when absent and the target
  reads ">= X" or "<= X";
- ``value_name`` (str, optional): a short label for our figure in charts (default "responder");
- any other keys: kept, and a few drive charts — ``workers`` (int) with ``value`` in msg/s
  draws send rate against workers; ``subscribers`` (int) with ``database`` and ``seconds``
  draws enqueue time against subscribers.

Rows shaped like ``bench/newsletter_size.py``'s (``database``, ``subscribers``, ``seconds``,
``per_subscriber_us``, ``rss_mb``, ``reference_seconds``, ``ratio``, endpoint timings) are read
as such without ``name``/``value``; their endpoint timings (keys ending in ``_ms``, or a dict
of them such as ``http_ms``) are shown beside the figure. ``promotion`` is run with ``--json PATH``
alone and ``--full`` added under ``--full``, ``newsletter_size`` with ``--database-url`` (the
PostgreSQL server, ``--pg-url``) too, ``workers`` with ``--messages 50000`` under ``--full``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
REQUIRED = ("name", "value", "unit")
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"  # the test suite's server (scripts/test-deps)


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """What a bench calls for ``--json PATH``: the rows, checked against the contract above."""
    for row in rows:
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"bench row {row.get('name')!r} lacks {missing}")
    Path(path).write_text(json.dumps(rows, indent=2, default=float) + "\n")


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...] = ()
    full_args: tuple[str, ...] = ()
    provided: bool = False  # written in another file's own change: 'not present' until it is

    @property
    def script(self) -> Path:
        return ROOT / "bench" / f"{self.name}.py"

    def argv(self, full: bool, pg_url: str) -> list[str]:
        return [arg.replace("{pg}", pg_url) for arg in (self.full_args if full else self.args)]


BENCHES = (
    Bench("render", ("--seconds", "2"), ("--seconds", "5")),
    Bench("send", ("--messages", "20000"), ("--messages", "100000")),
    Bench("track", ("--rounds", "5", "--seconds", "10"), ("--rounds", "5", "--seconds", "20")),
    Bench("schedule", ("--sizes", "10000,100000"), ("--sizes", "10000,1000000")),
    Bench("import", ("100000",), ("1000000",)),
    Bench("newsletter_size", ("--database-url", "{pg}"), ("--full", "--database-url", "{pg}"), provided=True),
    Bench("workers", (), ("--messages", "50000"), provided=True),
    Bench("promotion", (), ("--full",), provided=True),
    Bench("reports_size", ("--database-url", "{pg}"), ("--subscribers", "1000000", "--database-url", "{pg}")),
    Bench("retention", ("50000",), ("1000000",)),
)


@dataclass
class Outcome:
    bench: Bench
    command: str
    rows: list[dict[str, Any]]
    seconds: float
    problem: str | None = None  # 'not present', 'failed (exit 1)', …
    stderr_tail: str = ""


def run(bench: Bench, full: bool, pg_url: str, timeout_s: float, workdir: Path) -> Outcome:
    shown = " ".join([".venv/bin/python", f"bench/{bench.name}.py", *bench.argv(full, pg_url)])
    if not bench.script.exists():
        return Outcome(bench, shown, [], 0.0, "not present")
    out = workdir / f"{bench.name}.json"
    err = workdir / f"{bench.name}.stderr"
    argv = [sys.executable, str(bench.script), *bench.argv(full, pg_url), "--json", str(out)]
    print(f"== {shown}", flush=True)
    started = time.monotonic()
    with err.open("wb") as stderr:
        # Its own session, so a timeout ends the bench's sinks and servers too.
        process = subprocess.Popen(argv, cwd=ROOT, stderr=stderr, start_new_session=True)
        try:
            code: int | None = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = time.monotonic() - started
    tail = "\n".join(err.read_text(errors="replace").strip().splitlines()[-6:])
    if tail:
        print(tail, file=sys.stderr, flush=True)
    print(f"   {seconds:.0f} s, exit {code}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        loaded = json.loads(out.read_text())
        rows = [normalise(row) for row in (loaded if isinstance(loaded, list) else [loaded])]
    except (OSError, ValueError, TypeError) as exc:
        problem = "timed out" if code is None else f"failed (exit {code})"
        if code == 0:
            problem = f"wrote no readable rows ({exc})"
        return Outcome(bench, shown, [], seconds, problem, tail)
    return Outcome(bench, shown, rows, seconds, None if rows else "wrote no rows", tail)


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the contract, from one of the contract or of ``newsletter_size``'s shape."""
    if not isinstance(row, dict):
        raise TypeError(f"a row is {type(row).__name__}, not an object")
    if "name" not in row and {"subscribers", "seconds"} <= row.keys():
        # Endpoint timings shown beside the figure: keys ending in _ms, or a dict of them.
        timings = {key: value for key, value in row.items() if key.endswith("_ms") and scalar(value)}
        for key, value in row.items():
            if key.endswith("_ms") and isinstance(value, dict):
                timings |= {name: ms for name, ms in value.items() if scalar(ms)}
        extra = ", ".join(f"{name} {fmt(ms)} ms" for name, ms in timings.items())
        row = {
            "name": f"newsletter enqueue, {row.get('database', '?')}, {row['subscribers']:,} subscribers",
            "value": row["seconds"],
            "unit": "s",
            "reference": row.get("reference_seconds"),
            "reference_name": "bare INSERT … SELECT of as many rows",
            "note": "; ".join(
                part
                for part in (
                    f"{fmt(row['per_subscriber_us'])} µs/subscriber" if "per_subscriber_us" in row else "",
                    f"RSS {fmt(row['rss_mb'])} MB" if "rss_mb" in row else "",
                    extra,
                )
                if part
            ),
            **row,
        }
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise ValueError(f"row lacks {missing}: {json.dumps(row)[:200]}")
    if "met" not in row:
        row = {**row, "met": met(row.get("target"), row.get("ratio"))}
    return row


TARGET = re.compile(r"\s*(>=|≥|<=|≤)\s*([\d.]+)\s*×?\s*")


def met(target: Any, ratio: Any) -> bool | None:
    if not isinstance(target, str) or not isinstance(ratio, int | float):
        return None
    match = TARGET.fullmatch(target)
    if not match:
        return None
    bound = float(match.group(2))
    return ratio >= bound if match.group(1) in (">=", "≥") else ratio <= bound


def scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"


# The machine


def command_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def postgresql_version() -> str:
    server = command_output(["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW server_version"])
    if server:
        return f"{server.split()[0]} (server on 127.0.0.1:5432)"
    client = command_output(["pg_config", "--version"])
    return f"{client} (client only; no server answered)" if client else "not installed"


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return {
        "CPU": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "RAM": f"{int(total.group(1)) / 1024**2:.1f} GiB" if total else "?",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": postgresql_version(),
        "OS": platform.platform(),
    }


def load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


# The section


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def table_rows(outcome: Outcome) -> list[str]:
    command = f"`{outcome.command}`"
    if outcome.problem:
        detail = f"**{outcome.problem}**"
        if outcome.stderr_tail:
            detail += f": `{cell(outcome.stderr_tail[-400:])}`"
        return [f"| {outcome.bench.name} | {detail} | — | — | — | — | {command} |"]
    lines = []
    for row in outcome.rows:
        reference = row.get("reference")
        shown_reference = "—"
        if isinstance(reference, int | float):
            shown_reference = f"{fmt(reference)} {row['unit']}"
            if row.get("reference_name"):
                shown_reference += f" ({row['reference_name']})"
        ratio = row.get("ratio")
        shown_ratio = "—"
        if isinstance(ratio, int | float):
            shown_ratio = f"{ratio:.2f}×" if ratio < 100 else f"{ratio:,.0f}×"
        target = str(row.get("target") or "—")
        if bound := TARGET.fullmatch(target):
            target = f"{'≥' if bound.group(1) in ('>=', '≥') else '≤'} {bound.group(2)}×"
        verdict = {True: "yes", False: "**no**", None: "—"}[row.get("met")]
        name = row["name"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(
            f"| {cell(name)} | {fmt(row['value'])} {cell(row['unit'])} | {cell(shown_reference)} | {shown_ratio} "
            f"| {cell(target)} | {verdict} | {command} |"
        )
    return lines


def section(
    outcomes: list[Outcome],
    box: dict[str, str],
    started: dt.datetime,
    loads: tuple[str, str],
    full: bool,
    charts: list[str],
) -> str:
    """The generated section; ``charts`` are the PNGs' paths relative to the document."""
    took_s = sum(o.seconds for o in outcomes)
    took = f"{took_s / 60:.0f} min" if took_s >= 60 else f"{took_s:.0f} s"
    lines = [
        BEGIN,
        f"### Latest run: {started:%Y-%m-%d %H:%M} UTC, {'full' if full else 'default'} sizes, {took}",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {cell(value)} |" for key, value in box.items()),
        f"| load average (1/5/15 min) | {loads[0]} at the start, {loads[1]} at the end |",
        "",
        "| benchmark | ours | reference (same run) | ratio | target | met? | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        lines += table_rows(outcome)
    if charts:
        lines += ["", "Charts: " + " · ".join(f"[{Path(p).stem}]({p})" for p in charts), ""]
        lines += [f"![{Path(p).stem}]({p})" for p in charts]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(doc: Path, text: str) -> None:
    current = doc.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc.write_text(head + text.rstrip("\n") + tail)
        return
    title, _, body = current.partition("\n\n")  # after the title's first paragraph
    intro, _, body = body.partition("\n\n")
    doc.write_text(f"{title}\n\n{intro}\n\n{text}\n{body}")


# Charts


def bars(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Our figure and each distinct reference, for a bar chart."""
    shown: dict[str, float] = {}
    for row in rows:
        shown.setdefault(str(row.get("value_name") or "responder"), float(row["value"]))
        if isinstance(row.get("reference"), int | float):
            shown.setdefault(str(row.get("reference_name") or "reference"), float(row["reference"]))
    return list(shown.items())


def charts(outcomes: list[Outcome], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    by_name = {o.bench.name: o.rows for o in outcomes if o.rows}
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for name, title in (("send", "Send rate against references (same run)"), ("render", "Render rates, per core")):
        rows = by_name.get(name)
        if not rows:
            continue
        shown = bars(rows)
        fig, ax = plt.subplots(figsize=(9, 5))
        drawn = ax.bar([textwrap.fill(label, 24) for label, _ in shown], [value for _, value in shown], color="#4c72b0")
        drawn[0].set_color("#dd8452")
        ax.bar_label(drawn, labels=[f"{value:,.0f}" for _, value in shown])
        ax.set_ylabel(rows[0]["unit"])
        ax.set_title(f"{title}\n{rows[0]['name']}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        save(fig, name)

    sized = [row for rows in by_name.values() for row in rows if {"subscribers", "database", "seconds"} <= row.keys()]
    if sized:
        fig, ax = plt.subplots(figsize=(9, 5))
        lines(ax, sized, "subscribers", "seconds", "reference_seconds")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers")
        ax.set_ylabel("enqueue time, s")
        ax.set_title("Newsletter enqueue time against list size")
        save(fig, "newsletter_size")

    workers = [row for rows in by_name.values() for row in rows if "workers" in row]
    if workers:
        fig, ax = plt.subplots(figsize=(9, 5))
        lines(ax, workers, "workers", "value", "reference")
        ax.set_xlabel("worker processes")
        ax.set_ylabel(workers[0]["unit"])
        ax.set_xticks(sorted({row["workers"] for row in workers}))
        ax.set_ylim(bottom=0)
        ax.set_title("Send rate against worker processes (dashed: the reference measured beside each)")
        save(fig, "workers")

    # Each ratio as a share of its target, so targets of 0.6× and 8× read on one axis: 1 is the target.
    judged = []
    for rows in by_name.values():
        for row in rows:
            bound = TARGET.fullmatch(str(row.get("target") or ""))
            if isinstance(row.get("ratio"), int | float) and bound and row["ratio"] > 0:
                share = row["ratio"] / float(bound.group(2))
                judged.append((row, share if bound.group(1) in (">=", "≥") else 1 / share))
    if judged:
        fig, ax = plt.subplots(figsize=(9, 5))
        labels = [textwrap.fill(row["name"], 60) for row, _ in judged]
        colours = ["#55a868" if share >= 1 else "#c44e52" for _, share in judged]
        drawn = ax.barh(labels, [share for _, share in judged], color=colours)
        ax.bar_label(drawn, labels=[f"{row['ratio']:.2f}× (target {row['target']})" for row, _ in judged], fontsize=7)
        ax.axvline(1, color="black", linewidth=1)
        ax.set_xlim(0, max(share for _, share in judged) * 1.4)  # room for the labels
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("ratio ÷ target (1 or more: met)")
        ax.set_title("Ratios against their targets")
        save(fig, "ratios")
    return written


def lines(ax: Any, rows: list[dict[str, Any]], x: str, y: str, reference: str) -> None:
    """One line per database of ``y`` against ``x``, and its reference dashed in the same colour."""
    for database in sorted({str(row.get("database", "")) for row in rows}):
        mine = sorted((row for row in rows if str(row.get("database", "")) == database), key=lambda row: row[x])
        line = ax.plot([row[x] for row in mine], [row[y] for row in mine], marker="o", label=database or "responder")
        references = [row for row in mine if isinstance(row.get(reference), int | float)]
        if references:
            name = str(references[0].get("reference_name") or "reference")
            ax.plot(
                [row[x] for row in references],
                [row[reference] for row in references],
                linestyle="--",
                marker="x",
                color=line[0].get_color(),
                label=textwrap.fill(f"{database}: {name}" if database else name, 60),
            )
    ax.legend(fontsize=8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the big sizes (an hour or more)")
    parser.add_argument("--only", help="comma-separated bench names (default: all)")
    parser.add_argument("--timeout-s", type=float, default=1200, help="per bench")
    parser.add_argument(
        "--pg-url", default=PG_URL, help="the PostgreSQL server benches measure on (they make their own databases)"
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--charts", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    started, start_load = dt.datetime.now(dt.UTC), load()
    box = machine()
    with tempfile.TemporaryDirectory(prefix="responder-suite-") as tmp:
        outcomes = [run(bench, args.full, args.pg_url, args.timeout_s, Path(tmp)) for bench in chosen]
    drawn = [os.path.relpath(path, args.doc.resolve().parent) for path in charts(outcomes, args.charts.resolve())]
    print("charts: " + ", ".join(drawn))
    write_section(args.doc, section(outcomes, box, started, (start_load, load()), args.full, drawn))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
