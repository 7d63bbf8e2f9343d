"""Tags match exactly, never as patterns: a newsletter, a filter, an export or a step condition
for ``vip_gold`` does not reach ``vipXgold``; tags with ``%``, ``"``, ``\\`` or non-ASCII
letters match only themselves, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import unicodedata
from pathlib import Path

import pytest
from sqlalchemy import func, select

from responder.audience.directory import SubscriberFilter, list_subscribers
from responder.cli import main
from responder.core.pacing import condition_holds
from responder.funnel import newsletters
from responder.models import Message, NewsletterRecipient, Subscriber
from responder.runtime import Runtime

from .admin_fixtures import make_subscriber as placed
from .conftest import App
from .funnel_fixtures import make_subscriber, rt  # noqa: F401
from .test_layer_flow import get, wait_until

VIP, LOOKALIKE = "vip_gold", "vipXgold"


async def test_vip_gold_does_not_reach_vipxgold(app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gold = await placed(app.rt, "gold@example.com", layer=2, tags=[VIP])
    await placed(app.rt, "x@example.com", layer=2, tags=[LOOKALIKE])

    # Filters and export, through the API and the CLI.
    found = await get(app, f"/api/v1/subscribers?tag={VIP}")
    assert [s["email"] for s in found["subscribers"]] == ["gold@example.com"]
    resp = await app.client.get(f"/api/v1/subscribers.csv?tag={VIP}", headers=app.auth)
    assert [r["email"] for r in csv.DictReader(io.StringIO(await resp.text()))] == ["gold@example.com"]
    settings = app.rt.settings
    for key, value in {
        "RESPONDER_SMTP_URL": f"file:{tmp_path / 'out'}",
        "RESPONDER_ADMIN_TOKEN": settings.admin_token or "",
        "RESPONDER_SECRET_KEY": "test-secret-key",
    }.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "export.csv"
    args = ["subscribers", "export", str(out), "--tag", VIP, "--database-url", settings.database_url]
    assert await asyncio.to_thread(main, args) == 0
    assert [r["email"] for r in csv.DictReader(io.StringIO(out.read_text()))] == ["gold@example.com"]

    # A newsletter for the tag.
    resp = await app.client.post(
        "/api/v1/newsletters",
        json={"name": "Gold", "template": "layer2-quick-wins", "layers": [2], "tags": [VIP], "send_now": True},
        headers=app.auth,
    )
    assert resp.status == 201, await resp.text()
    newsletter_id = (await resp.json())["id"]
    await app.smtp.wait_for(1, "gold@example.com")

    async def sent() -> bool:
        return (await get(app, f"/api/v1/newsletters/{newsletter_id}"))["state"] == "sent"

    await wait_until(sent, "the newsletter to finish")
    assert (await get(app, f"/api/v1/newsletters/{newsletter_id}"))["total"] == 1
    assert app.smtp.to("x@example.com") == []

    # A step that requires the tag.
    sequence = next(s for s in (await get(app, "/api/v1/sequences"))["sequences"] if s["layer"] == 3)
    first = sequence["steps"][0]
    resp = await app.client.patch(
        f"/api/v1/sequences/{sequence['id']}/steps/{first['id']}",
        json={"condition": {"require_tags": [VIP]}},
        headers=app.auth,
    )
    assert resp.status == 200, await resp.text()
    ann = await make_subscriber(app.rt, "ann@example.com", layer=3, tags=[VIP])
    bea = await make_subscriber(app.rt, "bea@example.com", layer=3, tags=[LOOKALIKE])
    app.rt.wake_scheduler()
    [welcome] = await app.smtp.wait_for(1, "ann@example.com")
    async with app.rt.db.read() as session:
        templates = dict(
            (
                await session.execute(
                    select(Message.subscriber_id, Message.template_name).where(Message.step_id.is_not(None))
                )
            ).all()
        )
    assert templates == {ann.id: first["template"]}  # bea's step was skipped
    assert bea.id not in templates and gold not in templates
    assert welcome.message["Subject"]


# Each tag, and look-alikes that a pattern, an escape or a normalisation would confuse with it.
TRICKY = {
    "vip_gold": ["vipXgold", "vip%gold", "VIP_GOLD"],
    "50%off": ["50Xoff", "50%offer", "5050%off"],
    'say "hi"': ['say \\"hi\\"', "say hi", 'say "hi" twice'],
    "back\\slash": ["back\\\\slash", "backslash", "back/slash"],
    "café": [unicodedata.normalize("NFD", "café"), "cafe", "CAFÉ", "caf\\u00e9"],
    "日本": ["日本語", "日"],
}


async def test_tricky_tags_match_only_themselves(rt: Runtime) -> None:  # noqa: F811
    owner = {}
    for n, (tag, decoys) in enumerate(TRICKY.items()):
        owner[tag] = await placed(rt, f"t{n}@example.com", layer=2, tags=[tag])
        for m, decoy in enumerate(decoys):
            await placed(rt, f"d{n}-{m}@example.com", layer=2, tags=[decoy])
    async with rt.db.transaction() as session:
        for tag in TRICKY:
            page = await list_subscribers(session, SubscriberFilter(tag=tag), limit=200)
            assert [s.id for s, _ in page.items] == [owner[tag]], tag
            assert condition_holds({"require_tags": [tag]}, purchased=False, tags=[tag])
            assert not any(condition_holds({"require_tags": [tag]}, purchased=False, tags=[d]) for d in TRICKY[tag])
            # A newsletter's audience is fixed in the database with the same comparison.
            newsletter = await newsletters.create(
                session, {"name": tag, "template": "layer2-quick-wins", "layers": [2]}, rt.clock.now(), rt.settings
            )
            newsletter.tags = [tag]
            await newsletters.fix_audience(session, newsletter, rt.clock.now())
            recipients = (
                await session.execute(
                    select(NewsletterRecipient.subscriber_id).where(NewsletterRecipient.newsletter_id == newsletter.id)
                )
            ).scalars()
            assert list(recipients) == [owner[tag]], tag
        # Every decoy is matched by itself (so none of them is unreachable either).
        for decoys in TRICKY.values():
            for decoy in decoys:
                page = await list_subscribers(session, SubscriberFilter(tag=decoy), limit=200)
                assert len(page.items) == 1, decoy
        total = (await session.execute(select(func.count()).select_from(Subscriber))).scalar_one()
        assert total == len(TRICKY) + sum(len(d) for d in TRICKY.values())
