"""The A/B test fields of the admin forms — a newsletter's compose form and a drip step's
variants page — read into the input ``funnel.abtests`` takes, and kept to show the form again.

Per variant A–D: ``ab_subject_X``, ``ab_template_X`` (blank: the mail's own) and ``ab_weight_X``
(blank: 1). Variants A and B are always there; C and D only when given a subject or a template.
A newsletter's form adds ``ab`` (the box that makes it a test), ``ab_share``, ``ab_wait`` and
``ab_on_no_winner``; a step's adds ``ab_keep_after``. Numbers that are not numbers are passed on
as -1, so the service refuses them with its own words.
"""

from __future__ import annotations

from typing import Any

from ...core.abtest import LABELS

VARIANT_FIELDS = tuple(f"ab_{part}_{label}" for label in LABELS for part in ("subject", "template", "weight"))
NEWSLETTER_FIELDS = ("ab", "ab_share", "ab_wait", "ab_on_no_winner", *VARIANT_FIELDS)
STEP_FIELDS = ("ab_keep_after", *VARIANT_FIELDS)
DECIDED_BY = {
    "verdict": "the verdict named it",
    "leader": "it was the most likely best when the wait ended, though not a clear winner",
    "admin": "an admin chose it",
}


def _text(form: Any, key: str) -> str:
    return str(form.get(key, "") or "").strip()


def _number(raw: str, default: int | None) -> int | None:
    if not raw:
        return default
    return int(raw) if raw.isdigit() and len(raw) <= 6 else -1


def variants_input(form: Any) -> list[dict[str, Any]]:
    variants = []
    for label in LABELS:
        subject, template = _text(form, f"ab_subject_{label}"), _text(form, f"ab_template_{label}")
        if label not in "AB" and not subject and not template:
            continue
        weight = _number(_text(form, f"ab_weight_{label}"), 1)
        variants.append({"subject": subject or None, "template": template or None, "weight": weight})
    return variants


def newsletter_input(form: Any) -> dict[str, Any] | None:
    """The compose form's A/B test, or None when its box is not ticked."""
    if form.get("ab") != "on":
        return None
    return {
        "variants": variants_input(form),
        "test_share": _number(_text(form, "ab_share"), None),
        "wait": _text(form, "ab_wait") or None,
        "on_no_winner": _text(form, "ab_on_no_winner") or "best",
    }


def step_input(form: Any) -> dict[str, Any]:
    return {"variants": variants_input(form), "keep_winner_after": _number(_text(form, "ab_keep_after"), None)}


def kept(form: Any, fields: tuple[str, ...]) -> dict[str, str]:
    """The fields as typed, to fill the form again after a refusal or on the confirmation page."""
    return {key: str(form.get(key, "") or "") for key in fields}
