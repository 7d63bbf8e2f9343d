"""Templates through the admin API and the CLI, on SQLite and PostgreSQL: upload (JSON and
multipart), versions, refusal that stores nothing, preview, test send, the version a sent
message records, and the mail viewed online."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiohttp import FormData
from sqlalchemy import func, select

from responder.cli import main
from responder.models import Layer, Message, Subscriber, Template
from responder.settings import default_templates_dir

from .conftest import BASE_URL, App, SmtpSink

HTML = (
    "<html><body><p>Hello {{ subscriber.first_name or 'friend' }}</p>"
    '<p><a href="{{ sender.website }}/start">Start</a></p></body></html>'
)


async def count_templates(app: App, name: str) -> int:
    async with app.rt.db.read() as session:
        return (
            await session.execute(select(func.count()).select_from(Template).where(Template.name == name))
        ).scalar_one()


async def make_subscriber(app: App, email: str = "bea@example.com", name: str = "Bea Smith", position: int = 3) -> int:
    async with app.rt.db.transaction() as session:
        layer = (await session.execute(select(Layer).where(Layer.position == position))).scalar_one()
        subscriber = Subscriber(
            email=email,
            name=name,
            status="active",
            layer_id=layer.id,
            attributes={"company": "Smith Ltd"},
            tags=["preferred"],
            created_at=app.clock.now(),
        )
        session.add(subscriber)
        await session.flush()
        return subscriber.id


async def sent_template(app: App, name: str) -> Template:
    """The template version a sent message records (the worker records it just after sending)."""
    for _ in range(200):
        async with app.rt.db.read() as session:
            message = (
                await session.execute(select(Message).where(Message.template_name == name, Message.state == "sent"))
            ).scalar_one_or_none()
            if message is not None:
                template = await session.get(Template, message.template_id)
                assert template is not None
                return template
        await asyncio.sleep(0.02)  # real I/O: the worker's write, not fake-clock time
    raise AssertionError(f"no sent message of {name}")


async def test_upload_json_makes_versions(app: App) -> None:
    body = {"name": "offer", "subject": "For {{ subscriber.first_name }}", "body": HTML, "purpose": "offer"}
    first = await app.client.post("/api/v1/templates", json=body, headers=app.auth)
    assert first.status == 201, await first.text()
    assert (await first.json())["version"] == 1
    second = await app.client.post("/api/v1/templates", json={**body, "subject": "New"}, headers=app.auth)
    stored = await second.json()
    assert stored["version"] == 2 and stored["format"] == "html" and stored["text"] == "generated"

    listing = await (await app.client.get("/api/v1/templates", headers=app.auth)).json()
    offer = next(t for t in listing["templates"] if t["name"] == "offer")
    assert (offer["version"], offer["versions"], offer["subject"]) == (2, 2, "New")
    detail = await (await app.client.get("/api/v1/templates/offer", headers=app.auth)).json()
    assert [v["version"] for v in detail["history"]] == [2, 1]
    assert detail["source"] == HTML and "{{ subscriber.first_name" in detail["html"]


async def test_upload_multipart_file(app: App) -> None:
    source = (app.rt.settings.templates_dir / "newsletter.mjml").read_text()
    form = FormData()
    form.add_field("file", source.encode(), filename="March-News.mjml", content_type="application/octet-stream")
    form.add_field("subject", "March news")
    form.add_field("purpose", "newsletter")
    resp = await app.client.post("/api/v1/templates", data=form, headers=app.auth)
    assert resp.status == 201, await resp.text()
    stored = await resp.json()
    assert (stored["name"], stored["format"], stored["version"]) == ("march-news", "mjml", 1)


async def test_refused_upload_names_the_line_and_stores_nothing(app: App) -> None:
    before = await count_templates(app, "layer1-welcome")
    bad = "<p>fine</p>\n<p>{{ subscriber.frist_name }}</p>"
    resp = await app.client.post(
        "/api/v1/templates", headers=app.auth, json={"name": "layer1-welcome", "subject": "Hi", "body": bad}
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "template_error"
    assert error["message"] == "body, line 2: 'dict object' has no attribute 'frist_name'"
    assert await count_templates(app, "layer1-welcome") == before

    big = {"name": "big", "subject": "Hi", "body": "<p>" + "x" * (600 * 1024) + "</p>"}
    resp = await app.client.post("/api/v1/templates", headers=app.auth, json=big)
    assert resp.status == 422, await resp.text()
    assert "512 KB" in (await resp.json())["error"]["message"]
    resp = await app.client.post(
        "/api/v1/templates", headers=app.auth, json={"name": "Bad Name!", "subject": "Hi", "body": HTML}
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "name"
    resp = await app.client.post("/api/v1/templates", json={"name": "x"})
    assert resp.status == 401


async def test_openapi_describes_the_template_routes(app: App) -> None:
    paths = (await (await app.client.get("/api/v1/openapi.json")).json())["paths"]
    assert set(paths["/api/v1/templates"]) == {"get", "post"}
    assert "422" in paths["/api/v1/templates"]["post"]["responses"]
    for path in ("/api/v1/templates/{name}", "/api/v1/templates/{name}/preview"):
        assert "get" in paths[path]
    assert "post" in paths["/api/v1/templates/{name}/test"]


async def test_preview_sample_and_subscriber(app: App) -> None:
    resp = await app.client.get("/api/v1/templates/newsletter/preview", headers=app.auth)
    assert resp.status == 200
    sample = await resp.json()
    assert sample["subject"] == "News from Acme & Sons for Sam"
    assert "Hi Sam," in sample["html"] and "/c/" not in sample["html"]
    assert "For our" not in sample["html"]  # the layer-3 section is not for layer 1
    assert "Hi Sam," in sample["text"]

    subscriber_id = await make_subscriber(app, position=3)
    resp = await app.client.get(f"/api/v1/templates/newsletter/preview?subscriber_id={subscriber_id}", headers=app.auth)
    bea = await resp.json()
    assert "Hi Bea," in bea["html"] and "For our Expert customers" in bea["html"]
    assert "For our Expert customers" in bea["text"]
    resp = await app.client.get("/api/v1/templates/nope/preview", headers=app.auth)
    assert resp.status == 404
    resp = await app.client.get("/api/v1/templates/newsletter/preview?subscriber_id=x", headers=app.auth)
    assert resp.status == 400


async def test_test_send_reaches_the_address(app: App, smtp: SmtpSink) -> None:
    resp = await app.client.post(
        "/api/v1/templates/layer2-how-to/test", headers=app.auth, json={"email": "Designer@Example.com"}
    )
    assert resp.status == 202, await resp.text()
    [mail] = await smtp.wait_for(1, "designer@example.com")
    msg = mail.message
    assert msg["Subject"] == "[Test] Getting the most from what you already have"
    assert msg.get_body(("plain",)).get_content().startswith("[View this email")
    resp = await app.client.post(
        "/api/v1/templates/layer2-how-to/test", headers=app.auth, json={"email": "not an address"}
    )
    assert resp.status == 400
    smtp.handler.replies["gone@example.com"] = "550 5.1.1 no such user"
    resp = await app.client.post(
        "/api/v1/templates/layer2-how-to/test", headers=app.auth, json={"email": "gone@example.com"}
    )
    assert resp.status == 503 and "no such user" in (await resp.json())["error"]["message"]


async def test_render_failure_for_one_subscriber_is_a_clear_error(app: App) -> None:
    # Renders for the sample subscriber (no tags), so the upload is accepted ...
    body = "<p>Hi</p>\n{% if subscriber.tags %}<p>{{ subscriber.attributes.missing }}</p>{% endif %}"
    resp = await app.client.post(
        "/api/v1/templates", headers=app.auth, json={"name": "tagged", "subject": "Hi", "body": body}
    )
    assert resp.status == 201
    # ... and a subscriber it cannot render for gets a 422 naming the line, not a broken mail.
    subscriber_id = await make_subscriber(app)
    resp = await app.client.get(f"/api/v1/templates/tagged/preview?subscriber_id={subscriber_id}", headers=app.auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["message"] == "body, line 2: 'dict object' has no attribute 'missing'"


async def test_sent_message_records_newest_version_and_views_online(app: App, smtp: SmtpSink) -> None:
    newer = (
        (app.rt.settings.templates_dir / "layer1-welcome.mjml")
        .read_text()
        .replace("Thank you for joining us", "Thanks for joining, version two")
    )
    resp = await app.client.post(
        "/api/v1/templates",
        headers=app.auth,
        json={"name": "layer1-welcome", "subject": "Welcome v2, {{ subscriber.first_name }}", "body": newer},
    )
    assert (await resp.json())["version"] == 2
    await app.client.post("/subscribe", data={"email": "cy@example.com", "name": "Cy Young"})
    [confirmation] = await smtp.wait_for(1, "cy@example.com")
    text = confirmation.message.get_body(("plain",)).get_content()
    confirm = re.search(r"https://news\.example\.com/confirm/[\w.\-]+", text)
    assert confirm
    await app.client.post(app.path(confirm.group(0)))
    welcome = (await smtp.wait_for(2, "cy@example.com"))[1]
    assert welcome.message["Subject"] == "Welcome v2, Cy"
    template = await sent_template(app, "layer1-welcome")
    assert template.version == 2

    html = welcome.message.get_body(("html",)).get_content()
    view = re.search(r'href="(https://news\.example\.com/v/[^"]+)"', html)
    assert view, "the view-online link is not tracked"
    resp = await app.client.get(app.path(view.group(1)))
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert "Thanks for joining, version two" in page and "Hi Cy," in page
    assert "/o/" not in page and "/c/" not in page  # viewing online is not an open or a click
    resp = await app.client.get("/v/forged-token")
    assert resp.status == 404


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESPONDER_SECRET_KEY", "k")
    monkeypatch.setenv("RESPONDER_ADMIN_TOKEN", "t")
    monkeypatch.setenv("RESPONDER_BASE_URL", BASE_URL)
    monkeypatch.setenv("RESPONDER_SMTP_URL", f"file:{tmp_path / 'outbox'}")


def test_cli_add_and_sync(database_url: str, tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", database_url]
    good = tmp_path / "Promo.html"
    good.write_text(HTML)
    assert main(["templates", "add", str(good), "--subject", "Promo", *db]) == 0
    assert "promo: version 1 stored" in capsys.readouterr().out
    assert main(["templates", "add", str(good), "--name", "promo", "--subject", "Promo 2", *db]) == 0
    assert "promo: version 2 stored" in capsys.readouterr().out
    bad = tmp_path / "bad.html"
    bad.write_text("<p>{% if %}</p>")
    assert main(["templates", "add", str(bad), "--subject", "x", *db]) == 1
    assert "body, line 1: " in capsys.readouterr().err

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "hello.mjml").write_text(
        "<mjml><mj-head><mj-title>Hello {{ subscriber.first_name }}</mj-title></mj-head>"
        "<mj-body><mj-section><mj-column><mj-text>Hi</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>"
    )
    assert main(["templates", "sync", str(folder), *db]) == 0
    assert "hello: version 1 stored" in capsys.readouterr().out
    assert main(["templates", "sync", str(folder), *db]) == 0  # unchanged: no new version
    assert "hello: version 1 unchanged" in capsys.readouterr().out
    starter = default_templates_dir()
    assert main(["templates", "sync", str(starter), *db]) == 0
    out = capsys.readouterr().out
    assert "newsletter: version 1 unchanged" in out and "stored" not in out
