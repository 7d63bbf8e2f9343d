"""The schema: SQLAlchemy 2 typed models for every table responder keeps."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class AppSecret(Base):
    """Secrets generated on first start (signing key, admin token) when none were configured."""

    __tablename__ = "app_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Layer(Base):
    __tablename__ = "layers"
    id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(Integer, unique=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    label: Mapped[str] = mapped_column(String(60))
    description: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime]
    # A removed layer keeps its row (layer history points at it) with position 1000 + id.
    removed_at: Mapped[dt.datetime | None]


class Subscriber(Base):
    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # pending | active | unsubscribed | bounced | complained | sunset
    status: Mapped[str] = mapped_column(String(16), index=True)
    layer_id: Mapped[int | None] = mapped_column(ForeignKey("layers.id"), index=True)
    layer_entered_at: Mapped[dt.datetime | None]
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime]
    confirmed_at: Mapped[dt.datetime | None]
    unsubscribed_at: Mapped[dt.datetime | None]
    # Subscriber choices from the unsubscribe page and preference center.
    paused_until: Mapped[dt.datetime | None]
    # A human reply holds their counted mail until the enquiry is answered or this time
    # (core.hold; written by funnel.holds only).
    held_until: Mapped[dt.datetime | None]
    # When the re-permission mail ("do you still want to hear from us?") was last queued: one per
    # silence (core.promotion.should_ask; written by funnel.sweep).
    asked_at: Mapped[dt.datetime | None]
    frequency: Mapped[str] = mapped_column(String(16), default="normal", server_default="normal")
    referred_by_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"))
    last_human_at: Mapped[dt.datetime | None]  # last human open/click/reply/…: for the sweep


class ConsentRecord(Base):
    """What a subscriber agreed to, when, from where: kept for as long as the subscriber is."""

    __tablename__ = "consent_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # subscribe | confirm
    form: Mapped[str] = mapped_column(String(64))
    wording_sha256: Mapped[str | None] = mapped_column(String(64))
    consent_version: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    # The page the form was on (the Referer of the post, without its query or fragment).
    page_url: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]


class Sequence(Base):
    __tablename__ = "sequences"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    layer_id: Mapped[int | None] = mapped_column(ForeignKey("layers.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(32), default="layer")  # layer | purchase | …
    product: Mapped[str | None] = mapped_column(String(120))  # purchase trigger: only this product
    created_at: Mapped[dt.datetime]


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("sequence_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    position: Mapped[int] = mapped_column(Integer)
    delay_s: Mapped[int] = mapped_column(Integer)
    template_name: Mapped[str] = mapped_column(String(120))
    purpose: Mapped[str] = mapped_column(String(32))
    send_window: Mapped[dict[str, Any] | None]
    condition: Mapped[dict[str, Any] | None]


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (Index("ix_enrollments_due", "state", "due_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    # active | completed | handed_off | stopped
    state: Mapped[str] = mapped_column(String(16))
    next_position: Mapped[int] = mapped_column(Integer, default=1)
    due_at: Mapped[dt.datetime | None]
    # When the step now held by the caps first fell due (its turn among waiting mail); None
    # while the step waits only for its delay.
    waiting_since: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]


class Template(Base):
    """One version of an uploaded template; the newest version of a name is used at send time."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), index=True)
    version: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(998))
    source_format: Mapped[str] = mapped_column(String(8))  # mjml | html
    source: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)  # compiled once at upload; still Jinja
    text: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[dt.datetime]


class Newsletter(Base):
    __tablename__ = "newsletters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    template_name: Mapped[str] = mapped_column(String(120))
    layer_ids: Mapped[list[Any]] = mapped_column(default=list)
    # The target layers as they were when composed and when sending started: [{"id", "position",
    # "name"}], so a newsletter still names the layers it went to after they are renamed or removed.
    layer_snapshot: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    # draft | scheduled | sending | paused | sent | cancelled
    state: Mapped[str] = mapped_column(String(16))
    scheduled_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    total: Mapped[int] = mapped_column(Integer, default=0)  # audience size, fixed at start
    cursor: Mapped[int] = mapped_column(Integer, default=0)  # last subscriber id enqueued
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class AbTest(Base):
    """An A/B test of one newsletter or one drip step (``funnel.abtests``): how it splits,
    where a newsletter's test stands, and the winner once there is one."""

    __tablename__ = "ab_tests"
    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int | None] = mapped_column(ForeignKey("newsletters.id", ondelete="CASCADE"), unique=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), unique=True)
    # Newsletters: the share of the audience (percent) split between the variants; the rest get
    # the winner ``wait_s`` after the test share was queued, or when an admin picks one.
    share_pct: Mapped[int] = mapped_column(Integer, default=100)
    wait_s: Mapped[int] = mapped_column(Integer, default=0)
    # Newsletters, when the wait ends without a winner: ``best`` (send the leader) | ``wait`` (an admin picks).
    on_no_winner: Mapped[str] = mapped_column(String(8), default="best")
    # Steps: once every variant has this many deliveries and the verdict names a winner, keep it.
    keep_after: Mapped[int | None] = mapped_column(Integer)
    # Newsletters: test (queueing the test share) | wait (for the winner) | pick (the wait ended
    # without a winner: an admin picks) | rest (queueing the rest, or done).
    phase: Mapped[str] = mapped_column(String(8), default="test")
    tested_at: Mapped[dt.datetime | None]  # when the test share had all been queued
    winner_id: Mapped[int | None] = mapped_column(Integer)  # one of this test's variants
    decided_by: Mapped[str | None] = mapped_column(String(8))  # verdict | leader | admin
    decided_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]


