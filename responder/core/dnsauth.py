"""What a domain publishes for mail authentication, judged: DKIM key records (RFC 6376), DMARC
(RFC 9989, DMARCbis) and its alignment with From, the MX of the bounce domain, and
forward-confirmed reverse DNS of the sending IP. SPF lives beside it in ``core.spf``.

Gmail and Yahoo (2024) and Outlook.com (2025) refuse bulk mail unless SPF and DKIM pass and a
DMARC record (at least ``p=none``) is aligned with From; Gmail also wants a PTR that resolves
back. Each check reads records through a ``Lookup`` it is given and returns ``Finding``s a
person can act on, with the record to publish; ``responder doctor`` (``responder/doctor.py``)
does the DNS and prints them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    WARNING = "warning"
    MISSING = "missing"
    WRONG = "wrong"
    ERROR = "error"  # the DNS gave no answer (timeout, SERVFAIL): nothing could be judged


PROBLEMS = frozenset({Status.MISSING, Status.WRONG, Status.ERROR})
_RANK = {status: rank for rank, status in enumerate(Status)}


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Finding:
    status: Status
    check: str  # SPF, DKIM, DMARC, MX, PTR
    message: str

    def line(self) -> str:
        return f"{self.status:<8} {self.check:<5} {self.message}"


class LookupFailed(Exception):
    """The DNS gave no usable answer (timeout, SERVFAIL, refused): unlike "no such record", it
    says nothing about what is published."""


Lookup = Callable[[str, str], Awaitable[list[str]]]
"""(name, type) → the texts of the records, ``[]`` when the name or the type does not exist,
``LookupFailed`` otherwise. TXT: the strings of each record joined (a key longer than 255 bytes
comes in several); A/AAAA: addresses; MX: ``"preference host"``; PTR: the host. Names have no
final dot."""


async def settle(check: str, work: Awaitable[list[Finding]]) -> list[Finding]:
    """The findings of ``work``, or one ``error`` line when the DNS did not answer."""
    try:
        return await work
    except LookupFailed as exc:
        return [Finding(Status.ERROR, check, f"could not check: {exc}")]


def tags(record: str) -> dict[str, str]:
    """The ``name=value; …`` tag list of a DKIM or DMARC record (RFC 6376 3.2), names lower-cased."""
    found: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            found.setdefault(name.strip().lower(), value.strip())
    return found


def alignment(domain: str, from_domain: str, *, strict: bool) -> Status:
    """Whether an authenticated ``domain`` (DKIM ``d=``, the envelope sender's) aligns with the
    From domain for DMARC: the same name under ``strict``; otherwise the same organisational
    domain, which without the public suffix list is judged as one being the other or under it
    (``ok``), or both under a common parent (``warning``: aligned only if that parent is the
    organisation's domain, not a public suffix such as co.uk)."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if a == b:
        return Status.OK
    if strict:
        return Status.WRONG
    if a.endswith("." + b) or b.endswith("." + a):
        return Status.OK
    shared = 0
    for x, y in zip(reversed(a.split(".")), reversed(b.split(".")), strict=False):
        if x != y:
            break
        shared += 1
    return Status.WARNING if shared >= 2 else Status.WRONG


# DKIM ------------------------------------------------------------------------------------


def _key_records(texts: list[str]) -> list[dict[str, str]]:
    """The TXT records that are DKIM keys: a ``p=`` tag, and ``v=DKIM1`` when there is a ``v=``."""
    found = []
    for text in texts:
        record = tags(text)
        if "p" in record and record.get("v", "DKIM1") == "DKIM1":
            found.append(record)
    return found


def _bare(value: str) -> str:
    return re.sub(r"\s+", "", value)


async def check_dkim_key(name: str, expected: str, source: str, lookup: Lookup) -> list[Finding]:
    """``name`` (``SELECTOR._domainkey.DOMAIN``) publishes the public half of the key in
    ``source``, whose own record is ``expected`` (``v=DKIM1; k=…; p=…``)."""
    publish = f'publish: {name} TXT "{expected}"'
    records = _key_records(await lookup(name, "TXT"))
    if not records:
        return [Finding(Status.MISSING, "DKIM", f"{name} has no key record, so no signature verifies; {publish}")]
    want = _bare(tags(expected)["p"])
    matching = [r for r in records if _bare(r["p"]) == want]
    if not matching:
        if all(not _bare(r["p"]) for r in records):
            return [Finding(Status.WRONG, "DKIM", f"{name} revokes its key (empty p=); {publish}")]
        return [Finding(Status.WRONG, "DKIM", f"{name} publishes another key than {source}; {publish}")]
    notes = []
    if len(records) > 1:
        notes.append(f"{len(records)} key records at the name: a receiver may try the wrong one; keep only this")
    if "y" in matching[0].get("t", "").split(":"):
        notes.append("t=y: testing, receivers may treat failures as unsigned; drop t=y")
    said = f"{name} publishes the key of {source} (k={matching[0].get('k', 'rsa')})"
    return [Finding(Status.WARNING if notes else Status.OK, "DKIM", "; ".join([said, *notes]))]


async def check_dkim_selector(name: str, lookup: Lookup) -> list[Finding]:
    """``name`` publishes a usable key, for a selector whose private key is not here (a relay's)."""
    records = _key_records(await lookup(name, "TXT"))
    usable = [r for r in records if _bare(r["p"])]
    if not usable:
        why = "revokes its key (empty p=)" if records else "has no key record"
        return [Finding(Status.MISSING, "DKIM", f"{name} {why}; publish the record your signer gives you")]
    return [
        Finding(Status.OK, "DKIM", f"{name} publishes a key (k={usable[0].get('k', 'rsa')}; not compared: no key file)")
    ]


def dkim_off() -> list[Finding]:
    return [
        Finding(
            Status.MISSING,
            "DKIM",
            "signing is off (no RESPONDER_DKIM_SELECTOR and RESPONDER_DKIM_KEY_FILE): Gmail, Yahoo and Outlook.com "
            "require DKIM; `responder dkim keygen --out FILE` makes a key and prints its record "
            "(--selector S checks a relay's)",
        )
    ]


# DMARC -----------------------------------------------------------------------------------

POLICIES = ("none", "quarantine", "reject")
# RFC 9989 dropped these: pct became t=y, and report formats and intervals are the receiver's.
REMOVED_TAGS = {"pct": "use t=y to test instead", "rf": "drop it", "ri": "drop it"}
MAX_WALK = 8  # RFC 9989's DNS tree walk asks at most eight names


def recommended_dmarc(domain: str) -> str:
    """A first record in DMARCbis tags only: monitor, with aggregate reports to the domain."""
    return f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"


def _dmarc_texts(texts: list[str]) -> list[str]:
    return [t for t in texts if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t.strip(), re.IGNORECASE)]


async def find_dmarc(domain: str, lookup: Lookup) -> tuple[str, list[str]] | None:
    """The first name of the tree walk from ``_dmarc.DOMAIN`` up to the registered domain (not
    the top-level one) that has DMARC records, and those records."""
    labels = domain.lower().rstrip(".").split(".")
    for start in range(min(len(labels) - 1, MAX_WALK)):
        name = "_dmarc." + ".".join(labels[start:])
        records = _dmarc_texts(await lookup(name, "TXT"))
        if records:
            return name, records
    return None


def judge_dmarc(domain: str, name: str, records: list[str]) -> tuple[Finding, dict[str, str]]:
    """The record found at ``name`` for mail From ``domain``, and its tags."""
    publish = f'publish: _dmarc.{domain} TXT "{recommended_dmarc(domain)}"'
    if len(records) > 1:
        return Finding(
            Status.WRONG, "DMARC", f"{name} has {len(records)} DMARC records, so receivers use none; keep one"
        ), {}
    record = tags(records[0])
    own = name == f"_dmarc.{domain.lower().rstrip('.')}"
    # A parent's record governs its subdomains by sp= when it has one.
    policy = record.get("p", "") if own else record.get("sp", record.get("p", ""))
    said = (
        f'{name} "{records[0]}"' if own else f'no record at _dmarc.{domain}; the one at {name} applies: "{records[0]}"'
    )
    if policy.lower() not in POLICIES:
        why = "no p= policy" if not policy else f"p={policy} is not none, quarantine or reject"
        return Finding(Status.WRONG, "DMARC", f"{said} has {why}; {publish}"), record
    notes = []
    if policy.lower() == "none":
        notes.append(
            "p=none is the minimum Gmail, Yahoo and Outlook.com accept but enforces nothing: "
            "move to quarantine, then reject, once the reports show only your own mail"
        )
    if not record.get("rua"):
        notes.append(f"no rua=: nobody receives the aggregate reports (add rua=mailto:dmarc@{domain})")
    if record.get("t", "").lower() == "y":
        notes.append("t=y: a test, receivers apply one step less than the policy")
    notes += [f"{tag}= was removed in DMARCbis (RFC 9989): {fix}" for tag, fix in REMOVED_TAGS.items() if tag in record]
    status = Status.WARNING if notes else Status.OK
    return Finding(status, "DMARC", "; ".join([f"{said} (policy {policy.lower()})", *notes])), record


async def check_dmarc(domain: str, dkim_domain: str | None, envelope_domain: str, lookup: Lookup) -> list[Finding]:
    """The DMARC record for mail From ``domain``, and whether the DKIM ``d=`` and the envelope
    sender's domain align with it under the record's ``adkim``/``aspf``."""
    found = await find_dmarc(domain, lookup)
    if found is None:
        missing = Finding(
            Status.MISSING,
            "DMARC",
            f'_dmarc.{domain} has no record; publish: _dmarc.{domain} TXT "{recommended_dmarc(domain)}"',
        )
        return [missing, judge_alignment(domain, dkim_domain, envelope_domain, {})]
    finding, record = judge_dmarc(domain, *found)
    return [finding, judge_alignment(domain, dkim_domain, envelope_domain, record)]


def judge_alignment(from_domain: str, dkim_domain: str | None, envelope_domain: str, record: dict[str, str]) -> Finding:
    """DMARC passes when DKIM or SPF passes for a domain aligned with From; the providers want
    DKIM aligned, since SPF fails on every forward."""
    strict_dkim = record.get("adkim", "r").lower() == "s"
    strict_spf = record.get("aspf", "r").lower() == "s"
    spf = alignment(envelope_domain, from_domain, strict=strict_spf)
    spf_said = f"the envelope sender's domain {envelope_domain}" + (" (aspf=s)" if strict_spf else "")
    if dkim_domain is None:
        status = Status.WARNING if spf is Status.OK else Status.WRONG
        verdict = "aligned" if spf is Status.OK else "not surely aligned"
        return Finding(
            status, "DMARC", f"no DKIM signature to align: DMARC rests on {spf_said}, {verdict} with From {from_domain}"
        )
    dkim = alignment(dkim_domain, from_domain, strict=strict_dkim)
    mode = "strict, adkim=s" if strict_dkim else "relaxed"
    if dkim is Status.WRONG:
        rest = "DMARC then rests on SPF, which fails on every forward" if spf is Status.OK else "DMARC fails"
        return Finding(
            Status.WRONG,
            "DMARC",
            f"DKIM signs for {dkim_domain} but mail is From {from_domain}: not aligned ({mode}), {rest}; "
            f"set RESPONDER_DKIM_DOMAIN={from_domain} and publish its key",
        )
    if dkim is Status.WARNING:
        return Finding(
            Status.WARNING,
            "DMARC",
            f"DKIM d={dkim_domain} and From {from_domain} align only if they share an organisational domain "
            f"({mode}); sign for {from_domain} to be sure",
        )
    if spf is not Status.OK:
        return Finding(
            Status.WARNING,
            "DMARC",
            f"DKIM d={dkim_domain} is aligned with From {from_domain} ({mode}), {spf_said} is not: "
            "DMARC passes on DKIM alone",
        )
    return Finding(
        Status.OK,
        "DMARC",
        f"DKIM d={dkim_domain} and {spf_said} are aligned with From {from_domain} ({mode})",
    )


# MX and PTR ------------------------------------------------------------------------------


async def check_mx(domain: str, inbound_on: bool, lookup: Lookup) -> list[Finding]:
    """The bounce domain (VERP addresses) has an MX, so bounces, replies and complaints come back."""
    hosts = sorted((int(pref), host) for pref, _, host in (r.partition(" ") for r in await lookup(domain, "MX")))
    missing = Status.MISSING if inbound_on else Status.WARNING
    where = "the inbound server (RESPONDER_INBOUND)" if inbound_on else "anyone (RESPONDER_INBOUND is off)"
    if not hosts:
        return [
            Finding(
                missing,
                "MX",
                f"{domain} has no MX: bounces, replies and complaints to its addresses never reach {where}; "
                f"publish: {domain} MX 10 <the host running responder's inbound server>",
            )
        ]
    if [h for _, h in hosts] == ["."]:
        return [
            Finding(missing, "MX", f"{domain} has a null MX (RFC 7505): it takes no mail, so nothing reaches {where}")
        ]
    return [Finding(Status.OK, "MX", f"{domain} MX " + ", ".join(f"{pref} {host}" for pref, host in hosts))]


async def check_ptr(ip: str, lookup: Lookup) -> list[Finding]:
    """The sending IP has a PTR whose name resolves back to it (forward-confirmed reverse DNS)."""
    address = ipaddress.ip_address(ip)
    names = await lookup(address.reverse_pointer, "PTR")
    if not names:
        return [
            Finding(
                Status.MISSING,
                "PTR",
                f"{ip} has no PTR record: Gmail refuses mail from it; ask whoever runs the IP (the hosting "
                "provider) to set one to a name that resolves back to it, e.g. mail.<your domain>",
            )
        ]
    rdtype = "A" if address.version == 4 else "AAAA"
    seen = []
    for name in names:
        forward = await lookup(name, rdtype)
        if any(ipaddress.ip_address(a) == address for a in forward):
            return [Finding(Status.OK, "PTR", f"{ip} → {name} → {ip}")]
        seen.append(f"{name} → {', '.join(forward) or 'no ' + rdtype}")
    return [
        Finding(
            Status.WRONG,
            "PTR",
            f"{ip} → {'; '.join(seen)}: not forward-confirmed, which receivers treat as no PTR; "
            f"publish: {names[0]} {rdtype} {ip}",
        )
    ]
