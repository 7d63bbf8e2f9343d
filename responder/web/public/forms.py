"""Opt-in forms: what each landing-page form shows and may send.

Forms live in a file (``RESPONDER_FORMS_FILE``, TOML or JSON), not in a table: they are written
by whoever builds the landing pages, reviewed and versioned beside them, and read once at start.
A form named ``default`` always exists. Example (TOML)::

    [forms.spring]
    title = "Spring guide"
    consent = "I agree to receive the spring guide and related emails."
    consent_version = "2026-03"
    redirects = ["https://landing.example.com/thanks"]   # exact URLs a form may return to
    origins = ["https://landing.example.com"]            # CORS for script submissions
    attributes = ["company", "plan"]                     # custom fields kept on the subscriber
    pow_bits = 0                                         # proof-of-work difficulty; 0 = off
"""

from __future__ import annotations

import html
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError, NotFound
from ...settings import Settings, parse_origins

DEFAULT_CONSENT = "I agree to receive emails and can unsubscribe at any time with one click."
HONEYPOT = "hp_website"
MAX_POW_BITS = 24
MAX_ATTRIBUTES = 20
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Form:
    id: str
    title: str = ""
    intro: str = "Get our emails: confirm once, unsubscribe any time."
    consent: str = DEFAULT_CONSENT
    consent_version: str = "1"
    redirects: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    pow_bits: int = 0


@dataclass(frozen=True)
class Forms:
    forms: dict[str, Form] = field(default_factory=dict)
    origins: tuple[str, ...] = ()  # the instance-wide CORS origins

    def get(self, form_id: str) -> Form:
        try:
            return self.forms[form_id]
        except KeyError:
            raise NotFound(f"no form named {form_id!r}") from None

    def allows_origin(self, origin: str) -> bool:
        origin = origin.lower()
        return origin in self.origins or any(origin in f.origins for f in self.forms.values())


def load_forms(settings: Settings) -> Forms:
    raw: dict[str, Any] = {}
    if settings.forms_file is not None:
        raw = _read(settings.forms_file).get("forms", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{settings.forms_file}: 'forms' must be a table of forms")
    forms = {name: _form(name, spec, settings.forms_file) for name, spec in raw.items()}
    forms.setdefault("default", Form("default"))
    return Forms(forms, settings.cors_origins)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read forms file {path}: {exc}") from exc


def _form(name: str, spec: Any, path: Path | None) -> Form:
    where = f"{path}: form {name!r}"
    if not _NAME.match(name) or not isinstance(spec, dict):
        raise ConfigError(f"{where}: names are 1-64 letters, digits, '-' or '_'; values tables")
    unknown = set(spec) - {
        "title",
        "intro",
        "consent",
        "consent_version",
        "redirects",
        "origins",
        "attributes",
        "pow_bits",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    redirects = tuple(spec.get("redirects", ()))
    for url in redirects:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}: redirect {url!r} is not an absolute http(s) URL")
    attributes = tuple(spec.get("attributes", ()))
    if len(attributes) > MAX_ATTRIBUTES or not all(isinstance(a, str) and _ATTRIBUTE.match(a) for a in attributes):
        raise ConfigError(f"{where}: attributes are up to {MAX_ATTRIBUTES} lower-case names")
    pow_bits = spec.get("pow_bits", 0)
    if not isinstance(pow_bits, int) or not 0 <= pow_bits <= MAX_POW_BITS:
        raise ConfigError(f"{where}: pow_bits must be 0..{MAX_POW_BITS}")
    try:
        origins = parse_origins(",".join(spec.get("origins", ())))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc
    return Form(
        id=name,
        title=str(spec.get("title", "")),
        intro=str(spec.get("intro", Form.intro)),
        consent=str(spec.get("consent", DEFAULT_CONSENT)),
        consent_version=str(spec.get("consent_version", "1")),
        redirects=redirects,
        origins=origins,
        attributes=attributes,
        pow_bits=pow_bits,
    )


def snippet(form: Form, base_url: str, *, nonce: str | None = None) -> str:
    """The HTML a landing-page author pastes: a plain form that works without JavaScript.

    With proof of work on, a small script fetches a challenge and solves it before submitting.
    """
    e = html.escape
    fields = "".join(
        f"\n  <label>{e(a.replace('_', ' ').capitalize())} "
        f'<input type="text" name="attr_{e(a)}" maxlength="200"></label>'
        for a in form.attributes
    )
    redirect = f'\n  <input type="hidden" name="redirect" value="{e(form.redirects[0])}">' if form.redirects else ""
    out = f"""<form class="responder-subscribe" method="post" action="{e(base_url)}/subscribe" \
accept-charset="utf-8">
  <input type="hidden" name="form" value="{e(form.id)}">
  <input type="hidden" name="consent" value="{e(form.consent)}">
  <input type="hidden" name="consent_version" value="{e(form.consent_version)}">{redirect}
  <label>Your name <input type="text" name="name" maxlength="200" autocomplete="name"></label>
  <label>Email address <input type="email" name="email" required maxlength="254" autocomplete="email"></label>{fields}
  <div style="position:absolute;left:-10000px" aria-hidden="true">\
<input type="text" name="{HONEYPOT}" tabindex="-1" autocomplete="off"></div>
  <p>{e(form.consent)}</p>
  <button type="submit">Subscribe</button>
</form>"""
    if form.pow_bits:
        script = POW_SCRIPT if nonce is None else POW_SCRIPT.replace("<script>", f'<script nonce="{e(nonce)}">', 1)
        out += script.replace("__BASE__", json.dumps(base_url)).replace("__FORM__", json.dumps(form.id))
    return out


# Proof of work in the browser: find a nonce so that SHA-256("challenge:nonce") starts with
# `bits` zero bits. A few hundred milliseconds for a person, a real cost for a flood.
POW_SCRIPT = """
<script>
(function () {
  var form = document.currentScript.previousElementSibling;
  form.addEventListener("submit", async function (ev) {
    if (form.elements.pow_nonce) return;
    ev.preventDefault();
    var r = await fetch(__BASE__ + "/subscribe/" + __FORM__ + "/challenge");
    var c = await r.json(), enc = new TextEncoder();
    for (var n = 0; ; n++) {
      var d = new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(c.challenge + ":" + n)));
      var bits = 0;
      for (var i = 0; i < d.length; i++) {
        if (d[i] === 0) { bits += 8; continue; }
        bits += Math.clz32(d[i]) - 24; break;
      }
      if (bits >= c.bits) break;
    }
    [["pow_challenge", c.challenge], ["pow_nonce", String(n)]].forEach(function (kv) {
      var i = document.createElement("input");
      i.type = "hidden"; i.name = kv[0]; i.value = kv[1]; form.appendChild(i);
    });
    form.submit();
  });
})();
</script>"""
