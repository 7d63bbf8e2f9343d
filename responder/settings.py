"""All configuration, declared once with its default and help text, read from the environment.

Nothing else in responder reads ``os.environ``: the CLI builds a ``Settings`` with
``Settings.from_env()`` (plus its flags as overrides) and passes it down.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .core.dnsauth import Status, alignment
from .core.warmup import Schedule, parse_caps
from .errors import ConfigError

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SmtpTarget:
    """Where mail goes: an SMTP server or a folder of ``.eml`` files."""

    scheme: str  # "smtp" | "smtps" | "file"
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = None
    path: Path | None = None

    @property
    def is_file(self) -> bool:
        return self.scheme == "file"


def parse_database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {value!r}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(
            f"unsupported database {backend!r}: use sqlite+aiosqlite:///file.db or postgresql+asyncpg://user@host/db"
        )
    return url.render_as_string(hide_password=False)


def parse_smtp_url(value: str) -> SmtpTarget:
    parts = urlsplit(value)
    if parts.scheme == "file":
        path = parts.path if not parts.netloc else f"/{parts.netloc}{parts.path}"
        if not path:
            raise ConfigError(f"file outbox URL needs a folder: {value!r} (e.g. file:///var/mail/out)")
        return SmtpTarget(scheme="file", path=Path(path))
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError(f"unknown mail URL scheme {parts.scheme!r} in {value!r}: use smtp://, smtps:// or file://")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad port in mail URL {value!r}") from exc
    if not parts.hostname:
        raise ConfigError(f"mail URL has no host: {value!r}")
    default_port = 465 if parts.scheme == "smtps" else 587
    return SmtpTarget(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or default_port,
        username=parts.username,
        password=parts.password,
    )


def parse_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or CONTROL_CHARS.search(value):
        raise ConfigError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def parse_sender(value: str) -> tuple[str, str]:
    if CONTROL_CHARS.search(value):
        raise ConfigError("sender contains control characters")
    name, addr = parseaddr(value)
    try:
        email = validate_email(addr, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ConfigError(f"sender address {value!r} is not valid: {exc}") from exc
    return name, email


def parse_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"not an IP address or network: {item!r}") from exc
    return tuple(networks)


def parse_origins(value: str) -> tuple[str, ...]:
    origins = []
    for item in value.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or CONTROL_CHARS.search(item):
            raise ConfigError(f"not an origin (scheme://host[:port]): {item!r}")
        origins.append(item.lower())
    return tuple(origins)


def parse_keys(value: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in value.split(",") if key.strip())


def parse_int(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"not a whole number: {value!r}") from exc


def parse_track_writer(value: str) -> str:
    if value not in ("process", "inline"):
        raise ConfigError(f"must be process or inline, not {value!r}")
    return value


def parse_log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ConfigError(f"must be text or json, not {value!r}")
    return value


def parse_render_processes(value: str) -> int:
    """``auto`` is one per core; 0 renders in a thread of the serving process (no hard limits)."""
    if value == "auto":
        return os.cpu_count() or 1
    number = parse_int(value)
    if number < 0:
        raise ConfigError(f"must be auto, 0 or more, not {value!r}")
    return number


def parse_fbl_address(value: str) -> str:
    address = value.strip().lower()
    local, at, domain = address.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address):
        raise ConfigError(f"not an email address: {value!r}")
    return address


def parse_float(value: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"not a number: {value!r}") from exc


def parse_switch(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise ConfigError(f"must be on or off, not {value!r}")
    return lowered in ("on", "1", "true", "yes")


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError as exc:
        raise ConfigError(f"not a date like 2026-12-01: {value!r}") from exc


def parse_warmup_caps(value: str) -> tuple[int, ...]:
    try:
        return parse_caps(value)
    except ValueError as exc:
        raise ConfigError(f"{exc}, not {value!r}") from exc


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, e.g. 127.0.0.1:2525, not {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Spec:
    """One setting: field name, environment variable, default, help, parser, secret or not."""

    field: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False

    @property
    def env(self) -> str:
        return "RESPONDER_" + self.field.upper()


SPECS: tuple[Spec, ...] = (
    Spec(
        "database_url",
        "sqlite+aiosqlite:///responder.db",
        "SQLAlchemy URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://user@host/db",
        parse_database_url,
    ),
    Spec(
        "smtp_url",
        "file:outbox",
        "smtp://user:pass@host:587 (STARTTLS when offered), smtps://…:465, or file:DIR for .eml files",
        parse_smtp_url,
    ),
    Spec("base_url", None, "public URL used in every link (default http://HOST:PORT)", parse_http_url),
    Spec("secret_key", None, "signs tokens; generated and stored in the database if absent", secret=True),
    Spec(
        "previous_secret_keys",
        "",
        "earlier secret keys whose tokens and reply addresses are still accepted, comma-separated (rotation)",
        parse_keys,
        secret=True,
    ),
    Spec("admin_token", None, "bearer token for /api/v1/; generated and stored if absent", secret=True),
    Spec("from", "Responder <newsletter@example.com>", "sender: 'Name <address>'", parse_sender),
    Spec("website", None, "the business's website, offered to templates (default: base URL)", parse_http_url),
    Spec("postal_address", "", "postal address printed in every mail's footer"),
    Spec("host", "127.0.0.1", "address the HTTP server listens on"),
    Spec("port", "8080", "port the HTTP server listens on", parse_int),
    Spec("templates_dir", None, "folder of starter templates seeded on first start"),
    Spec("worker_lanes", "4", "messages a worker sends concurrently", parse_int),
    Spec("worker_poll_s", "1.0", "seconds a worker waits between polls when idle", parse_float),
    Spec("scheduler_poll_s", "1.0", "seconds between scheduler runs when idle", parse_float),
    Spec("sweep_every_s", "3600", "seconds between sweeps judging silence and ended minimum stays", parse_int),
    Spec("lease_s", "120", "seconds a claimed message stays leased to one worker", parse_int),
    Spec("smtp_timeout_s", "30", "seconds before an SMTP command times out", parse_float),
    Spec("max_body_bytes", "65536", "largest request body accepted by public endpoints", parse_int),
    Spec("confirm_max_age_s", "604800", "seconds a confirmation link stays valid", parse_int),
    Spec(
        "worker_batch",
        "200",
        "messages one worker process has claimed at most (its two pipelines claim half each); "
        "also the most a killed worker can send twice",
        parse_int,
    ),
    Spec("send_rate_per_s", "0", "messages per second over all lanes of one worker process (0: no limit)", parse_float),
    Spec("domain_concurrency", "0", "messages sent at once to one recipient domain (0: no limit)", parse_int),
    Spec(
        "domain_rate_per_min",
        "0",
        "messages per minute to one recipient domain, sliding window (0: no limit)",
        parse_int,
    ),
    Spec(
        "message_lifetime_s",
        "432000",
        "seconds a deferred message keeps being retried before it fails (Postfix: 5 days)",
        parse_int,
    ),
    Spec(
        "retry_first_s",
        "300",
        "seconds before a deferred message's first retry; each later one waits twice as long, up to 4 hours",
        parse_float,
    ),
    Spec("bounce_domain", None, "domain of the VERP bounce, reply and unsubscribe addresses (default: the sender's)"),
    Spec(
        "dkim_selector",
        None,
        "DKIM selector, or several comma-separated, one per key file; signing is on when it and the key file are set",
    ),
    Spec("dkim_domain", None, "DKIM signing domain (default: the sender's domain)"),
    Spec(
        "dkim_key_file",
        None,
        "PEM private key (RSA or Ed25519) for DKIM signing, or several comma-separated (e.g. RSA and Ed25519, "
        "RFC 8463): each mail gets one signature per key",
    ),
    Spec(
        "inbound",
        None,
        "HOST:PORT for the inbound SMTP server (bounces, complaints, replies); off when unset",
        parse_listen,
    ),
    Spec(
        "fbl_address",
        None,
        "the feedback-loop address registered with mailbox providers (fbl@…, routed to the inbound server): "
        "complaint reports sent there are matched to our mails",
        parse_fbl_address,
    ),
    Spec(
        "trusted_proxies",
        "",
        "comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For names the client (e.g. 127.0.0.1,10.0.0.0/8); empty: none",
        parse_networks,
    ),
    Spec(
        "cors_origins",
        "",
        "comma-separated origins (https://landing.example.com) allowed to "
        "POST /subscribe and /enquiry from a script; forms may add their own",
        parse_origins,
    ),
    Spec(
        "forms_file",
        None,
        "TOML or JSON file describing the opt-in forms (consent wording, "
        "redirects, origins, attributes, proof of work)",
    ),
    Spec(
        "subscribe_per_ip_per_hour",
        "20",
        "subscribe and enquiry requests one IP may make per hour before 429",
        parse_int,
    ),
    Spec("subscribe_per_address_per_hour", "5", "subscribe requests for one address per hour before 429", parse_int),
    Spec("confirm_resend_s", "600", "seconds before a pending address may get another confirmation mail", parse_int),
    Spec("confirm_per_day", "3", "confirmation mails one address may get per day", parse_int),
    Spec("body_timeout_s", "10", "seconds a client may take to send a request body", parse_float),
    Spec(
        "header_timeout_s",
        "10",
        "seconds a connection may stay without a whole request head (and idle between requests)",
        parse_float,
    ),
    Spec("max_connections_per_ip", "256", "open HTTP connections one client address may hold", parse_int),
    Spec("form_write_timeout_s", "5", "seconds a form waits for the database before answering 503", parse_float),
    Spec(
        "soft_bounce_limit",
        "3",
        "different messages to one address refused for a full mailbox or without a reason before it is suppressed",
        parse_int,
    ),
    Spec("soft_bounce_days", "30", "days over which soft bounces are counted", parse_int),
    Spec(
        "blocked_pause_after",
        "5",
        "policy or blocklist refusals from one recipient domain within an hour before that domain is paused",
        parse_int,
    ),
    Spec("blocked_pause_s", "3600", "seconds a recipient domain stays paused after that", parse_int),
    Spec(
        "governor_warn_rate",
        "0.001",
        "complaint rate (per layer and mailbox provider, over a day or a week) that warns (0.001 = 0.1 %)",
        parse_float,
    ),
    Spec(
        "governor_pause_rate",
        "0.003",
        "complaint rate that holds newsletters and drip steps to that layer and provider until an admin resumes",
        parse_float,
    ),
    Spec(
        "governor_min_sent",
        "100",
        "mails a window must hold before its complaint rate counts",
        parse_int,
    ),
    Spec(
        "governor_every_s",
        "300",
        "seconds between the complaint governor's counts (and at every new complaint)",
        parse_int,
    ),
    Spec(
        "retention_days",
        "400",
        "days events and sent mail are kept; older ones are rolled up into daily figures and deleted (0: kept)",
        parse_int,
    ),
    Spec(
        "rollup_every_s",
        "60",
        "seconds between roll-ups of new events into the daily figures the reports read",
        parse_int,
    ),
    Spec(
        "warmup_start",
        None,
        "first day (UTC) of the warm-up schedule for a new sending IP, e.g. 2026-12-01 (off when unset)",
        parse_date,
    ),
    Spec(
        "warmup_schedule",
        None,
        "list mail each mailbox provider may get per day from the warm-up start: caps for day 1, 2, …, "
        "e.g. 50,100,500,1000,5000,10000,20000,50000; no cap after the last day (off when unset)",
        parse_warmup_caps,
    ),
    Spec(
        "governor_mx_lookup",
        "on",
        "look up the MX of recipient domains not known by name, to tell their mailbox provider (on | off)",
        parse_switch,
    ),
    Spec(
        "render_processes",
        "auto",
        "child processes that render templates (auto: one per core; 0: in a thread of this process, no hard limits)",
        parse_render_processes,
    ),
    Spec(
        "render_time_limit_s",
        "5",
        "seconds one mail or one upload check may take to render before its render process is killed",
        parse_float,
    ),
    Spec("render_memory_mb", "512", "address space of each render process, in MB (0: no limit)", parse_int),
    Spec("track_flush_ms", "250", "tracking events are written at least this often", parse_int),
    Spec("track_batch", "500", "tracking events written per transaction at most", parse_int),
    Spec(
        "track_queue_max",
        "20000",
        "tracking events held in memory at most; beyond, new ones are dropped and counted",
        parse_int,
    ),
    Spec(
        "track_writer",
        "process",
        "on SQLite, who writes tracking events: a child process (process) or the serving process (inline)",
        parse_track_writer,
    ),
    Spec("machine_after_send_s", "10", "opens and clicks sooner than this after delivery count as machine", parse_int),
    Spec(
        "machine_window_s",
        "10",
        "a mail's opens and clicks this close to a trap hit, or in one sweep of its links, count as machine;"
        " human ones are judged for promotion this long after they happen",
        parse_float,
    ),
    Spec(
        "reply_hold_s",
        "259200",
        "a person's reply holds their drip steps and newsletters until its enquiry is answered or closed,"
        " or this many seconds at most (0: replies hold nothing)",
        parse_int,
    ),
    Spec("enquiry_answer_h", "48", "hours within which the acknowledgement promises an answer", parse_int),
    Spec(
        "enquiry_digest_to",
        None,
        "address of the open-enquiries digest (default: the sender)",
        lambda value: parse_sender(value)[1],
    ),
    Spec("enquiry_digest_after_s", "86400", "an enquiry open this long goes into the digest", parse_int),
    Spec("enquiry_digest_every_s", "86400", "seconds between two digests", parse_int),
    Spec("admin_session_s", "43200", "seconds an admin web UI sign-in lasts", parse_int),
    Spec("import_max_bytes", "104857600", "largest CSV file accepted by a subscriber import", parse_int),
    Spec(
        "log_format",
        "text",
        "text: one line per record; json: one JSON object per line (time, level, logger, message, exception,"
        " extra fields), the access log included",
        parse_log_format,
    ),
)

_FIELD_NAMES = {spec.field: spec for spec in SPECS}


@dataclass(frozen=True)
class Settings:
    database_url: str
    smtp: SmtpTarget
    smtp_url: str
    base_url: str
    secret_key: str | None
    admin_token: str | None
    from_name: str
    from_email: str
    website: str
    postal_address: str
    host: str
    port: int
    templates_dir: Path
    worker_lanes: int
    worker_poll_s: float
    scheduler_poll_s: float
    sweep_every_s: int
    lease_s: int
    smtp_timeout_s: float
    max_body_bytes: int
    confirm_max_age_s: int
    worker_batch: int = 200
    send_rate_per_s: float = 0.0
    domain_concurrency: int = 0
    domain_rate_per_min: int = 0
    message_lifetime_s: int = 432000
    retry_first_s: float = 300.0
    bounce_domain: str | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_key_file: str | None = None  # one path, or several comma-separated (delivery.dkim.configured_keys)
    inbound: tuple[str, int] | None = None
    fbl_address: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cors_origins: tuple[str, ...] = ()
    forms_file: Path | None = None
    subscribe_per_ip_per_hour: int = 20
    subscribe_per_address_per_hour: int = 5
    confirm_resend_s: int = 600
    confirm_per_day: int = 3
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    previous_secret_keys: tuple[str, ...] = ()
    max_connections_per_ip: int = 256
    form_write_timeout_s: float = 5.0
    soft_bounce_limit: int = 3
    soft_bounce_days: int = 30
    blocked_pause_after: int = 5
    blocked_pause_s: int = 3600
    governor_warn_rate: float = 0.001
    governor_pause_rate: float = 0.003
    governor_min_sent: int = 100
    governor_every_s: int = 300
    governor_mx_lookup: bool = True
    retention_days: int = 400
    rollup_every_s: int = 60
    warmup_start: dt.date | None = None
    warmup_schedule: tuple[int, ...] | None = None
    render_processes: int = 1
    render_time_limit_s: float = 5.0
    render_memory_mb: int = 512
    track_flush_ms: int = 250
    track_batch: int = 500
    track_queue_max: int = 20000
    track_writer: str = "process"
    machine_after_send_s: int = 10
    machine_window_s: float = 10.0
    reply_hold_s: int = 259200
    enquiry_answer_h: int = 48
    enquiry_digest_to: str = ""
    enquiry_digest_after_s: int = 86400
    enquiry_digest_every_s: int = 86400
    admin_session_s: int = 43200
    import_max_bytes: int = 104857600
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); ``overrides`` win.

        Overrides are raw strings keyed by field name (``from`` as ``from_``); ``None`` means unset.
        """
        env = os.environ if environ is None else environ
        raw: dict[str, str | None] = {}
        for spec in SPECS:
            value = overrides.get(spec.field if spec.field != "from" else "from_")
            if value is None:
                value = env.get(spec.env) or spec.default
            raw[spec.field] = None if value is None else str(value)
        parsed: dict[str, Any] = {}
        for spec in SPECS:
            value = raw[spec.field]
            if value is None:
                parsed[spec.field] = None
                continue
            try:
                parsed[spec.field] = spec.parse(value)
            except ConfigError as exc:
                raise ConfigError(f"{spec.env}: {exc.message}", field=spec.env) from exc
        host, port = parsed["host"], parsed["port"]
        base_url = parsed["base_url"] or f"http://{host}:{port}"
        from_name, from_email = parsed["from"]
        templates_dir = Path(raw["templates_dir"] or default_templates_dir())
        return cls(
            database_url=parsed["database_url"],
            smtp=parsed["smtp_url"],
            smtp_url=raw["smtp_url"] or "",
            base_url=base_url,
            secret_key=parsed["secret_key"],
            previous_secret_keys=parsed["previous_secret_keys"],
            admin_token=parsed["admin_token"],
            from_name=from_name,
            from_email=from_email,
            website=parsed["website"] or base_url,
            postal_address=parsed["postal_address"],
            host=host,
            port=port,
            templates_dir=templates_dir,
            worker_lanes=parsed["worker_lanes"],
            worker_poll_s=parsed["worker_poll_s"],
            scheduler_poll_s=parsed["scheduler_poll_s"],
            sweep_every_s=parsed["sweep_every_s"],
            lease_s=parsed["lease_s"],
            smtp_timeout_s=parsed["smtp_timeout_s"],
            max_body_bytes=parsed["max_body_bytes"],
            confirm_max_age_s=parsed["confirm_max_age_s"],
            worker_batch=parsed["worker_batch"],
            send_rate_per_s=parsed["send_rate_per_s"],
            domain_concurrency=parsed["domain_concurrency"],
            domain_rate_per_min=parsed["domain_rate_per_min"],
            message_lifetime_s=parsed["message_lifetime_s"],
            retry_first_s=parsed["retry_first_s"],
            bounce_domain=parsed["bounce_domain"],
            dkim_selector=parsed["dkim_selector"],
            dkim_domain=parsed["dkim_domain"],
            dkim_key_file=parsed["dkim_key_file"],
            inbound=parsed["inbound"],
            fbl_address=parsed["fbl_address"],
            trusted_proxies=parsed["trusted_proxies"],
            cors_origins=parsed["cors_origins"],
            forms_file=Path(raw["forms_file"]) if raw["forms_file"] else None,
            subscribe_per_ip_per_hour=parsed["subscribe_per_ip_per_hour"],
            subscribe_per_address_per_hour=parsed["subscribe_per_address_per_hour"],
            confirm_resend_s=parsed["confirm_resend_s"],
            confirm_per_day=parsed["confirm_per_day"],
            body_timeout_s=parsed["body_timeout_s"],
            header_timeout_s=parsed["header_timeout_s"],
            max_connections_per_ip=parsed["max_connections_per_ip"],
            form_write_timeout_s=parsed["form_write_timeout_s"],
            soft_bounce_limit=parsed["soft_bounce_limit"],
            soft_bounce_days=parsed["soft_bounce_days"],
            blocked_pause_after=parsed["blocked_pause_after"],
            blocked_pause_s=parsed["blocked_pause_s"],
            governor_warn_rate=parsed["governor_warn_rate"],
            governor_pause_rate=parsed["governor_pause_rate"],
            governor_min_sent=parsed["governor_min_sent"],
            governor_every_s=parsed["governor_every_s"],
            governor_mx_lookup=parsed["governor_mx_lookup"],
            retention_days=parsed["retention_days"],
            rollup_every_s=parsed["rollup_every_s"],
            warmup_start=parsed["warmup_start"],
            warmup_schedule=parsed["warmup_schedule"],
            render_processes=parsed["render_processes"],
            render_time_limit_s=parsed["render_time_limit_s"],
            render_memory_mb=parsed["render_memory_mb"],
            track_flush_ms=parsed["track_flush_ms"],
            track_batch=parsed["track_batch"],
            track_queue_max=parsed["track_queue_max"],
            track_writer=parsed["track_writer"],
            machine_after_send_s=parsed["machine_after_send_s"],
            machine_window_s=parsed["machine_window_s"],
            reply_hold_s=parsed["reply_hold_s"],
            enquiry_answer_h=parsed["enquiry_answer_h"],
            enquiry_digest_to=parsed["enquiry_digest_to"] or from_email,
            enquiry_digest_after_s=parsed["enquiry_digest_after_s"],
            enquiry_digest_every_s=parsed["enquiry_digest_every_s"],
            admin_session_s=parsed["admin_session_s"],
            import_max_bytes=parsed["import_max_bytes"],
            log_format=parsed["log_format"],
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def sender(self) -> str:
        return formataddr((self.from_name, self.from_email))

    @property
    def warmup(self) -> Schedule | None:
        """The warm-up schedule when both its start and its caps are set."""
        if self.warmup_start is None or not self.warmup_schedule:
            return None
        return Schedule(self.warmup_start, self.warmup_schedule)

    @property
    def sender_domain(self) -> str:
        return self.from_email.rpartition("@")[2]

    @property
    def verp_domain(self) -> str:
        """Where bounces, replies and mailto unsubscribes are addressed."""
        return self.bounce_domain or self.sender_domain

    def identity_warnings(self) -> list[str]:
        """What mailbox providers will hold against this configuration (Gmail's and Yahoo's 2024
        rules, Outlook.com's of 2025): said by ``responder config`` and at every start. A local
        address (localhost, 127.0.0.1) is a trial run and gets no warning about the base URL."""
        warnings = []
        host = (urllib.parse.urlsplit(self.base_url).hostname or "").lower()
        local = host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")
        if self.base_url.startswith("http://") and not local:
            warnings.append(
                "RESPONDER_BASE_URL is http://: the one-click unsubscribe link (RFC 8058) must be https "
                "for Gmail and Yahoo to show it, and readers' browsers warn on http links"
            )
        from_domain = self.sender_domain.lower()
        dkim_domain = (self.dkim_domain or self.sender_domain).lower()
        # Relaxed alignment: one under the other, or siblings under a common parent (which
        # aligns when that parent is the organisation's domain, not a public suffix).
        if self.dkim_key_file is not None and alignment(dkim_domain, from_domain, strict=False) == Status.WRONG:
            warnings.append(
                f"DKIM signs for {dkim_domain} but mail is From {from_domain}: not aligned, so DMARC fails "
                "and Gmail, Yahoo and Outlook.com reject or junk bulk mail"
            )
        if self.dkim_key_file is None and not local and not self.smtp.is_file:
            warnings.append(
                "no DKIM key (RESPONDER_DKIM_KEY_FILE): Gmail, Yahoo and Outlook.com require signed bulk mail; "
                "`responder dkim keygen --out FILE` makes one"
            )
        if not self.postal_address.strip():
            warnings.append(
                "RESPONDER_POSTAL_ADDRESS is empty: the law in many countries (CAN-SPAM, for one) wants the "
                "sender's postal address in every list mail"
            )
        return warnings

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, effective value with secrets masked, help) for ``responder config``."""
        values = {
            "database_url": mask_url_password(self.database_url),
            "smtp_url": mask_url_password(self.smtp_url),
            "base_url": self.base_url,
            "secret_key": mask(self.secret_key),
            "previous_secret_keys": mask(",".join(self.previous_secret_keys) or None),
            "admin_token": mask(self.admin_token),
            "from": self.sender,
            "website": self.website,
            "postal_address": self.postal_address,
            "host": self.host,
            "port": str(self.port),
            "templates_dir": str(self.templates_dir),
            "worker_lanes": str(self.worker_lanes),
            "worker_poll_s": str(self.worker_poll_s),
            "scheduler_poll_s": str(self.scheduler_poll_s),
            "sweep_every_s": str(self.sweep_every_s),
            "lease_s": str(self.lease_s),
            "smtp_timeout_s": str(self.smtp_timeout_s),
            "max_body_bytes": str(self.max_body_bytes),
            "confirm_max_age_s": str(self.confirm_max_age_s),
            "worker_batch": str(self.worker_batch),
            "send_rate_per_s": str(self.send_rate_per_s),
            "domain_concurrency": str(self.domain_concurrency),
            "domain_rate_per_min": str(self.domain_rate_per_min),
            "message_lifetime_s": str(self.message_lifetime_s),
            "retry_first_s": str(self.retry_first_s),
            "bounce_domain": self.verp_domain,
            "dkim_selector": self.dkim_selector or "(not set: mail is not signed)",
            "dkim_domain": self.dkim_domain or self.sender_domain,
            "dkim_key_file": self.dkim_key_file or "",
            "inbound": f"{self.inbound[0]}:{self.inbound[1]}" if self.inbound else "(off)",
            "fbl_address": self.fbl_address or "",
            "trusted_proxies": ",".join(str(n) for n in self.trusted_proxies),
            "cors_origins": ",".join(self.cors_origins),
            "forms_file": str(self.forms_file or ""),
            "subscribe_per_ip_per_hour": str(self.subscribe_per_ip_per_hour),
            "subscribe_per_address_per_hour": str(self.subscribe_per_address_per_hour),
            "confirm_resend_s": str(self.confirm_resend_s),
            "confirm_per_day": str(self.confirm_per_day),
            "body_timeout_s": str(self.body_timeout_s),
            "header_timeout_s": str(self.header_timeout_s),
            "max_connections_per_ip": str(self.max_connections_per_ip),
            "form_write_timeout_s": str(self.form_write_timeout_s),
            "soft_bounce_limit": str(self.soft_bounce_limit),
            "soft_bounce_days": str(self.soft_bounce_days),
            "blocked_pause_after": str(self.blocked_pause_after),
            "blocked_pause_s": str(self.blocked_pause_s),
            "governor_warn_rate": str(self.governor_warn_rate),
            "governor_pause_rate": str(self.governor_pause_rate),
            "governor_min_sent": str(self.governor_min_sent),
            "governor_every_s": str(self.governor_every_s),
            "governor_mx_lookup": "on" if self.governor_mx_lookup else "off",
            "retention_days": str(self.retention_days or "(kept)"),
            "rollup_every_s": str(self.rollup_every_s),
            "warmup_start": str(self.warmup_start or "(off)"),
            "warmup_schedule": ",".join(map(str, self.warmup_schedule or ())) or "(off)",
            "render_processes": str(self.render_processes),
            "render_time_limit_s": str(self.render_time_limit_s),
            "render_memory_mb": str(self.render_memory_mb),
            "track_flush_ms": str(self.track_flush_ms),
            "track_batch": str(self.track_batch),
            "track_queue_max": str(self.track_queue_max),
            "track_writer": self.track_writer,
            "machine_after_send_s": str(self.machine_after_send_s),
            "machine_window_s": str(self.machine_window_s),
            "reply_hold_s": str(self.reply_hold_s),
            "enquiry_answer_h": str(self.enquiry_answer_h),
            "enquiry_digest_to": self.enquiry_digest_to,
            "enquiry_digest_after_s": str(self.enquiry_digest_after_s),
            "enquiry_digest_every_s": str(self.enquiry_digest_every_s),
            "admin_session_s": str(self.admin_session_s),
            "import_max_bytes": str(self.import_max_bytes),
            "log_format": self.log_format,
        }
        return [(spec.env, values[spec.field], spec.help) for spec in SPECS]


def reference_markdown() -> str:
    """docs/configuration.md: every setting with its environment variable, default and meaning."""
    lines = [
        "# Configuration reference",
        "",
        "Every setting is read from the environment when responder starts (`responder config` prints",
        "the effective values, secrets masked). This page is generated from `responder/settings.py`",
        "by `responder config --reference > docs/configuration.md`; a test fails when they differ.",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
    ]
    for spec in SPECS:
        default = "(unset)" if spec.default is None else f"`{spec.default}`" if spec.default else "(empty)"
        meaning = spec.help.replace("|", "\\|")
        if spec.secret:
            meaning += " (secret: masked by `responder config`)"
        lines.append(f"| `{spec.env}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def mask(secret: str | None) -> str:
    if not secret:
        return "(not set: generated and stored on first start)"
    return secret[:2] + "…" + "*" * 6


def mask_url_password(url: str) -> str:
    parts: SplitResult = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":******@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def default_templates_dir() -> Path:
    """The starter templates, shipped inside the package (``responder/starter/``) so that an
    installed wheel finds them as a source checkout does."""
    return Path(__file__).resolve().parent / "starter"
