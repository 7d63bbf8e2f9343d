"""The ``responder`` command: run the server and workers, and administer a responder instance."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from . import cli_admin, cli_funnel, logs
from . import cli_templates as templates_commands
from .app import ROLES, CappedSite, init_app, start_runner, start_runtime
from .errors import ConfigError
from .settings import Settings, reference_markdown

log = logging.getLogger("responder")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        field: getattr(args, field, None) for field in ("host", "port", "database_url", "smtp_url", "base_url")
    }
    return Settings.from_env(**overrides)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="overrides RESPONDER_DATABASE_URL")
    parser.add_argument("--smtp-url", help="overrides RESPONDER_SMTP_URL")
    parser.add_argument("--base-url", help="overrides RESPONDER_BASE_URL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="responder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="HTTP server, scheduler and delivery workers in one process")
    serve.add_argument("--host", help="overrides RESPONDER_HOST (default 127.0.0.1)")
    serve.add_argument("--port", help="overrides RESPONDER_PORT (default 8080)")
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="HTTP (and the inbound server) only: scheduling and delivery run in other processes",
    )
    _add_common(serve)
    worker = sub.add_parser("worker", help="delivery only: sends the outbox, enquiry mail and webhooks; run any number")
    _add_common(worker)
    scheduler = sub.add_parser(
        "scheduler", help="the scheduler only: queues steps and newsletters, sweeps; one is active at a time"
    )
    _add_common(scheduler)
    config = sub.add_parser("config", help="print the effective configuration, secrets masked")
    _add_common(config)
    config.add_argument(
        "--reference", action="store_true", help="print the reference of every setting (docs/configuration.md)"
    )
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply schema migrations")
    _add_common(upgrade)
    backup = sub.add_parser(
        "backup", help="copy the SQLite database to FILE while responder runs (PostgreSQL: prints the pg_dump command)"
    )
    backup.add_argument("file", help="the backup file (written to FILE.tmp, then renamed)")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    _add_common(backup)
    rotate = sub.add_parser(
        "rotate-secret", help="replace the stored secret key; links already mailed keep working for a grace period"
    )
    rotate.add_argument("--grace-days", type=int, default=30, help="days the old key still verifies (default 30)")
    _add_common(rotate)
    cli_admin.add_parsers(sub, _add_common)
    templates_commands.add_parser(sub, _add_common)
    delivery = sub.add_parser("delivery", help="pause, resume or show the state of all sending")
    delivery.add_argument("action", choices=("pause", "resume", "status"))
    delivery.add_argument("--reason", default="", help="why sending is paused (shown in status)")
    _add_common(delivery)
    dkim = sub.add_parser("dkim", help="DKIM keys")
    dkim_sub = dkim.add_subparsers(dest="dkim_command", required=True)
    keygen = dkim_sub.add_parser("keygen", help="write a new private key; print its DNS TXT record")
    keygen.add_argument("--out", required=True, help="file for the PEM private key (not overwritten)")
    keygen.add_argument("--selector", default="responder", help="DKIM selector (default responder)")
    keygen.add_argument("--domain", help="signing domain (default: the sender's domain)")
    keygen.add_argument(
        "--algorithm",
        choices=("rsa", "ed25519"),
        default="rsa",
        help="rsa (2048 bits, understood everywhere) or ed25519 (RFC 8463)",
    )
    doctor = sub.add_parser(
        "doctor", help="check the DNS records deliverability needs: SPF, DKIM, DMARC, the bounce MX, PTR"
    )
    doctor.add_argument("domain", nargs="?", help="the From domain (default: the sender's, RESPONDER_FROM)")
    doctor.add_argument(
        "--nameserver",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="the name server to ask; repeatable (default: the system's)",
    )
    doctor.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a sending IP; repeatable: SPF must pass it, its PTR confirm it",
    )
    doctor.add_argument(
        "--selector", action="append", default=[], help="a DKIM selector to find without its key here (a relay's)"
    )
    doctor.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per answer (default 5)")
    forms = sub.add_parser("forms", help="opt-in forms for landing pages")
    forms_sub = forms.add_subparsers(dest="forms_command", required=True)
    snippet = forms_sub.add_parser("snippet", help="print the HTML snippet of a form to paste")
    snippet.add_argument("form", help="form name (see RESPONDER_FORMS_FILE), e.g. default")
    _add_common(snippet)
    cli_funnel.add_commands(sub, _add_common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config" and args.reference:
        print(reference_markdown(), end="")
        return 0
    try:
        settings = _settings(args)
        logs.configure(settings.log_format)
        if args.command == "config":
            for env, value, help_text in settings.describe():
                print(f"{env}={value}    # {help_text}")
            for warning in settings.identity_warnings():
                print(f"WARNING: {warning}")
            return 0
        if args.command in cli_funnel.COMMANDS:
            return asyncio.run(cli_funnel.run(args, settings))
        if args.command in cli_admin.COMMANDS:
            return asyncio.run(cli_admin.run(args, settings))
        if args.command == "db":
            return asyncio.run(_db_upgrade(settings))
        if args.command == "backup":
            from .backup import backup_command

            return backup_command(settings, args.file, force=args.force)
        if args.command == "rotate-secret":
            return asyncio.run(_rotate_secret(settings, args.grace_days))
        if args.command == "templates":
            return asyncio.run(templates_commands.run(args, settings))
        if args.command == "delivery":
            from .delivery.cli import delivery_command

            return asyncio.run(delivery_command(settings, args.action, args.reason))
        if args.command == "dkim":
            from .delivery.cli import dkim_keygen

            return dkim_keygen(
                settings, out=args.out, selector=args.selector, domain=args.domain, algorithm=args.algorithm
            )
        if args.command == "doctor":
            from .doctor import doctor_command

            return doctor_command(
                settings,
                domain=args.domain,
                nameservers=args.nameserver,
                ips=args.ip,
                selectors=args.selector,
                timeout_s=args.timeout,
            )
        if args.command == "forms":
            return _forms_snippet(settings, args.form)
        if args.command == "serve":
            roles = frozenset() if args.no_workers else ROLES
        else:
            roles = frozenset({"delivery" if args.command == "worker" else "scheduler"})
        with only_one(settings, args.command):
            return asyncio.run(_run(settings, http=args.command == "serve", roles=roles))
    except ConfigError as exc:
        print(f"responder: error: {exc.message}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def only_one(settings: Settings, command: str) -> Iterator[None]:
    """On an SQLite file, one ``command`` (serve, worker, scheduler) at a time: a lock file
    beside the database, held while the process runs and freed by the system when it ends,
    however it ends. A second one stops at once with a ``ConfigError`` (exit code 2)."""
    url = make_url(settings.database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        yield
        return
    path = Path(url.database).resolve()
    lock_path = path.with_name(f"{path.name}.{command}.lock")
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115  (held for the process's life)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise ConfigError(f"another `responder {command}` is running on {path} (lock {lock_path})") from exc
    try:
        yield
    finally:
        handle.close()


def _forms_snippet(settings: Settings, form_id: str) -> int:
    from .errors import ResponderError
    from .web.public.forms import load_forms, snippet

    try:
        form = load_forms(settings).get(form_id)
    except ResponderError as exc:
        print(f"responder: error: {exc.message}", file=sys.stderr)
        return 2
    print(snippet(form, settings.base_url))
    return 0


async def _rotate_secret(settings: Settings, grace_days: int) -> int:
    import datetime as dt

    from .db import Database
    from .seed import rotate_secret

    if settings.secret_key:
        raise ConfigError(
            "the secret key comes from RESPONDER_SECRET_KEY: set the new key there and the old one in "
            "RESPONDER_PREVIOUS_SECRET_KEYS for as long as links already mailed should work"
        )
    if not 0 <= grace_days <= 3650:
        raise ConfigError("--grace-days must be between 0 and 3650")
    db = Database(settings.database_url)
    try:
        await db.migrate()
        until = await rotate_secret(db, dt.datetime.now(dt.UTC), dt.timedelta(days=grace_days))
    finally:
        await db.dispose()
    print(
        f"new secret key stored; links and reply addresses made with the old one work until {until:%Y-%m-%d %H:%M} UTC"
    )
    print("restart every responder process (serve, worker, scheduler) to sign with the new key")
    return 0


async def _db_upgrade(settings: Settings) -> int:
    from .db import Database

    db = Database(settings.database_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    print(f"database at {settings.describe()[0][1]} is up to date")
    return 0


async def _run(settings: Settings, *, http: bool, roles: frozenset[str]) -> int:
    started = await start_runtime(settings)
    rt = started.runtime
    app = init_app(rt, http=http, roles=roles)
    runner = await start_runner(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if http:
            site = CappedSite(
                runner,
                rt.settings.host,
                rt.settings.port,
                per_ip=rt.settings.max_connections_per_ip,
                trusted=rt.settings.trusted_proxies,
            )
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {rt.settings.host}:{rt.settings.port}: {exc.strerror or exc}"
                    " (is another server running there? RESPONDER_PORT or --port picks another)"
                ) from exc
        _banner(started, http=http, roles=roles)
        # What start-up built (modules, mappings, templates) lives as long as the process: out
        # of the collector's sight, a full collection no longer walks it mid-request.
        gc.freeze()
        await stop.wait()
        log.info("stopping: no new requests; letting in-flight sends finish")
    finally:
        await runner.cleanup()
        await rt.close()
    return 0


def _banner(started, *, http: bool, roles: frozenset[str]) -> None:  # type: ignore[no-untyped-def]
    s = started.runtime.settings
    lines = []
    if http:
        lines.append(f"responder listening on http://{s.host}:{s.port} (public URL {s.base_url})")
        if not roles:
            lines.append("no workers: run `responder scheduler` and `responder worker` beside it")
    elif "delivery" in roles:
        lines.append("responder worker running (delivery: outbox, enquiry mail, webhooks)")
    else:
        lines.append("responder scheduler running (steps, newsletters, sweeps; one active at a time)")
    lines.append(f"database: {s.describe()[0][1]}")
    mail = f"files in {s.smtp.path}/" if s.smtp.is_file else f"{s.smtp.scheme}://{s.smtp.host}:{s.smtp.port}"
    lines.append(f"mail goes to: {mail}")
    if started.seeded:
        lines.append("first start: seeded the five default trust layers and starter templates")
    if "secret_key" in started.generated:
        lines.append("WARNING: no RESPONDER_SECRET_KEY set; generated one and stored it in the database")
    lines += [f"WARNING: {warning}" for warning in s.identity_warnings()]
    if http:
        if "admin_token" in started.generated:  # shown this once: only its digest is stored
            lines.append(f"admin token: {s.admin_token} (generated now and shown once: keep it)")
        elif started.runtime.admin_token_hash:
            lines.append("admin token: the one shown at first start (`responder tokens create NAME` makes more)")
        else:
            lines.append("admin token: from RESPONDER_ADMIN_TOKEN")
        lines.append(f"subscribe form: {s.base_url}/subscribe/default")
        lines.append(f"admin UI: {s.base_url}/admin/ (accounts: responder admin create-user NAME)")
    print("\n".join(lines), flush=True)
