"""A/B tests of newsletters and drip steps: their variants, the variant each recipient gets
when their mail is queued, and when a winner takes over.

A test has 2 to 4 variants (A–D), each with a subject and/or a template of its own (neither: the
newsletter or step as written, a control) and a weight in the split. The variant is chosen when
the mail is queued (``core.abtest.pick`` on the test's and the subscriber's ids, so a retry or
a crash never changes it) and written on the outbox row (``messages.variant_id``), so every
figure counts per variant (``reports.variant_figures``). Once a winner is chosen, every mail
queued from then on is the winner.

A variant's own subject is sent through a template version of its own, ``~ab<variant id>``: the
newest version of the variant's template with that subject, made when the test is written and
again whenever that template has a newer version when mail is queued. The message records that
version, so the delivery worker renders a variant like any template. Names starting with ``~``
are never uploaded, and template lists leave them out.

**Newsletters** test on a share of the audience: when sending starts the audience is fixed as
always; the first walk over it queues those in the test share (``core.abtest.in_test_share``)
with their variants and skips the others, then the newsletter waits (``wait_s``) for its winner:
the verdict's, else — by ``on_no_winner`` — the variant most likely best (``best``) or the one an
admin picks (``wait``: the test is then in phase ``pick``). An admin may pick one at any time. A
second walk queues the rest with the winner. Both walks read the same hash, so nobody is in both
or in neither, and the outbox's (subscriber, newsletter) key keeps each to one mail whatever
happens.

**Steps** split each subscriber reaching the step; with ``keep_after``, once every variant has
that many deliveries and the verdict names a winner, the step keeps the winner for good.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..core.abtest import (
    LABELS,
    MAX_VARIANTS,
    MIN_CLICKS,
    MIN_SENT_PER_VARIANT,
    MIN_VARIANTS,
    WINNER_P,
    Arm,
    Verdict,
    kept_winner,
    pick,
    rest_choice,
    verdict,
)
from ..core.schedule import format_duration, parse_duration
from ..delivery.build import newest_template
from ..errors import Conflict, NotFound, TemplateError, ValidationError
from ..models import AbTest, AbVariant, Message, Newsletter, Step, Template
from ..settings import Settings
from ..templating.compile import Compiled
from ..templating.pool import Renderer
from ..templating.sendable import check_renders, sendable_template
from ..templating.store import add_version
from ..validation import clean_text
from .reports import CONVERSION_WINDOW, VariantFigures, variant_figures

DERIVED_PREFIX = "~ab"  # template versions made for a variant's own subject
DEFAULT_SHARE_PCT = 20
DEFAULT_WAIT_S = 4 * 3600
MAX_WAIT_S = 30 * 86400
ON_NO_WINNER = ("best", "wait")
NOT_STARTED = ("draft", "scheduled")


@dataclass
class Split:
    """One test as its mail is queued: which variant a subscriber gets, and what their outbox
    row then carries."""

    test: AbTest
    variants: list[AbVariant]
    template_name: str  # the newsletter's or the step's own template

    def variant_for(self, subscriber_id: int) -> AbVariant:
        if self.test.winner_id is not None:
            return next(v for v in self.variants if v.id == self.test.winner_id)
        return self.variants[pick(self.test.id, subscriber_id, [v.weight for v in self.variants])]

    def row(self, subscriber_id: int) -> tuple[str, dict[str, Any]]:
        """The template name and the extra outbox columns (``outbox_row``'s keywords)."""
        variant = self.variant_for(subscriber_id)
        return variant.template_name or self.template_name, {
            "variant_id": variant.id,
            "template_id": variant.derived_template_id,
        }


async def variants_of(session: AsyncSession, test_id: int) -> list[AbVariant]:
    return list(
        (await session.execute(select(AbVariant).where(AbVariant.test_id == test_id).order_by(AbVariant.label)))
        .scalars()
        .all()
    )


async def newsletter_tests(session: AsyncSession, newsletter_ids: list[int]) -> dict[int, AbTest]:
    if not newsletter_ids:
        return {}
    # Locked: an admin picking a winner waits for this tick's decision, and sees it.
    tests = await session.execute(select(AbTest).where(AbTest.newsletter_id.in_(newsletter_ids)).with_for_update())
    return {test.newsletter_id: test for test in tests.scalars() if test.newsletter_id is not None}


async def test_of(session: AsyncSession, *, newsletter_id: int | None = None, step_id: int | None = None) -> AbTest:
    """The test of a newsletter or a step, or ``NotFound``."""
    where = AbTest.newsletter_id == newsletter_id if newsletter_id is not None else AbTest.step_id == step_id
    test = (await session.execute(select(AbTest).where(where))).scalar_one_or_none()
    if test is None:
        raise NotFound("no A/B test here")
    return test


# Writing a test.


def _clean_variants(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not MIN_VARIANTS <= len(value) <= MAX_VARIANTS:
        raise ValidationError(f"variants must be a list of {MIN_VARIANTS} to {MAX_VARIANTS} variants", field="variants")
    cleaned = []
    for label, item in zip(LABELS, value, strict=False):
        if not isinstance(item, dict):
            raise ValidationError(f"variant {label} must be an object", field="variants")
        subject = clean_text(item.get("subject"), f"variant {label}'s subject", max_len=998) or None
        template = clean_text(item.get("template"), f"variant {label}'s template", max_len=120) or None
        weight = item.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 100:
            raise ValidationError(f"variant {label}'s weight must be a whole number from 1 to 100", field="variants")
        cleaned.append({"label": label, "subject": subject, "template_name": template, "weight": weight})
    return cleaned


async def _write(
    session: AsyncSession,
    test: AbTest,
    variants: list[dict[str, Any]],
    base_template: str,
    kind: str,
    now: dt.datetime,
    settings: Settings,
    renderer: Renderer | None,
) -> AbTest:
    """Store ``test`` with ``variants`` after checking that each renders as a ``kind`` mail;
    nothing is written when one does not (the caller's transaction rolls back)."""
    session.add(test)
    await session.flush()
    for values in variants:
        try:
            base = await sendable_template(session, settings, values["template_name"] or base_template, kind, renderer)
            if values["subject"] is not None:
                await check_renders(renderer, settings, _with_subject(base, values["subject"]), kind)
        except TemplateError as exc:
            raise TemplateError(f"variant {values['label']}: {exc.message}", field="variants") from exc
        variant = AbVariant(test_id=test.id, **values)
        session.add(variant)
        await session.flush()
        if variant.subject is not None:
            await _derive(session, variant, base, now)
    return test


def _with_subject(base: Template, subject: str) -> Template:
    return Template(
        name=base.name,
        version=base.version,
        subject=subject,
        source_format=base.source_format,
        source=base.source,
        html=base.html,
        text=base.text,
        purpose=base.purpose,
    )


async def _derive(session: AsyncSession, variant: AbVariant, base: Template, now: dt.datetime) -> None:
    """A version of ``~ab<id>`` that is ``base`` with the variant's subject."""
    assert variant.subject is not None
    compiled = Compiled(variant.subject, base.source_format, base.source, base.html, base.text)
    derived = await add_version(session, f"{DERIVED_PREFIX}{variant.id}", compiled, base.purpose, now)
    variant.derived_template_id, variant.derived_from_id = derived.id, base.id


async def _remove(session: AsyncSession, test: AbTest) -> None:
    """Remove a test nobody was sent, with the template versions made for its variants."""
    derived = [v.derived_template_id for v in await variants_of(session, test.id) if v.derived_template_id]
    await session.execute(delete(AbVariant).where(AbVariant.test_id == test.id))
    if derived:
        await session.execute(delete(Template).where(Template.id.in_(derived)))
    await session.delete(test)
    await session.flush()


def _percent(value: Any, field: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise ValidationError(f"{field} must be a whole percentage from 1 to 100", field=field)
    return value


def _wait_s(value: Any) -> int:
    if value is None:
        return DEFAULT_WAIT_S
    if not isinstance(value, str):
        raise ValidationError("wait must be a duration such as 4h or 1d", field="wait")
    try:
        seconds = parse_duration(value)
    except ValidationError as exc:
        raise ValidationError(exc.message, field="wait") from exc
    if seconds > MAX_WAIT_S:
        raise ValidationError("wait must be 30 days or less", field="wait")
    return seconds


async def put_newsletter_test(
    session: AsyncSession,
    newsletter: Newsletter,
    data: Any,
    now: dt.datetime,
    settings: Settings,
    renderer: Renderer | None = None,
) -> AbTest:
    """Create or replace the test of a newsletter that has not started sending."""
    if not isinstance(data, dict):
        raise ValidationError("ab must be an object", field="ab")
    # Read again, locked: a scheduler starting it now either goes first (and this is refused)
    # or waits for this test to be written.
    await session.refresh(newsletter, with_for_update=True)
    if newsletter.state not in NOT_STARTED:
        raise Conflict(f"a {newsletter.state} newsletter's A/B test cannot be changed")
    variants = _clean_variants(data.get("variants"))
    on_no_winner = data.get("on_no_winner", "best")
    if on_no_winner not in ON_NO_WINNER:
        raise ValidationError("on_no_winner must be best or wait", field="on_no_winner")
    test = AbTest(
        newsletter_id=newsletter.id,
        share_pct=_percent(data.get("test_share"), "test_share", DEFAULT_SHARE_PCT),
        wait_s=_wait_s(data.get("wait")),
        on_no_winner=on_no_winner,
        phase="test",
        created_at=now,
    )
    old = (await session.execute(select(AbTest).where(AbTest.newsletter_id == newsletter.id))).scalar_one_or_none()
    if old is not None:
        await _remove(session, old)
    return await _write(session, test, variants, newsletter.template_name, "newsletter", now, settings, renderer)


async def _sends(session: AsyncSession, test: AbTest) -> int:
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(Message)
                .join(AbVariant, AbVariant.id == Message.variant_id)
                .where(AbVariant.test_id == test.id)
            )
        ).scalar_one()
    )


