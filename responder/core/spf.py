"""SPF (RFC 7208): is there exactly one record, does it end by refusing strangers, and does it
authorise the sending IP.

The evaluator is ``check_host()`` cut to what a sender's own record uses: ``all``, ``ip4``,
``ip6``, ``a``, ``mx``, ``include`` and ``redirect=``, with RFC 7208's bounds (10 DNS-querying
terms, 2 that find nothing). ``exists``, ``ptr`` and macros depend on the message or are
deprecated; a record that reaches one before deciding is reported as undecided rather than
guessed. DNS goes through the ``Lookup`` it is given.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .dnsauth import Finding, Lookup, Status, worst

MAX_LOOKUPS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2
RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)", re.IGNORECASE)
_MECHANISM = re.compile(
    r"([+\-~?]?)(all|include|exists|ptr|a|mx|ip4|ip6)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?",
    re.IGNORECASE,
)
_IP_MECHANISM = re.compile(r"([+\-~?]?)(ip4|ip6):(\S+)", re.IGNORECASE)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PermError(Exception):
    """The record cannot be evaluated (RFC 7208 permerror): receivers treat it as broken."""


class Undecided(Exception):
    """The record depends on a term this evaluator does not judge (exists, ptr, macros)."""


@dataclass(frozen=True)
class Term:
    qualifier: str  # + - ~ ? for a mechanism; "" for a modifier
    name: str
    argument: str = ""  # domain-spec, network or modifier value
    cidr4: int = 32
    cidr6: int = 128


def spf_records(texts: list[str]) -> list[str]:
    return [t for t in texts if re.fullmatch(r"v=spf1(\s.*)?", t.strip(), re.IGNORECASE | re.DOTALL)]


def parse(record: str) -> list[Term]:
    terms = []
    for word in record.split()[1:]:
        modifier = _MODIFIER.fullmatch(word)
        if modifier:
            terms.append(Term("", modifier[1].lower(), modifier[2]))
            continue
        ip = _IP_MECHANISM.fullmatch(word)
        if ip:
            try:
                network = ipaddress.ip_network(ip[3], strict=False)
            except ValueError:
                raise PermError(f"{word} is not a network") from None
            if network.version != int(ip[2][-1]):
                raise PermError(f"{word} is not an IPv{ip[2][-1]} network")
            terms.append(Term(ip[1] or "+", ip[2].lower(), str(network)))
            continue
        mechanism = _MECHANISM.fullmatch(word)
        if mechanism is None:
            raise PermError(f"{word!r} is not an SPF term")
        qualifier, name, argument, cidr4, cidr6 = mechanism.groups()
        name = name.lower()
        if (name == "all" and argument) or (name in ("include", "exists") and not argument):
            raise PermError(f"{word!r} is not an SPF term")
        if (cidr4 or cidr6) and name not in ("a", "mx"):
            raise PermError(f"{word!r}: only a and mx take a prefix length")
        term = Term(qualifier or "+", name, argument or "", int(cidr4 or 32), int(cidr6 or 128))
        if term.cidr4 > 32 or term.cidr6 > 128:
            raise PermError(f"{word!r}: prefix too long")
        terms.append(term)
    if sum(t.name == "redirect" for t in terms if not t.qualifier) > 1:
        raise PermError("redirect= given twice")
    return terms


@dataclass
class Evaluation:
    """One ``check_host(ip, domain)``, counting its DNS lookups against RFC 7208's limits."""

    ip: Address
    lookup: Lookup
    lookups: int = 0
    void_lookups: int = 0

    async def check_host(self, domain: str) -> str:
        """pass, fail, softfail, neutral or none; ``PermError``, ``Undecided`` or
        ``LookupFailed`` when it cannot say."""
        records = spf_records(await self.lookup(domain, "TXT"))
        if not records:
            return "none"
        if len(records) > 1:
            raise PermError(f"{domain} has {len(records)} SPF records")
        terms = parse(records[0])
        for term in terms:
            if term.qualifier and await self._matches(term, domain):
                return RESULTS[term.qualifier]
        redirect = next((t.argument for t in terms if t.name == "redirect" and not t.qualifier), None)
        if redirect:
            self._count(redirect)
            result = await self.check_host(redirect)
            if result == "none":
                raise PermError(f"redirect={redirect} has no SPF record")
            return result
        return "neutral"

    def _count(self, target: str) -> None:
        if "%" in target:
            raise Undecided(f"{target} holds a macro, which is not judged here")
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise PermError(f"more than {MAX_LOOKUPS} DNS lookups (RFC 7208 4.6.4)")

    async def _query(self, name: str, rdtype: str) -> list[str]:
        found = await self.lookup(name, rdtype)
        if not found:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise PermError(f"more than {MAX_VOID_LOOKUPS} lookups found nothing (RFC 7208 4.6.4)")
        return found

    async def _matches(self, term: Term, domain: str) -> bool:
        if term.name == "all":
            return True
        if term.name in ("ip4", "ip6"):
            return self.ip in ipaddress.ip_network(term.argument)
        target = term.argument or domain
        self._count(target)
        if term.name in ("exists", "ptr"):
            raise Undecided(f"it reaches {term.name}, which is not judged here")
        if term.name == "include":
            result = await self.check_host(target)
            if result == "none":
                raise PermError(f"include:{target} has no SPF record")
            return result == "pass"
        hosts = [target]
        if term.name == "mx":
            exchanges = [r.partition(" ")[2] for r in await self._query(target, "MX")]
            if len(exchanges) > MAX_LOOKUPS:
                raise PermError(f"{target} has more than {MAX_LOOKUPS} MX hosts (RFC 7208 4.6.4)")
            hosts = [h for h in exchanges if h != "."]
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for host in hosts:
            for address in await self._query(host, "A" if self.ip.version == 4 else "AAAA"):
                if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                    return True
        return False


