"""``responder doctor [DOMAIN]``: looks up what the sender's domain publishes for deliverability
(SPF, DKIM, DMARC, the bounce domain's MX, the sending IP's PTR) and prints one line per check,
with the record to publish where one is missing or wrong.

This module is the DNS side only: ``core.spf`` and ``core.dnsauth`` judge, reading records
through the ``DnsLookup`` here (dnspython's resolver, the system's or ``--nameserver``'s). A
timeout or SERVFAIL is an ``error`` line, never a traceback. Exit code 0 when every line is
``ok`` or ``warning``, 1 otherwise; 2 for a bad option or setting (``ConfigError``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from .core.dnsauth import (
    PROBLEMS,
    Finding,
    Lookup,
    LookupFailed,
    check_dkim_key,
    check_dkim_selector,
    check_dmarc,
    check_mx,
    check_ptr,
    dkim_off,
    settle,
)
from .core.spf import check_spf
from .delivery.dkim import configured_keys, dns_record, load_key
from .errors import ConfigError
from .settings import Settings


class DnsLookup:
    """``core.dnsauth.Lookup`` over a dnspython resolver; answers are cached for one run."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def __call__(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(
                dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            raise LookupFailed(f"{name} {rdtype}: no answer within {self.resolver.lifetime:g} s (timeout)") from None
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"{name} {rdtype}: {_server_errors(exc)}") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name} {rdtype}: {exc}") from None
        if answer.rrset is None:
            return []
        return [_text(rdata) for rdata in answer.rrset]


def _host(name: dns.name.Name) -> str:
    text = name.to_text()
    return text if text == "." else text.rstrip(".")


def _text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, TXT):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if isinstance(rdata, MX):
        return f"{rdata.preference} {_host(rdata.exchange)}"
    if isinstance(rdata, PTR):
        return _host(rdata.target)
    if isinstance(rdata, A | AAAA):
        return str(rdata.address)
    return rdata.to_text()


def _server_errors(exc: dns.resolver.NoNameservers) -> str:
    """``SERVFAIL from 192.0.2.53:53`` rather than dnspython's whole sentence."""
    said = []
    for server, _tcp, port, error, _response in exc.kwargs.get("errors", []):
        address = server.removeprefix("Do53:").partition("@")[0]  # str() of a Do53Nameserver
        said.append(f"{error} from {f'[{address}]' if ':' in address else address}:{port}")
    return "; ".join(dict.fromkeys(said)) or "no name server answered"


def parse_nameserver(text: str) -> tuple[str, int]:
    """``HOST[:PORT]``: ``192.0.2.53``, ``192.0.2.53:5353``, ``2001:db8::53``, ``[2001:db8::53]:5353``."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--nameserver {text!r}: give the name server's IP address, e.g. 9.9.9.9 or ::1") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--nameserver {text!r}: the port is not a number from 1 to 65535")
    return str(address), int(port)


def make_resolver(nameservers: Sequence[str], timeout_s: float) -> dns.asyncresolver.Resolver:
    if not 0 < timeout_s <= 60:
        raise ConfigError("--timeout must be more than 0 and at most 60 seconds")
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(text)) for text in nameservers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ConfigError("no name server configured on this system; give one with --nameserver") from None
    resolver.lifetime = timeout_s
    resolver.timeout = min(timeout_s, 2.0)  # per try: a slow server is asked again within the lifetime
    resolver.cache = dns.resolver.Cache()
    return resolver


def _domain(text: str) -> str:
    domain = text.strip().lower().rstrip(".")
    try:
        name = dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{text!r} is not a domain name: {exc}") from None
    if len(name.labels) < 3:  # the root label counts: a top-level domain alone sends no mail
        raise ConfigError(f"{text!r} is not a domain name a sender uses")
    return domain


def _addresses(ips: Sequence[str]) -> list[str]:
    try:
        return [str(ipaddress.ip_address(ip.strip())) for ip in ips]
    except ValueError as exc:
        raise ConfigError(f"--ip: {exc}") from None


@dataclass(frozen=True)
class Plan:
    """What to check for mail From ``domain``, read from the settings before any lookup."""

    domain: str
    envelope_domain: str  # the VERP addresses': SPF is checked against it, the MX brings mail back
    inbound_on: bool
    keys: list[tuple[str, str, str]]  # (record name, the record its key file gives, the file)
    selectors: list[str]  # record names of selectors to find without a key file
    dkim_domain: str | None  # None: nothing signs
    ips: list[str]


def plan_checks(settings: Settings, ips: Sequence[str], selectors: Sequence[str]) -> Plan:
    """Key files are read here, so a bad one stops the run as a configuration error."""
    keys = configured_keys(settings)
    dkim_domain = keys[0].domain if keys else settings.dkim_domain or settings.sender_domain
    own = {k.selector for k in keys}
    return Plan(
        domain=settings.sender_domain,
        envelope_domain=settings.verp_domain,
        inbound_on=settings.inbound is not None,
        keys=[(k.record_name, dns_record(load_key(k.path)), str(k.path)) for k in keys],
        selectors=[f"{s}._domainkey.{dkim_domain}" for s in dict.fromkeys(selectors) if s not in own],
        dkim_domain=dkim_domain if keys or selectors else None,
        ips=_addresses(ips),
    )


async def diagnose(plan: Plan, lookup: Lookup) -> list[Finding]:
    """Every check at once (so a dead name server costs one timeout), printed in a fixed order."""
    work = [settle("SPF", check_spf(plan.domain, plan.ips, lookup))]
    if plan.envelope_domain != plan.domain:
        work.append(settle("SPF", check_spf(plan.envelope_domain, plan.ips, lookup)))
    work += [settle("DKIM", check_dkim_key(name, expected, source, lookup)) for name, expected, source in plan.keys]
    work += [settle("DKIM", check_dkim_selector(name, lookup)) for name in plan.selectors]
    if plan.dkim_domain is None:
        work.append(_known(dkim_off()))
    work.append(settle("DMARC", check_dmarc(plan.domain, plan.dkim_domain, plan.envelope_domain, lookup)))
    work.append(settle("MX", check_mx(plan.envelope_domain, plan.inbound_on, lookup)))
    work += [settle("PTR", check_ptr(ip, lookup)) for ip in plan.ips]
    found = await asyncio.gather(*work)
    return [finding for group in found for finding in group]


async def _known(findings: list[Finding]) -> list[Finding]:
    return findings


def doctor_command(
    settings: Settings,
    *,
    domain: str | None,
    nameservers: Sequence[str],
    ips: Sequence[str],
    selectors: Sequence[str],
    timeout_s: float,
) -> int:
    if domain:  # as if mail were From this domain: the DKIM and bounce domains follow unless set
        local = settings.from_email.rpartition("@")[0]
        settings = settings.replace(from_email=f"{local}@{_domain(domain)}")
    checked = plan_checks(settings, ips, selectors)
    lookup = DnsLookup(make_resolver(nameservers, timeout_s))
    findings = asyncio.run(diagnose(checked, lookup))
    for finding in findings:
        print(finding.line())
    return 1 if any(f.status in PROBLEMS for f in findings) else 0
