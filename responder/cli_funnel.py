"""``responder layers …``, ``responder newsletters …``, ``responder funnel sweep`` and
``responder stats``: the funnel from
the command line, straight on the database (the same service functions as the API)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from .clock import SystemClock
from .db import Database
from .errors import ResponderError
from .funnel import layers as layers
from .funnel import newsletters
from .funnel.analytics import format_stats, funnel_stats
from .funnel.scheduler import moves_json, sweep_on_demand
from .models import Newsletter
from .settings import Settings
from .validation import clean_since

COMMANDS = ("layers", "newsletters", "funnel", "stats")
BAR_WIDTH = 30


def add_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    lay = sub.add_parser("layers", help="list, add, rename, reorder and remove trust layers")
    lay_sub = lay.add_subparsers(dest="layers_command", required=True)
    add_common(lay_sub.add_parser("list", help="the layers with their active subscribers"))
    add = lay_sub.add_parser("add", help="add a layer (at most 7)")
    add.add_argument("name")
    add.add_argument("--label", required=True)
    add.add_argument("--description", default="")
    add.add_argument("--position", type=int)
    add.add_argument("--rule", help="the rule as JSON (docs/rules.md)")
    rename = lay_sub.add_parser("rename", help="rename a layer, or change its label or rule")
    rename.add_argument("position", type=int)
    rename.add_argument("--name")
    rename.add_argument("--label")
    rename.add_argument("--rule", help="the rule as JSON (docs/rules.md)")
    order = lay_sub.add_parser("reorder", help="new order as current positions, e.g. 1 3 2 4 5")
    order.add_argument("order", type=int, nargs="+")
    remove = lay_sub.add_parser("remove", help="remove a layer (at least 4 remain)")
    remove.add_argument("position", type=int)
    remove.add_argument("--move-to", type=int, required=True, help="the layer its subscribers go to")
    for parser in (add, rename, order, remove):
        add_common(parser)

    news = sub.add_parser("newsletters", help="compose, send, pause, resume, cancel, watch")
    news_sub = news.add_subparsers(dest="newsletters_command", required=True)
    add_common(news_sub.add_parser("list", help="newsletters with their progress"))
    create = news_sub.add_parser("create", help="compose a newsletter for some layers")
    create.add_argument("name")
    create.add_argument("--template", required=True)
    create.add_argument(
        "--layers", type=int, nargs="+", required=True, help="layer positions (required: there is no 'everyone')"
    )
    create.add_argument("--tags", nargs="*", help="only subscribers with all these tags")
    create.add_argument("--send-at", help="ISO 8601 time with zone; default: a draft")
    create.add_argument("--send-now", action="store_true")
    add_common(create)
    for action in ("send", "pause", "resume", "cancel", "progress"):
        parser = news_sub.add_parser(action, help=f"{action} a newsletter")
        parser.add_argument("id", type=int)
        if action == "send":
            parser.add_argument("--at", help="ISO 8601 time with zone; default: now")
        if action == "progress":
            parser.add_argument("--watch", action="store_true", help="redraw a progress bar until sending ends")
        add_common(parser)
    funnel = sub.add_parser("funnel", help="the funnel's engine: sweep now")
    funnel_sub = funnel.add_subparsers(dest="funnel_command", required=True)
    sweep = funnel_sub.add_parser("sweep", help="judge silence and ended minimum stays now; print the moves")
    sweep.add_argument("--json", action="store_true", help="the API's JSON instead of lines")
    add_common(sweep)
    stats = sub.add_parser("stats", help="funnel analytics")
    stats.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    stats.add_argument("--since", help="start of the period: a date (2026-03-01) or a time with a zone")
    add_common(stats)


def _rule(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        return {"rule": json.loads(text)}
    except ValueError as exc:
        raise ResponderError(f"--rule is not valid JSON: {exc}") from exc


async def run(args: argparse.Namespace, settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        await db.migrate()
        return await _dispatch(args, db, settings)
    except ResponderError as exc:
        print(f"responder: error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()


async def _dispatch(args: argparse.Namespace, db: Database, settings: Settings) -> int:
    now = SystemClock().now()
    if args.command == "stats":
        since = clean_since(args.since, now)
        async with db.read() as session:
            result = await funnel_stats(session, now, since)
        print(json.dumps(result, indent=2) if args.json else format_stats(result))
        return 0
    if args.command == "funnel":
        moves = moves_json(await sweep_on_demand(db, now, settings.sender_domain))
        if args.json:
            print(json.dumps({"moves": moves}, indent=2))
        for move in [] if args.json else moves:
            where = "sunset" if move["sunset"] else f"to layer {move['to_layer']}"
            print(f"subscriber {move['subscriber_id']} {where}: {move['reason']}")
        if not args.json:
            print(f"{len(moves)} moved or sunset")
        return 0
    if args.command == "layers":
        async with db.transaction() as session:
            command = args.layers_command
            if command == "add":
                data = {"name": args.name, "label": args.label, "description": args.description, **_rule(args.rule)}
                if args.position:
                    data["position"] = args.position
                await layers.create_layer(session, data, now)
            elif command == "rename":
                data = {k: v for k, v in (("name", args.name), ("label", args.label)) if v}
                await layers.update_layer(session, args.position, {**data, **_rule(args.rule)})
            elif command == "reorder":
                await layers.reorder_layers(session, args.order)
            elif command == "remove":
                moved = await layers.remove_layer(session, args.position, args.move_to, now)
                print(f"moved {moved} subscribers to layer {args.move_to}")
            counts = await layers.counts(session)
            for layer in await layers.active_layers(session):
                print(f"{layer.position}. {layer.name} [{layer.label}]  {counts.get(layer.id, 0)} active")
        return 0
    command = args.newsletters_command
    if command == "list":
        async with db.read() as session:
            rows = (await session.execute(select(Newsletter).order_by(Newsletter.id))).scalars()
            for newsletter in rows:
                print(progress_line(await newsletters.progress(session, newsletter)))
        return 0
    if command == "progress":
        return await watch(db, args.id, follow=args.watch)
    async with db.transaction() as session:
        if command == "create":
            newsletter = await newsletters.create(
                session,
                {
                    "name": args.name,
                    "template": args.template,
                    "layers": args.layers,
                    "tags": args.tags or [],
                    "send_at": args.send_at,
                    "send_now": args.send_now,
                },
                now,
                settings,
            )
        elif command == "send":
            newsletter = await newsletters.schedule(session, args.id, args.at, now)
        elif command == "pause":
            newsletter = await newsletters.pause(session, args.id)
        elif command == "resume":
            newsletter = await newsletters.resume(session, args.id)
        else:
            newsletter = await newsletters.cancel(session, args.id, now)
        print(progress_line(await newsletters.progress(session, newsletter)))
    return 0


def progress_line(p: dict[str, Any]) -> str:
    total = p["total"] or 0
    done = min(p["sent"], total) if total else 0
    filled = BAR_WIDTH * done // total if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return (
        f"#{p['id']} {p['name'][:30]:<30} [{bar}] {p['sent']}/{total} sent, "
        f"{p['queued']} queued, {p['failed']} failed ({p['state']})"
    )


async def watch(db: Database, newsletter_id: int, *, follow: bool, interval_s: float = 1.0) -> int:
    while True:
        async with db.read() as session:
            p = await newsletters.progress(session, await newsletters.get(session, newsletter_id))
        line = progress_line(p)
        finished = p["state"] in ("sent", "cancelled") and p["queued"] - p["sent"] - p["failed"] <= 0
        if not follow or finished or p["state"] in ("draft", "paused"):
            print(("\r" if follow else "") + line)
            return 0
        print("\r" + line, end="", flush=True)
        await asyncio.sleep(interval_s)