def recommended_spf(ips: list[str]) -> str:
    allowed = " ".join(f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in ips) or "ip4:<sending IP>"
    return f"v=spf1 {allowed} -all"


def _ending(terms: list[Term]) -> tuple[Status, str]:
    """What happens to mail from an IP the record does not name."""
    final = next((t for t in terms if t.name == "all" and t.qualifier), None)
    if final is None:
        if any(t.name == "redirect" for t in terms if not t.qualifier):
            return Status.OK, ""
        return Status.WARNING, "no all at the end: mail from any other IP is neutral; end it with -all or ~all"
    if final.qualifier in "-~":
        return Status.OK, ""
    if final.qualifier == "+":
        return Status.WARNING, "ends in +all, which authorises every IP on the internet; end it with -all or ~all"
    return Status.WARNING, "ends in ?all, which refuses nothing; end it with -all or ~all"


async def check_spf(domain: str, ips: list[str], lookup: Lookup) -> list[Finding]:
    """``domain``'s SPF record: exactly one, ending in ``-all``/``~all``, and passing each of ``ips``."""
    records = spf_records(await lookup(domain, "TXT"))
    if not records:
        return [
            Finding(
                Status.MISSING,
                "SPF",
                f'{domain} has no SPF record; publish: {domain} TXT "{recommended_spf(ips)}"'
                + ("" if ips else " (or the include: your relay gives)"),
            )
        ]
    if len(records) > 1:
        return [
            Finding(
                Status.WRONG,
                "SPF",
                f"{domain} has {len(records)} SPF records, a permerror: receivers treat SPF as broken; "
                "merge them into one",
            )
        ]
    said = f'{domain} "{records[0]}"'
    try:
        terms = parse(records[0])
    except PermError as exc:
        return [Finding(Status.WRONG, "SPF", f"{said}: {exc} (a permerror: receivers treat SPF as broken)")]
    status, note = _ending(terms)
    statuses, notes = [status], [note] if note else []
    authorised = []
    for ip in ips:
        address = ipaddress.ip_address(ip)
        try:
            result = await Evaluation(address, lookup).check_host(domain)
        except PermError as exc:
            statuses.append(Status.WRONG)
            notes.append(f"permerror for {ip}: {exc}")
            continue
        except Undecided as exc:
            statuses.append(Status.WARNING)
            notes.append(f"cannot tell whether it authorises {ip} ({exc})")
            continue
        if result == "pass":
            authorised.append(ip)
        else:
            statuses.append(Status.WRONG)
            notes.append(f"does not authorise {ip} ({result}): add ip{address.version}:{ip} before the all")
    if authorised:
        notes.insert(0, "authorises " + ", ".join(authorised))
    if not ips:
        notes.append("(--ip ADDRESS checks that it authorises the sending IP)")
    return [Finding(worst(statuses), "SPF", " ".join([said, "; ".join(notes)]).strip())]
