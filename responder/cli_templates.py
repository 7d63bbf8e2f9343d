"""``responder templates add FILE`` and ``responder templates sync DIR``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .app import start_runtime
from .errors import ResponderError
from .settings import Settings
from .templating.service import Upload, sync_folder, upload_template


def add_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    templates = sub.add_parser("templates", help="upload templates (MJML or HTML with Jinja)")
    commands = templates.add_subparsers(dest="templates_command", required=True)
    add = commands.add_parser("add", help="upload FILE as a new version of template NAME")
    add.add_argument("file", type=Path)
    add.add_argument("--name", help="template name (default: the file name without extension)")
    add.add_argument("--subject", required=True, help="subject line, itself a Jinja template")
    add.add_argument("--text", type=Path, help="file with an explicit plain-text body")
    add.add_argument("--purpose", default="", help="e.g. seed, educate, offer, newsletter")
    add.add_argument("--format", choices=("mjml", "html"), help="default: detected from FILE")
    add_common(add)
    sync = commands.add_parser(
        "sync",
        help="upload every template of DIR (listed in DIR/starter.toml, or any .mjml/"
        ".html file with a title) whose content changed",
    )
    sync.add_argument("dir", type=Path)
    add_common(sync)


async def run(args: argparse.Namespace, settings: Settings) -> int:

    started = await start_runtime(settings)
    rt = started.runtime
    try:
        if args.templates_command == "add":
            try:
                source = args.file.read_text()
                text = args.text.read_text() if args.text else None
            except (OSError, UnicodeDecodeError) as exc:
                print(f"responder: error: {exc}", file=sys.stderr)
                return 1
            stored = await upload_template(
                rt,
                Upload(
                    name=args.name or args.file.stem.lower(),
                    subject=args.subject,
                    source=source,
                    source_format=args.format,
                    text=text,
                    purpose=args.purpose,
                ),
            )
            print(f"{stored['name']}: version {stored['version']} stored")
        else:
            for name, version, added in await sync_folder(rt, args.dir):
                print(f"{name}: version {version} " + ("stored" if added else "unchanged"))
        return 0
    except ResponderError as exc:
        print(f"responder: error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await rt.close()