class AbVariant(Base):
    """One variant of an A/B test: its own subject and/or template, and its weight in the split.
    A subject of its own is sent through a template version of its own (``derived_template_id``,
    made from ``derived_from_id``), which the delivery worker renders like any other."""

    __tablename__ = "ab_variants"
    __table_args__ = (UniqueConstraint("test_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    test_id: Mapped[int] = mapped_column(ForeignKey("ab_tests.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(1))  # A, B, C, D
    subject: Mapped[str | None] = mapped_column(String(998))
    template_name: Mapped[str | None] = mapped_column(String(120))
    weight: Mapped[int] = mapped_column(Integer)
    derived_template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id"))
    derived_from_id: Mapped[int | None] = mapped_column(Integer)


# Messages in these states wait for their next attempt (see ``delivery/outbox.py``), as the
# literal SQL of the partial index ``ix_messages_due_order`` and of the claim that uses it (a bound
# parameter cannot prove an index's predicate). On SQLite a unary "+" keeps ``ix_messages_due``
# from looking the cheaper way to the claim's rows: it would read and sort the whole backlog.
MESSAGES_DUE_STATES_SQL = {
    "sqlite": "+state IN ('queued', 'deferred')",
    "postgresql": "state IN ('queued', 'deferred')",
}
# The same for the mail that goes ahead of newsletters (confirmations, drip steps, privacy mail):
# ``ix_messages_due_first``, so a confirmation queued behind a million newsletter rows is claimed
# by the next claim instead of after them.
MESSAGES_DUE_FIRST_SQL = {
    dialect: f"{states} AND kind <> 'newsletter'" for dialect, states in MESSAGES_DUE_STATES_SQL.items()
}


class Message(Base):
    """The outbox: one row per message; a (subscriber, step) or (subscriber, newsletter) pair once."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "step_id"),
        UniqueConstraint("subscriber_id", "newsletter_id"),
        Index("ix_messages_due", "state", "next_attempt_at"),
        # The claim's order over every due state at once, so a claim reads a batch's worth of
        # index entries instead of sorting the whole backlog.
        Index(
            "ix_messages_due_order",
            "next_attempt_at",
            "id",
            sqlite_where=sql_text(MESSAGES_DUE_STATES_SQL["sqlite"]),
            postgresql_where=sql_text(MESSAGES_DUE_STATES_SQL["postgresql"]),
        ),
        Index(
            "ix_messages_due_first",
            "next_attempt_at",
            "id",
            sqlite_where=sql_text(MESSAGES_DUE_FIRST_SQL["sqlite"]),
            postgresql_where=sql_text(MESSAGES_DUE_FIRST_SQL["postgresql"]),
        ),
        # The per-variant figures of A/B tests; most rows have no variant.
        # Per step and per newsletter, how their mails ended: counted from the index alone.
        Index(
            "ix_messages_step_state",
            "step_id",
            "state",
            sqlite_where=sql_text("step_id IS NOT NULL"),
            postgresql_where=sql_text("step_id IS NOT NULL"),
        ),
        Index(
            "ix_messages_newsletter_state",
            "newsletter_id",
            "state",
            sqlite_where=sql_text("newsletter_id IS NOT NULL"),
            postgresql_where=sql_text("newsletter_id IS NOT NULL"),
        ),
        Index(
            "ix_messages_variant",
            "variant_id",
            sqlite_where=sql_text("variant_id IS NOT NULL"),
            postgresql_where=sql_text("variant_id IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # confirm | step | newsletter
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id"))
    newsletter_id: Mapped[int | None] = mapped_column(ForeignKey("newsletters.id"))
    template_name: Mapped[str] = mapped_column(String(120))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id"))
    # queued | sending | sent | deferred | failed | bounced
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None]
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    sent_at: Mapped[dt.datetime | None]
    # The A/B variant this mail was given when it was queued (``funnel.abtests``); NULL outside tests.
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("ab_variants.id"))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_subscriber_time", "subscriber_id", "created_at"),
        # The roll-up's ranges and the reports' tail since the last roll-up (``funnel.rollup``).
        Index("ix_events_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    # sent, open, click, reply, enquiry, purchase, referral, unsubscribe, bounce, complaint,
    # confirm, promoted
    type: Mapped[str] = mapped_column(String(16), index=True)
    url: Mapped[str | None] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    machine: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why an open or click is human or machine (``core.machine``: ``human``, ``gmail_proxy``,
    # ``trap``, ``sweep`` …), and ``auto_reply`` for an automatic reply; NULL for the rest.
    verdict: Mapped[str | None] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime]


class Enquiry(Base):
    __tablename__ = "enquiries"
    __table_args__ = (Index("ix_enquiries_state_created", "state", "created_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(998), default="")
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    created_at: Mapped[dt.datetime]
    acknowledged_at: Mapped[dt.datetime | None]
    closed_at: Mapped[dt.datetime | None]
    name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    source: Mapped[str] = mapped_column(String(16), default="form", server_default="form")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    # due | sending | sent | skipped (auto-reply, bounce, list: never answered automatically) | failed
    ack_state: Mapped[str] = mapped_column(String(16), default="due", server_default="due")
    ack_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    answer: Mapped[str | None] = mapped_column(Text)
    answer_state: Mapped[str | None] = mapped_column(String(16))  # due | sending | sent | failed
    answered_at: Mapped[dt.datetime | None]
    answer_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the acknowledgement (answer) may be tried next: for "due" not before then (a retry's
    # backoff; none: at once), for "sending" when the worker's claim lapses and another takes it.
    ack_at: Mapped[dt.datetime | None]
    answer_at: Mapped[dt.datetime | None]
    digested_at: Mapped[dt.datetime | None]


class Suppression(Base):
    """An erased address, kept only as a keyed hash so it is never mailed again."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_hmac: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime]


class InboundMail(Base):
    """One inbound mail already recorded, by its ``Message-ID`` and the address it came to (a
    keyed digest of both): the same mail delivered twice is recorded once."""

    __tablename__ = "inbound_mail"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    outcome: Mapped[str] = mapped_column(String(80))
    received_at: Mapped[dt.datetime] = mapped_column(index=True)


class LayerHistory(Base):
    """Every change of a subscriber's place in the funnel: from where to where, why, and which
    events triggered it.

    ``kind`` says what happened: ``enter`` (placed in a layer on confirming or by an import; no
    from layer), ``move`` (promoted, demoted, moved by an admin or by a layer's removal),
    ``relocate`` (a subscriber who is not active carried along when their layer is removed),
    ``sunset`` (mail stopped after long silence; from and to are the layer they stay in) and
    ``revive`` (a sunset subscriber came back; from and to are that layer). Layers are kept by id;
    their position and name at the time are copied, so removing, reordering or renaming a layer
    later changes neither which way a move went nor how it reads.
    """

    __tablename__ = "layer_history"
    __table_args__ = (
        Index("ix_layer_history_subscriber_time", "subscriber_id", "created_at"),
        Index("ix_layer_history_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="move", server_default="move")
    from_layer_id: Mapped[int | None] = mapped_column(ForeignKey("layers.id"))
    to_layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    from_position: Mapped[int | None] = mapped_column(Integer)
    to_position: Mapped[int | None] = mapped_column(Integer)
    from_name: Mapped[str | None] = mapped_column(String(120))
    to_name: Mapped[str | None] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(String(255))
    event_ids: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime]


class DeliveryControl(Base):
    """Switches every worker reads before claiming work, e.g. ``paused`` (value "1" or "0")."""

    __tablename__ = "delivery_controls"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[dt.datetime]


class NewsletterRecipient(Base):
    """A newsletter's audience, fixed when sending starts; walked in subscriber id order."""

    __tablename__ = "newsletter_recipients"
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletters.id"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), primary_key=True)
    # The recipient's layer when sending started, for the report by layer (NULL before i19).
    layer_id: Mapped[int | None] = mapped_column(ForeignKey("layers.id"))


class Webhook(Base):
    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(255))
    events: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime]