async def put_step_test(
    session: AsyncSession,
    step_id: int,
    data: Any,
    now: dt.datetime,
    settings: Settings,
    renderer: Renderer | None = None,
) -> AbTest:
    """Create or replace a step's test; one that has queued mail cannot be replaced."""
    step = await session.get(Step, step_id)
    if step is None:
        raise NotFound("no such step")
    if not isinstance(data, dict):
        raise ValidationError("the A/B test must be an object", field="ab")
    variants = _clean_variants(data.get("variants"))
    keep_after = data.get("keep_winner_after")
    if keep_after is not None and (
        not isinstance(keep_after, int) or isinstance(keep_after, bool) or not MIN_SENT_PER_VARIANT <= keep_after
    ):
        raise ValidationError(
            f"keep_winner_after must be a number of sends per variant, at least {MIN_SENT_PER_VARIANT} "
            "(no verdict comes before that), or null",
            field="keep_winner_after",
        )
    old = (await session.execute(select(AbTest).where(AbTest.step_id == step.id))).scalar_one_or_none()
    if old is not None:
        if await _sends(session, old):
            raise Conflict("this step's A/B test has sent mail already; pick a winner instead of replacing it")
        await _remove(session, old)
    test = AbTest(step_id=step.id, keep_after=keep_after, phase="test", created_at=now)
    return await _write(session, test, variants, step.template_name, "step", now, settings, renderer)


