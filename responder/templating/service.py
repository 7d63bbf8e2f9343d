"""What an admin does with templates — upload, sync a folder, list, preview, test send — as
plain async functions the API, the CLI and the admin UI all call."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..delivery.build import newest_template
from ..delivery.dkim import signed_mail
from ..delivery.mime import Mail, new_message_id
from ..delivery.transport import Transport, make_transport
from ..errors import NotFound, TemplateError, ValidationError
from ..models import Layer, Subscriber, Template
from ..runtime import Runtime
from ..validation import clean_email
from .compile import Compiled, detect_format
from .context import recipient_context, sample_context, sample_contexts, template_kinds
from .render import NO_UNSUBSCRIBE_PURPOSES, Footer, Rendered, finish
from .sendable import check_renders, kinds_in_use
from .store import add_version

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,119}")
PURPOSE = re.compile(r"[a-z0-9_-]{0,32}")
_TITLE = re.compile(r"<(?:mj-title|title)[^>]*>(.*?)</(?:mj-title|title)>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    name: str
    subject: str
    source: str
    source_format: str | None = None
    text: str | None = None
    purpose: str = ""

    def checked(self) -> Upload:
        if not NAME.fullmatch(self.name or ""):
            raise ValidationError(
                "name must be 1-120 characters: lower-case letters, digits, "
                "'.', '_' or '-', starting with a letter or digit",
                field="name",
            )
        if not PURPOSE.fullmatch(self.purpose or ""):
            raise ValidationError("purpose must be up to 32 lower-case letters, digits, '_' or '-'", field="purpose")
        if not self.source.strip():
            raise ValidationError("the template body is empty", field="body")
        return self


def template_json(template: Template, *, versions: int | None = None, with_source: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": template.id,
        "name": template.name,
        "version": template.version,
        "subject": template.subject,
        "format": template.source_format,
        "purpose": template.purpose,
        "text": "explicit" if template.text is not None else "generated",
        "created_at": template.created_at.isoformat(),
    }
    if versions is not None:
        body["versions"] = versions
    if with_source:
        body.update(source=template.source, html=template.html, text_body=template.text)
    return body


async def compile_upload(rt: Runtime, upload: Upload) -> Compiled:
    """Compile and render against the sample context of each kind of mail the template is for
    (``context.template_kinds``): raises ``TemplateError`` (422) if either fails, before
    anything is stored."""
    upload = upload.checked()
    samples = [
        sample for kind in template_kinds(upload.name, upload.purpose) for sample in sample_contexts(rt.settings, kind)
    ]
    return await rt.renderer.compile(upload.source, upload.subject, upload.source_format, upload.text, samples)


async def store_version(rt: Runtime, session: AsyncSession, upload: Upload, compiled: Compiled) -> Template:
    """Add the new version, refused (and rolled back with the transaction) if it does not render
    as a kind of mail that sends its name already: a step or an unfinished newsletter."""
    template = await add_version(session, upload.name, compiled, upload.purpose, rt.clock.now())
    own = template_kinds(upload.name, upload.purpose)
    for kind in await kinds_in_use(session, upload.name):
        if kind not in own:
            await check_renders(rt.renderer, rt.settings, template, kind)
    return template


async def upload_template(rt: Runtime, upload: Upload) -> dict[str, Any]:
    """Store a new version of ``upload.name``; versions count up from 1."""
    compiled = await compile_upload(rt, upload)
    async with rt.db.transaction() as session:
        return template_json(await store_version(rt, session, upload, compiled))


def _same(template: Template | None, upload: Upload) -> bool:
    return template is not None and (
        template.source,
        template.subject,
        template.text,
        template.purpose,
        template.source_format,
    ) == (
        upload.source,
        upload.subject,
        upload.text,
        upload.purpose,
        upload.source_format or detect_format(upload.source),
    )


def folder_uploads(folder: Path) -> list[Upload]:
    """The templates of a folder: those listed in its ``starter.toml`` with their subjects, then
    any other ``.mjml``/``.html`` file, named after the file, its subject taken from its title."""
    manifest_path = folder / "starter.toml"
    uploads: list[Upload] = []
    listed: set[str] = set()
    try:
        manifest = tomllib.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        for entry in manifest.get("templates", []):
            uploads.append(
                Upload(
                    entry["name"],
                    entry["subject"],
                    (folder / entry["file"]).read_text(),
                    purpose=entry.get("purpose", ""),
                )
            )
            listed.add(entry["file"])
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".mjml", ".html") or path.name in listed:
                continue
            source = path.read_text()
            title = _TITLE.search(source)
            if title is None:
                raise ValidationError(
                    f"{path.name}: not in starter.toml and has no <mj-title> or <title> to use as its subject",
                    field="file",
                )
            uploads.append(Upload(path.stem.lower(), " ".join(title.group(1).split()), source))
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ValidationError(f"cannot read templates from {folder}: {exc}") from exc
    return uploads


async def sync_folder(rt: Runtime, folder: Path) -> list[tuple[str, int, bool]]:
    """Upload every template of ``folder`` whose content changed: (name, version, added).

    All are compiled first, so one broken file stores nothing."""
    uploads = folder_uploads(folder)
    compiled: list[tuple[Upload, Compiled]] = []
    for upload in uploads:
        try:
            compiled.append((upload, await compile_upload(rt, upload)))
        except TemplateError as exc:
            raise TemplateError(f"{upload.name}: {exc.message}", field=exc.field) from exc
    results: list[tuple[str, int, bool]] = []
    async with rt.db.transaction() as session:
        for upload, done in compiled:
            newest = await newest_template(session, upload.name)
            if _same(newest, upload):
                assert newest is not None
                results.append((upload.name, newest.version, False))
                continue
            template = await store_version(rt, session, upload, done)
            results.append((upload.name, template.version, True))
    return results


async def list_templates(rt: Runtime) -> list[dict[str, Any]]:
    async with rt.db.read() as session:
        # Names starting with "~" are never uploaded: they are versions the server made itself
        # (an A/B variant's own subject, ``funnel.abtests``), not templates to pick.
        newest = (
            select(Template.name, func.max(Template.version).label("version"), func.count().label("versions"))
            .where(~Template.name.startswith("~"))
            .group_by(Template.name)
            .subquery()
        )
        rows = (
            await session.execute(
                select(Template, newest.c.versions)
                .join(newest, (Template.name == newest.c.name) & (Template.version == newest.c.version))
                .order_by(Template.name)
            )
        ).all()
        return [template_json(template, versions=count) for template, count in rows]


async def template_versions(rt: Runtime, name: str) -> dict[str, Any]:
    async with rt.db.read() as session:
        versions = (
            (await session.execute(select(Template).where(Template.name == name).order_by(Template.version.desc())))
            .scalars()
            .all()
        )
        if not versions:
            raise NotFound(f"no template named {name!r}")
        body = template_json(versions[0], versions=len(versions), with_source=True)
        body["history"] = [template_json(v) for v in versions]
        return body


async def _template(session: AsyncSession, name: str, version: int | None) -> Template:
    if version is None:
        template = await newest_template(session, name)
    else:
        template = (
            await session.execute(select(Template).where(Template.name == name, Template.version == version))
        ).scalar_one_or_none()
    if template is None:
        raise NotFound(f"no template named {name!r}" + (f" with version {version}" if version else ""))
    return template


async def render_preview(
    rt: Runtime, name: str, *, subscriber_id: int | None = None, version: int | None = None
) -> tuple[Rendered, Template]:
    """Render a template as a subscriber (or the sample recipient) would get it in the first kind
    of mail it is for, links untracked. The enquiry acknowledgement has no subscriber: always
    the sample enquiry."""
    async with rt.db.read() as session:
        template = await _template(session, name, version)
        kind = template_kinds(template.name, template.purpose)[0]
        if subscriber_id is None or kind == "enquiry-ack":
            context = sample_context(rt.settings, kind)
        else:
            subscriber = await session.get(Subscriber, subscriber_id)
            if subscriber is None:
                raise NotFound(f"no subscriber with id {subscriber_id}")
            layer = await session.get(Layer, subscriber.layer_id) if subscriber.layer_id else None
            context = recipient_context(rt, subscriber, layer, kind)
    rendered = finish(
        await rt.renderer.render(template.subject, template.html, template.text, context),
        track_link=None,
        open_pixel_url=None,
        base_url=rt.settings.base_url,
        # As sent: the acknowledgement has no footer, the confirmation no unsubscribe link.
        footer=None
        if kind == "enquiry-ack"
        else Footer(
            rt.settings.from_name,
            rt.settings.postal_address,
            None
            if kind == "confirm" or template.purpose in NO_UNSUBSCRIBE_PURPOSES
            else context["links"]["unsubscribe"],
        ),
    )
    return rendered, template


async def preview(
    rt: Runtime, name: str, *, subscriber_id: int | None = None, version: int | None = None
) -> dict[str, Any]:
    rendered, template = await render_preview(rt, name, subscriber_id=subscriber_id, version=version)
    return {
        "name": template.name,
        "version": template.version,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
    }


async def test_send(
    rt: Runtime, name: str, to_email: object, *, subscriber_id: int | None = None, transport: Transport | None = None
) -> dict[str, Any]:
    """Send one rendering of ``name`` to ``to_email``, subject marked ``[Test]``; nothing is
    recorded against any subscriber."""
    to_email = clean_email(to_email)
    rendered, template = await render_preview(rt, name, subscriber_id=subscriber_id)
    settings = rt.settings
    mail = Mail(
        from_name=settings.from_name,
        from_email=settings.from_email,
        to_name="",
        to_email=to_email,
        subject=f"[Test] {rendered.subject}",
        html=rendered.html,
        text=rendered.text,
        message_id=new_message_id(settings.sender_domain),
        date=rt.clock.now(),
    )
    data = signed_mail(settings, mail)
    own = transport is None
    transport = transport or make_transport(settings)
    try:
        await transport.send(mail.envelope, data)
    finally:
        if own:
            await transport.close()
    return {"name": template.name, "version": template.version, "to": to_email, "message_id": mail.message_id}