class WebhookDelivery(Base):
    """One event for one webhook: the delivery log and the retry queue in one table."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending | delivered | failed
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    delivered_at: Mapped[dt.datetime | None]


class AdminUser(Base):
    """A person who signs in to the admin web UI; the password is kept as an argon2 hash."""

    __tablename__ = "admin_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime]
    last_login_at: Mapped[dt.datetime | None]


class AdminSession(Base):
    """A signed-in browser: the cookie holds a random value, the table only its SHA-256."""

    __tablename__ = "admin_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("admin_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]


class ApiToken(Base):
    """A named bearer token for /api/v1/ with read or write scope, stored as its SHA-256."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))  # read | write
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime]


class ImportJob(Base):
    """One CSV import: its progress while it runs and, after, the report of rejected rows."""

    __tablename__ = "import_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # running | done | failed
    consent_source: Mapped[str] = mapped_column(String(64), default="")
    # What the imported get of their layer's sequence: none | next | start, spread over spread_s.
    enroll: Mapped[str] = mapped_column(String(16), default="none")
    spread_s: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(Integer, default=0)
    bytes_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    rejected_rows: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    # When the running import last wrote its progress (after every batch); a job silent far
    # longer than a batch takes belonged to a process that died (importer.STALE_AFTER).
    updated_at: Mapped[dt.datetime | None]