async def remove_test(session: AsyncSession, test: AbTest) -> None:
    """Remove a test before any of its mail was queued (a newsletter not yet started)."""
    if test.newsletter_id is not None:
        newsletter = await session.get(Newsletter, test.newsletter_id)
        if newsletter is not None and newsletter.state not in NOT_STARTED:
            raise Conflict(f"a {newsletter.state} newsletter's A/B test cannot be removed")
    if await _sends(session, test):
        raise Conflict("this A/B test has sent mail already; pick a winner instead")
    await _remove(session, test)


# Queueing.


async def split_for(session: AsyncSession, test: AbTest, template_name: str, now: dt.datetime) -> Split:
    """The test ready to queue with: a variant with its own subject gets a new version of its
    template if its template has a newer version than the one it was made from."""
    variants = await variants_of(session, test.id)
    for variant in variants:
        if variant.subject is None:
            continue
        base = await newest_template(session, variant.template_name or template_name)
        if base is not None and base.id != variant.derived_from_id:
            await _derive(session, variant, base, now)
    return Split(test, variants, template_name)


async def step_splits(session: AsyncSession, step_templates: dict[int, str], now: dt.datetime) -> dict[int, Split]:
    """The tests of these steps (id → its template), ready to queue with; a test whose
    ``keep_after`` is reached with a winner keeps it first."""
    if not step_templates:
        return {}
    tests = (
        (await session.execute(select(AbTest).where(AbTest.step_id.in_(step_templates)).with_for_update()))
        .scalars()
        .all()
    )
    splits = {}
    for test in tests:
        assert test.step_id is not None
        split = await split_for(session, test, step_templates[test.step_id], now)
        if test.winner_id is None and test.keep_after is not None:
            arms, result = await _evidence(session, split.variants)
            kept = kept_winner(arms, result, test.keep_after)
            if kept is not None:
                _decide(test, split.variants[kept], "verdict", now)
        splits[test.step_id] = split
    return splits


# Deciding.


def _arms(variants: list[AbVariant], figures: dict[int, VariantFigures]) -> list[Arm]:
    """The verdict's evidence: delivered mails and the human clicks among them."""
    return [Arm(figures[v.id].sent, min(figures[v.id].clicked, figures[v.id].sent)) for v in variants]


