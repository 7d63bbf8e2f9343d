"""Import speed: 100,000 CSV rows into a fresh SQLite database through ``import_csv``.

Reference measured in the same run: reading and validating the same rows without touching the
database (``parse_row`` only), so the ratio shows what the inserts cost on top.

    .venv/bin/python bench/import.py [ROWS] [--json PATH]

``--json PATH`` writes the figures as rows of ``bench/suite.py``'s contract.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import tempfile
import time
from pathlib import Path

from suite import write_rows

from responder.app import start_runtime
from responder.audience.importer import parse_row
from responder.settings import Settings


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "layer", "tags"])
        for i in range(rows):
            writer.writerow(
                [f"person{i}@example{i % 97}.com", f"Person {i}", 1 + i % 5, "preferred" if i % 10 == 0 else ""]
            )


def validate_only(path: Path) -> float:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            parse_row(raw, positions={1, 2, 3, 4, 5}, default_position=1, default_source="bench", now=now)
    return time.perf_counter() - start


async def import_all(path: Path, folder: Path) -> tuple[float, int]:
    from responder.audience.importer import import_csv

    settings = Settings.from_env(
        {
            "RESPONDER_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'bench.db'}",
            "RESPONDER_SMTP_URL": f"file:{folder / 'out'}",
            "RESPONDER_SECRET_KEY": "bench",
            "RESPONDER_ADMIN_TOKEN": "bench",
        }
    )
    rt = (await start_runtime(settings)).runtime
    try:
        start = time.perf_counter()
        with path.open("rb") as binary:
            state = await import_csv(rt, binary, consent_source="bench")
        return time.perf_counter() - start, state.imported
    finally:
        await rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="?", type=int, default=100_000)
    parser.add_argument("--json", help="write the figures to this file (bench/suite.py's rows)")
    args = parser.parse_args()
    rows = args.rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "people.csv"
        write_csv(path, rows)
        reference_s = validate_only(path)
        import_s, imported = asyncio.run(import_all(path, folder))
    assert imported == rows, (imported, rows)
    print(f"rows: {rows:,}")
    print(f"reference (read + validate only): {reference_s:.2f} s, {rows / reference_s:,.0f} rows/s")
    print(f"import into SQLite:               {import_s:.2f} s, {rows / import_s:,.0f} rows/s")
    print(f"ratio import / reference: {import_s / reference_s:.2f}")
    if args.json:
        write_rows(
            args.json,
            [
                {
                    "name": f"CSV import of {rows:,} rows into SQLite vs read + validate only",
                    "value": rows / import_s,
                    "unit": "rows/s",
                    "value_name": "import_csv into SQLite",
                    "reference": rows / reference_s,
                    "reference_name": "read + validate only",
                    "ratio": reference_s / import_s,
                    "target": None,
                    "seconds": import_s,
                    "reference_seconds": reference_s,
                }
            ],
        )


if __name__ == "__main__":
    main()