class RateLimit(Base):
    """Hits on one limit (``audience.limits``) in one fixed window: kept in the database so a
    limit holds across restarts and across processes."""

    __tablename__ = "rate_limits"
    bucket: Mapped[str] = mapped_column(String(320), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hits: Mapped[int] = mapped_column(Integer)


class DomainPause(Base):
    """A recipient domain not mailed until ``until``: it refused our mail for policy or
    reputation reasons again and again (``delivery.worker.soft_bounced``)."""

    __tablename__ = "domain_pauses"
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    until: Mapped[dt.datetime]
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]


class GovernorState(Base):
    """What the complaint governor (``core.governor``) last said of one layer's mail at one
    mailbox provider; ``layer_id`` 0 is the provider's mail as a whole. A ``paused`` row holds
    newsletters and drip steps to that layer at that provider until an admin resumes it."""

    __tablename__ = "governor_states"
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    level: Mapped[str] = mapped_column(String(8))  # ok | warn | paused
    reason: Mapped[str] = mapped_column(String(500), default="")
    day_sent: Mapped[int] = mapped_column(Integer, default=0)
    day_complaints: Mapped[int] = mapped_column(Integer, default=0)
    week_sent: Mapped[int] = mapped_column(Integer, default=0)
    week_complaints: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[dt.datetime]
    resumed_at: Mapped[dt.datetime | None]
    resumed_by: Mapped[str | None] = mapped_column(String(120))


class MailDomain(Base):
    """The mailbox provider behind a recipient domain not known by name, found from its MX
    hosts (``core.governor.MX_PATTERNS``) and kept for a month."""

    __tablename__ = "mail_domains"
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    checked_at: Mapped[dt.datetime]


class RolledFigure(Base):
    """One figure of one day, counted once from events and outbox rows (``funnel.rollup``):
    the dashboard and the reports add these to what happened since the last roll-up instead of
    scanning every row, and they outlive the rows the retention period deletes. ``scope`` is
    ``all`` (``scope_id`` 0), ``step`` or ``newsletter``; ``layer_id`` is a newsletter
    recipient's layer when sending started (0: none or unknown)."""

    __tablename__ = "rolled_figures"
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    scope: Mapped[str] = mapped_column(String(12), primary_key=True)
    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    metric: Mapped[str] = mapped_column(String(48), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class RollupState(Base):
    """Where the roll-up stands (one row): events created before ``rolled_until`` are in
    ``rolled_figures``, and so are the layer flow's day counts of what happened before
    ``flow_rolled_until``; rows older than ``pruned_before`` have been deleted."""

    __tablename__ = "rollup_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rolled_until: Mapped[dt.datetime | None]
    flow_rolled_until: Mapped[dt.datetime | None]
    pruned_before: Mapped[dt.datetime | None]
    pruned_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    pruned_events: Mapped[int] = mapped_column(BigInteger, default=0)


class SubscriberCount(Base):
    """Subscribers per (layer, status), kept by triggers on ``subscribers`` (migration
    ``i24_counts``): every insert, update and delete, by whatever path, moves the counts, so a
    report reads a few rows instead of counting the list. ``layer_id`` 0: in no layer."""

    __tablename__ = "subscriber_counts"
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class MailCount(Base):
    """Outbox rows per drip step, and per newsletter and recipient layer, by state, kept by
    triggers on ``messages`` (migration ``i24_counts``), so the reports read a few rows instead
    of counting a newsletter's million mails. ``scope`` is ``step`` (``layer_id`` 0) or
    ``newsletter``; on PostgreSQL the counts are spread over ``slot`` (the row's id modulo
    ``MAIL_COUNT_SLOTS``) so that workers recording sends at once do not wait on one row.
    A migration that rebuilds ``messages`` or ``subscribers`` on SQLite (``batch_alter_table``)
    drops their triggers and must create them again."""

    __tablename__ = "mail_counts"
    scope: Mapped[str] = mapped_column(String(12), primary_key=True)
    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    layer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class SentStep(Base):
    """A drip step a subscriber was sent whose outbox row the retention period deleted: what
    keeps the step from being sent to them a second time."""

    __tablename__ = "sent_steps"
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), primary_key=True)