async def _evidence(session: AsyncSession, variants: list[AbVariant]) -> tuple[list[Arm], Verdict]:
    arms = _arms(variants, await variant_figures(session, [v.id for v in variants], conversions=False))
    return arms, verdict(arms, [v.label for v in variants])


def _decide(test: AbTest, variant: AbVariant, by: str, now: dt.datetime) -> None:
    test.winner_id, test.decided_by, test.decided_at = variant.id, by, now


def rest_at(test: AbTest) -> dt.datetime | None:
    """When an A/B newsletter's wait for its winner ends (None before its test share was queued)."""
    return test.tested_at + dt.timedelta(seconds=test.wait_s) if test.tested_at is not None else None


async def ready_for_rest(session: AsyncSession, test: AbTest, now: dt.datetime) -> bool:
    """For a newsletter waiting for its winner: whether the rest can be sent now (a winner was
    picked, or the wait is over and ``core.abtest.rest_choice`` chose one). Sets the phase:
    ``rest``, or ``pick`` when the wait ended without a winner and an admin is to choose (the
    figures are not counted again at every tick)."""
    if test.winner_id is None:
        end = rest_at(test)
        if test.phase == "pick" or end is None or now < end:
            return False
        variants = await variants_of(session, test.id)
        _arms, result = await _evidence(session, variants)
        chosen, by = rest_choice(result, test.on_no_winner)
        if chosen is None or by is None:
            test.phase = "pick"
            return False
        _decide(test, variants[chosen], by, now)
    test.phase = "rest"
    return True


async def pick_winner(session: AsyncSession, test: AbTest, label: Any, now: dt.datetime) -> AbTest:
    """An admin's choice: from now on every mail of the test is this variant (for a newsletter:
    the rest of the audience gets it as soon as the test share has been queued)."""
    await session.refresh(test, with_for_update=True)  # a scheduler deciding now goes first, or waits
    variants = await variants_of(session, test.id)
    chosen = next((v for v in variants if v.label == label), None)
    if chosen is None:
        raise ValidationError(f"variant must be one of {', '.join(v.label for v in variants)}", field="variant")
    if test.winner_id is not None:
        won = next(v.label for v in variants if v.id == test.winner_id)
        raise Conflict(f"Variant {won} was chosen already")
    if test.newsletter_id is not None:
        newsletter = await session.get(Newsletter, test.newsletter_id)
        assert newsletter is not None
        if newsletter.started_at is None:
            raise Conflict("the newsletter has not started sending: there is nothing to choose from yet")
        if newsletter.state == "cancelled":
            raise Conflict("the newsletter was cancelled")
        if test.share_pct >= 100:
            raise Conflict("every recipient is in the test: there is no rest to send the winner to")
    _decide(test, chosen, "admin", now)
    return test


# Reading.


async def test_json(session: AsyncSession, test: AbTest) -> dict[str, Any]:
    """The test with its variants' figures and the verdict, as the API and the pages show it."""
    variants = await variants_of(session, test.id)
    figures = await variant_figures(session, [v.id for v in variants])
    result = verdict(_arms(variants, figures), [v.label for v in variants])
    winner = next((v.label for v in variants if v.id == test.winner_id), None)
    out: dict[str, Any] = {
        "id": test.id,
        "newsletter_id": test.newsletter_id,
        "step_id": test.step_id,
        "variants": [
            {
                "label": v.label,
                "subject": v.subject,
                "template": v.template_name,
                "weight": v.weight,
                "share": round(v.weight / sum(x.weight for x in variants), 4),
                "figures": figures[v.id].as_json(),
                "p_best": round(p, 4),
            }
            for v, p in zip(variants, result.p_best, strict=True)
        ],
        "verdict": {
            "status": result.status,
            "sentence": result.sentence,
            "leader": variants[result.leader].label,
            "winner": variants[result.winner].label if result.winner is not None else None,
        },
        "winner": winner,
        "decided_by": test.decided_by,
        "decided_at": test.decided_at.isoformat() if test.decided_at else None,
        "conversion_window": f"{CONVERSION_WINDOW.days}d",
        "thresholds": {"min_sent_per_variant": MIN_SENT_PER_VARIANT, "min_clicks": MIN_CLICKS, "winner_p": WINNER_P},
    }
    if test.newsletter_id is not None:
        end = rest_at(test)
        out |= {
            "test_share": test.share_pct,
            "wait": format_duration(test.wait_s),
            "on_no_winner": test.on_no_winner,
            "phase": test.phase,
            "tested_at": test.tested_at.isoformat() if test.tested_at else None,
            "rest_at": end.isoformat() if end else None,
        }
    else:
        out["keep_winner_after"] = test.keep_after
    return out
