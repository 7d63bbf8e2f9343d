"""Admin commands: ``admin create-user``, ``tokens create|revoke|list``, ``subscribers
import|export``. They work on the database directly, so they run with the server stopped or
running."""

from __future__ import annotations

import argparse
import csv
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .app import start_runtime
from .audience.directory import SubscriberFilter
from .audience.importer import Enroll, ImportProgress, import_csv
from .errors import ResponderError
from .settings import Settings
from .web.admin.users import create_user
from .web.api.subscribers import export_chunks
from .web.api.tokens import SCOPES, create_token, list_tokens, revoke_token

COMMANDS = ("admin", "tokens", "subscribers")


def add_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    admin = sub.add_parser("admin", help="admin web UI accounts").add_subparsers(dest="admin_command", required=True)
    create = admin.add_parser("create-user", help="create an account for the web UI")
    create.add_argument("username")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input instead of prompting"
    )
    add_common(create)

    tokens = sub.add_parser("tokens", help="named API tokens").add_subparsers(dest="tokens_command", required=True)
    new = tokens.add_parser("create", help="create a token and print its secret once")
    new.add_argument("name")
    new.add_argument("--scope", choices=SCOPES, default="read")
    revoke = tokens.add_parser("revoke", help="revoke a token; it stops working at once")
    revoke.add_argument("name")
    listing = tokens.add_parser("list", help="list the named tokens")
    for parser in (new, revoke, listing):
        add_common(parser)

    subscribers = sub.add_parser("subscribers", help="CSV import and export").add_subparsers(
        dest="subscribers_command", required=True
    )
    imp = subscribers.add_parser("import", help="import a CSV of consented subscribers")
    imp.add_argument("file", type=Path)
    imp.add_argument("--consent-source", help="where they consented, for rows without a consent_source column")
    imp.add_argument(
        "--enroll",
        choices=("none", "next", "start"),
        default="none",
        help="what they get of their layer's sequence: none (newsletters only; the default), "
        "next (the steps after the welcome) or start (every step)",
    )
    imp.add_argument("--spread", help="spread their first sequence mail evenly over this long (e.g. 7d)")
    imp.add_argument("--report", type=Path, help="write the rejected rows to this CSV file")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp = subscribers.add_parser("export", help="export subscribers as CSV")
    exp.add_argument("file", type=Path, nargs="?", help="default: standard output")
    exp.add_argument("--layer")
    exp.add_argument("--status")
    exp.add_argument("--tag")
    for parser in (imp, exp):
        add_common(parser)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    rt = (await start_runtime(settings)).runtime
    try:
        if args.command == "admin":
            password = _read_password(args.password_stdin)
            await create_user(rt, args.username, password)
            print(f"created admin user {args.username}; sign in at {rt.settings.base_url}/admin/")
        elif args.command == "tokens":
            if args.tokens_command == "create":
                info, secret = await create_token(rt, args.name, args.scope)
                print(f"token {info.name} ({info.scope}); shown only now:", file=sys.stderr)
                print(secret)
            elif args.tokens_command == "revoke":
                await revoke_token(rt, args.name)
                print(f"revoked {args.name}")
            else:
                for token in await list_tokens(rt):
                    created = token.created_at.isoformat() if token.created_at else ""
                    print(f"{token.name}\t{token.scope}\t{created}")
        elif args.subscribers_command == "import":
            return await _import(rt, args)
        else:
            flt = SubscriberFilter.from_query(
                {k: v for k, v in (("layer", args.layer), ("status", args.status), ("tag", args.tag)) if v}
            )
            out = args.file.open("wb") if args.file else sys.stdout.buffer
            try:
                async for chunk in export_chunks(rt, flt):
                    out.write(chunk)
            finally:
                if args.file:
                    out.close()
        return 0
    except ResponderError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"responder: error{where}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await rt.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("responder: the passwords differ")
    return first


async def _import(rt, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    enroll = Enroll.parse(args.enroll, args.spread)
    size = args.file.stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, disable=args.quiet, desc="importing", file=sys.stderr) as bar:

        def progress(state: ImportProgress) -> None:
            bar.update(state.bytes_read - bar.n)
            bar.set_postfix(imported=state.imported, rejected=state.rejected)

        with args.file.open("rb") as binary:
            state = await import_csv(
                rt, binary, consent_source=args.consent_source, enroll=enroll, bytes_total=size, progress=progress
            )
    print(f"{state.rows_read} rows: {state.imported} imported, {state.rejected} rejected")
    print(f"they get {enroll.describe()}")
    if args.report and state.rejected_rows:
        with args.report.open("w", newline="") as report:
            writer = csv.DictWriter(report, ["row", "email", "field", "reason"])
            writer.writeheader()
            writer.writerows(state.rejected_rows)
        print(f"rejected rows written to {args.report}")
    elif state.rejected_rows:
        for row in state.rejected_rows[:20]:
            print(f"  row {row['row']}: {row['email']}: {row['reason']}", file=sys.stderr)
    return 0
