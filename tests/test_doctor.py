"""``responder doctor``: the real command against a real DNS server on loopback that answers
from a zone the test writes (UDP, and TCP when an answer is too big for UDP)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from responder.cli import main
from responder.core.dnsauth import Status, alignment
from responder.core.spf import PermError, parse
from responder.delivery.dkim import dns_record, generate_key, private_pem

Zone = dict[str, dict[str, list[Any]]]  # name → type → values; a TXT value is a str or a tuple of strings
IP = "192.0.2.10"
SERVFAIL = "SERVFAIL"  # a type key: the name answers SERVFAIL to every question


class DnsServer:
    """Answers from ``zone``: NXDOMAIN for a name not in it, an empty answer for a type not
    there; over UDP, an answer too big for the asker's buffer is truncated (TC), as servers do."""

    def __init__(self) -> None:
        self.zone: Zone = {}
        self.port = 0
        self.tcp_queries = 0
        self.loop = asyncio.new_event_loop()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, wire: bytes, max_size: int = 65535) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        entry = self.zone.get(name)
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif SERVFAIL in entry:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            rdtype = dns.rdatatype.to_text(question.rdtype)
            values = entry.get(rdtype, [])
            if values:
                texts = [self._text(rdtype, value) for value in values]
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, question.rdtype, texts)
                )
        if max_size < 65535:
            max_size = max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC
            return truncated.to_wire()

    @staticmethod
    def _text(rdtype: str, value: Any) -> str:
        if rdtype != "TXT":
            return str(value)
        strings = (value,) if isinstance(value, str) else value
        return " ".join(f'"{s}"' for s in strings)

    async def start(self) -> None:
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(server.answer(data, max_size=512), addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    server.tcp_queries += 1
                    reply = server.answer(await reader.readexactly(size))
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
            except asyncio.IncompleteReadError:
                pass
            finally:
                writer.close()

        for _ in range(10):  # TCP on the port UDP got: taken by chance now and then, so try again
            transport, _ = await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp, self.port = transport, port  # type: ignore[assignment]
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
            await self._tcp.wait_closed()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    thread = threading.Thread(target=server.loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), server.loop).result(5)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), server.loop).result(5)
        server.loop.call_soon_threadsafe(server.loop.stop)
        thread.join(5)
        server.loop.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """selector → (PEM file, the TXT record its key gives)."""
    folder = tmp_path_factory.mktemp("dkim")
    found = {}
    for selector, algorithm in (("ed", "ed25519"), ("rsa", "rsa"), ("other", "ed25519")):
        key = generate_key(algorithm)
        path = folder / f"{selector}.pem"
        path.write_bytes(private_pem(key))
        found[selector] = (path, dns_record(key))
    return found


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, keys: dict[str, tuple[Path, str]]) -> pytest.MonkeyPatch:
    """Mail From news@example.com, signed with the ``ed`` key, bounces to bounce.example.com,
    the inbound server on."""
    for name in [n for n in os.environ if n.startswith("RESPONDER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RESPONDER_FROM", "Example News <news@example.com>")
    monkeypatch.setenv("RESPONDER_BOUNCE_DOMAIN", "bounce.example.com")
    monkeypatch.setenv("RESPONDER_DKIM_SELECTOR", "ed")
    monkeypatch.setenv("RESPONDER_DKIM_KEY_FILE", str(keys["ed"][0]))
    monkeypatch.setenv("RESPONDER_INBOUND", "127.0.0.1:2525")
    return monkeypatch


def good_zone(keys: dict[str, tuple[Path, str]]) -> Zone:
    return {
        "example.com": {
            "TXT": ["google-site-verification=abc", "v=spf1 include:_spf.relay.example a:mail.example.com -all"],
            "MX": ["10 mx.example.com."],
        },
        "_spf.relay.example": {"TXT": ["v=spf1 ip4:198.51.100.0/24 ~all"]},
        "bounce.example.com": {"TXT": ["v=spf1 mx -all"], "MX": ["10 mail.example.com."]},
        "mail.example.com": {"A": [IP]},
        "ed._domainkey.example.com": {"TXT": [keys["ed"][1]]},
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.com"]},
        "10.2.0.192.in-addr.arpa": {"PTR": ["mail.example.com."]},
    }


def doctor(server: DnsServer, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["doctor", "--nameserver", f"127.0.0.1:{server.port}", "--timeout", "2", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out.splitlines()


def the(lines: list[str], check: str, text: str = "") -> str:
    """The one line of ``check`` that holds ``text``."""
    found = [line for line in lines if line.split()[1] == check and text in line]
    assert len(found) == 1, lines
    return found[0]


def test_a_domain_that_publishes_everything_is_ok(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    assert code == 0
    assert [line.split()[:2] for line in lines] == [
        ["ok", "SPF"],
        ["ok", "SPF"],
        ["ok", "DKIM"],
        ["ok", "DMARC"],
        ["ok", "DMARC"],
        ["ok", "MX"],
        ["ok", "PTR"],
    ]
    assert the(lines, "SPF", 'example.com "v=spf1 include').endswith(f"authorises {IP}")  # through a:
    assert the(lines, "SPF", "bounce.example.com").endswith(f"authorises {IP}")  # through mx
    assert "ed._domainkey.example.com publishes the key of" in the(lines, "DKIM")
    assert "(policy reject)" in the(lines, "DMARC", "_dmarc")
    assert "aligned with From example.com (relaxed)" in the(lines, "DMARC", "DKIM d=example.com")
    assert the(lines, "MX") == "ok       MX    bounce.example.com MX 10 mail.example.com"
    assert the(lines, "PTR") == f"ok       PTR   {IP} → mail.example.com → {IP}"


def test_the_domain_argument_is_checked_instead_of_the_senders(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("RESPONDER_FROM", "news@elsewhere.example")
    dns_server.zone = good_zone(keys)
    code, lines = doctor(dns_server, capsys, "example.com")
    assert code == 0 and len(lines) == 6
    assert {line.split()[0] for line in lines} == {"ok"}
    assert "elsewhere" not in "\n".join(lines)


def test_no_spf_record_says_what_to_publish(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["example.com"]["TXT"] = ["google-site-verification=abc"]
    code, lines = doctor(dns_server, capsys, "--ip", IP, "--ip", "2001:db8::25")
    assert code == 1
    assert the(lines, "SPF", "example.com has") == (
        'missing  SPF   example.com has no SPF record; publish: example.com TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::25 -all"'
    )


def test_two_spf_records_are_a_permerror(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["example.com"]["TXT"].append("v=spf1 ip4:203.0.113.5 -all")
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    assert code == 1
    assert the(lines, "SPF", "example.com has").startswith("wrong    SPF   example.com has 2 SPF records, a permerror")


@pytest.mark.parametrize(
    ("record", "status", "said"),
    [
        ("v=spf1 ip4:203.0.113.0/24 -all", "wrong", f"does not authorise {IP} (fail): add ip4:{IP} before the all"),
        ("v=spf1 include:_spf.relay.example ~all", "wrong", f"does not authorise {IP} (softfail)"),
        ("v=spf1 ip4:192.0.2.0/24 ?all", "warning", f"authorises {IP}; ends in ?all, which refuses nothing"),
        ("v=spf1 ip4:192.0.2.0/24", "warning", "no all at the end"),
        (
            "v=spf1 " + " ".join(f"a:h{n}.example.com" for n in range(11)) + " -all",
            "wrong",
            f"permerror for {IP}: more than 2 lookups found nothing",
        ),
        ("v=spf1 include:example.com -all", "wrong", f"permerror for {IP}: more than 10 DNS lookups"),
        ("v=spf1 ip4:192.0.2.300 -all", "wrong", "ip4:192.0.2.300 is not a network (a permerror"),
        ("v=spf1 exists:%{i}.spf.example.com -all", "warning", f"cannot tell whether it authorises {IP}"),
    ],
)
def test_spf_that_does_not_authorise_the_ip_or_refuse_others(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
    record: str,
    status: str,
    said: str,
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["example.com"]["TXT"] = [record]
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    line = the(lines, "SPF", ' example.com "')
    assert line.startswith(f"{status} ") and said in line
    assert code == (1 if status == "wrong" else 0)
    assert the(lines, "SPF", "bounce.example.com").startswith("ok")


def test_a_txt_answer_too_big_for_udp_comes_over_tcp(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["example.com"]["TXT"] += [f"site-verification-{n}={'x' * 200}" for n in range(3)]
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    assert code == 0 and the(lines, "SPF", ' example.com "').startswith("ok")
    assert dns_server.tcp_queries >= 1


def test_a_missing_dkim_record_gives_the_record_to_publish(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    del dns_server.zone["ed._domainkey.example.com"]
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    assert the(lines, "DKIM") == (
        "missing  DKIM  ed._domainkey.example.com has no key record, so no signature verifies; "
        f'publish: ed._domainkey.example.com TXT "{keys["ed"][1]}"'
    )


def test_a_dkim_record_of_another_key_is_wrong(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["ed._domainkey.example.com"]["TXT"] = [keys["other"][1]]
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    line = the(lines, "DKIM")
    assert line.startswith(f"wrong    DKIM  ed._domainkey.example.com publishes another key than {keys['ed'][0]}")
    assert line.endswith(keys["ed"][1] + '"')


@pytest.mark.parametrize("spaced", [False, True], ids=["255-byte strings", "strings with spaces in p="])
def test_a_long_dkim_record_in_several_strings_passes(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
    spaced: bool,
) -> None:
    env.setenv("RESPONDER_DKIM_SELECTOR", "rsa, ed")
    env.setenv("RESPONDER_DKIM_KEY_FILE", f"{keys['rsa'][0]},{keys['ed'][0]}")
    record = keys["rsa"][1]
    size = 200 if spaced else 255
    strings = tuple(record[i : i + size] + (" " if spaced else "") for i in range(0, len(record), size))
    assert len(strings) >= 2
    dns_server.zone = good_zone(keys)
    dns_server.zone["rsa._domainkey.example.com"] = {"TXT": [strings]}
    code, lines = doctor(dns_server, capsys)
    assert code == 0
    assert the(lines, "DKIM", "rsa._domainkey").startswith("ok") and "(k=rsa)" in the(lines, "DKIM", "rsa._domainkey")
    assert the(lines, "DKIM", "ed._domainkey").startswith("ok")


def test_without_a_key_signing_is_off_and_a_selector_is_looked_for(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.delenv("RESPONDER_DKIM_SELECTOR")
    env.delenv("RESPONDER_DKIM_KEY_FILE")
    dns_server.zone = good_zone(keys)
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    assert the(lines, "DKIM").startswith("missing  DKIM  signing is off")
    code, lines = doctor(dns_server, capsys, "--selector", "ed")
    assert code == 0
    assert the(lines, "DKIM").startswith("ok       DKIM  ed._domainkey.example.com publishes a key (k=ed25519")
    code, lines = doctor(dns_server, capsys, "--selector", "relay")
    assert the(lines, "DKIM").startswith("missing  DKIM  relay._domainkey.example.com has no key record")


def test_no_dmarc_record_recommends_one_in_dmarcbis_tags(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    del dns_server.zone["_dmarc.example.com"]
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    line = the(lines, "DMARC", "_dmarc")
    assert line == (
        "missing  DMARC _dmarc.example.com has no record; "
        'publish: _dmarc.example.com TXT "v=DMARC1; p=none; rua=mailto:dmarc@example.com"'
    )
    recommended = line.split('"')[1]
    assert {t.split("=")[0].strip() for t in recommended.split(";")} <= {
        "v", "p", "sp", "np", "psd", "t", "adkim", "aspf", "rua", "ruf", "fo"
    }  # fmt: skip


def test_a_subdomain_is_covered_by_its_parents_dmarc_record(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("RESPONDER_FROM", "news@news.example.com")
    env.setenv("RESPONDER_DKIM_DOMAIN", "example.com")
    dns_server.zone = good_zone(keys)
    dns_server.zone["news.example.com"] = {"TXT": ["v=spf1 -all"]}
    dns_server.zone["_dmarc.example.com"]["TXT"] = ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"]
    code, lines = doctor(dns_server, capsys)
    assert code == 0
    line = the(lines, "DMARC", "_dmarc")
    assert "no record at _dmarc.news.example.com; the one at _dmarc.example.com applies" in line
    assert line.startswith("ok") and "(policy quarantine)" in line


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ("v=DMARC1; p=quarantine; pct=50; rua=mailto:d@example.com", "pct= was removed in DMARCbis (RFC 9989)"),
        ("v=DMARC1; p=reject; ri=3600; rf=afrf; rua=mailto:d@example.com", "ri= was removed in DMARCbis"),
        ("v=DMARC1; p=none; rua=mailto:d@example.com", "p=none is the minimum"),
        ("v=DMARC1; p=reject", "no rua="),
    ],
)
def test_dmarc_records_with_removed_tags_or_no_enforcement_warn(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
    record: str,
    said: str,
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["_dmarc.example.com"]["TXT"] = [record]
    code, lines = doctor(dns_server, capsys)
    assert code == 0
    line = the(lines, "DMARC", "_dmarc")
    assert line.startswith("warning  DMARC") and said in line


def test_a_dmarc_record_without_a_policy_is_wrong(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["_dmarc.example.com"]["TXT"] = ["v=DMARC1; rua=mailto:d@example.com"]
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    assert "has no p= policy; publish:" in the(lines, "DMARC", "_dmarc")


@pytest.mark.parametrize(
    ("dkim_domain", "dmarc", "status"),
    [
        ("mailer.other.example", "v=DMARC1; p=reject; rua=mailto:d@example.com", "wrong"),
        ("mail.example.com", "v=DMARC1; p=reject; adkim=s; rua=mailto:d@example.com", "wrong"),
        ("mail.example.com", "v=DMARC1; p=reject; rua=mailto:d@example.com", "ok"),
    ],
)
def test_a_dkim_domain_not_aligned_with_from_fails_dmarc(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
    dkim_domain: str,
    dmarc: str,
    status: str,
) -> None:
    env.setenv("RESPONDER_DKIM_DOMAIN", dkim_domain)
    dns_server.zone = good_zone(keys)
    dns_server.zone[f"ed._domainkey.{dkim_domain}"] = {"TXT": [keys["ed"][1]]}
    dns_server.zone["_dmarc.example.com"]["TXT"] = [dmarc]
    code, lines = doctor(dns_server, capsys)
    assert the(lines, "DKIM").startswith("ok")  # the key is there; it signs for the wrong name
    line = the(lines, "DMARC", dkim_domain)
    assert line.startswith(status) and code == (1 if status == "wrong" else 0)
    if status == "wrong":
        assert f"DKIM signs for {dkim_domain} but mail is From example.com: not aligned" in line


def test_no_mx_for_the_bounce_domain_is_missing_with_the_inbound_server_on(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    del dns_server.zone["bounce.example.com"]["MX"]
    dns_server.zone["bounce.example.com"]["TXT"] = ["v=spf1 a:mail.example.com -all"]
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    assert the(lines, "MX").startswith(
        "missing  MX    bounce.example.com has no MX: bounces, replies and complaints to its addresses never "
        "reach the inbound server (RESPONDER_INBOUND)"
    )
    env.delenv("RESPONDER_INBOUND")
    code, lines = doctor(dns_server, capsys)
    assert code == 0 and the(lines, "MX").startswith("warning  MX")


def test_an_ip_without_ptr_is_missing(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    del dns_server.zone["10.2.0.192.in-addr.arpa"]
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    assert code == 1
    assert the(lines, "PTR").startswith(f"missing  PTR   {IP} has no PTR record: Gmail refuses mail from it")


def test_a_ptr_that_does_not_resolve_back_is_wrong(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["10.2.0.192.in-addr.arpa"]["PTR"] = ["host-10.isp.example."]
    dns_server.zone["host-10.isp.example"] = {"A": ["203.0.113.9"]}
    code, lines = doctor(dns_server, capsys, "--ip", IP)
    assert code == 1
    assert the(lines, "PTR") == (
        f"wrong    PTR   {IP} → host-10.isp.example → 203.0.113.9: not forward-confirmed, which receivers treat "
        f"as no PTR; publish: host-10.isp.example A {IP}"
    )


def test_a_name_server_that_does_not_answer_is_a_timeout_not_a_crash(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        code = main(["doctor", "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.5", "--ip", IP])
        took_s = time.monotonic() - started
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert code == 1 and took_s < 3
    assert "Traceback" not in captured.err
    assert [line.split()[1] for line in lines] == ["SPF", "SPF", "DKIM", "DMARC", "MX", "PTR"]
    assert all(re.match(r"error +\S+ +could not check: .* no answer within 0.5 s \(timeout\)$", line) for line in lines)


def test_servfail_is_reported_as_such(
    env: pytest.MonkeyPatch,
    dns_server: DnsServer,
    keys: dict[str, tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dns_server.zone = good_zone(keys)
    dns_server.zone["_dmarc.example.com"] = {SERVFAIL: []}
    code, lines = doctor(dns_server, capsys)
    assert code == 1
    assert the(lines, "DMARC", "_dmarc") == (
        f"error    DMARC could not check: _dmarc.example.com TXT: SERVFAIL from 127.0.0.1:{dns_server.port}"
    )
    assert the(lines, "SPF", "bounce").startswith("ok")


@pytest.mark.parametrize(
    "args",
    [
        ["--nameserver", "dns.example.com"],
        ["--nameserver", "127.0.0.1:0"],
        ["--ip", "192.0.2"],
        ["--timeout", "0"],
        ["localhost"],
    ],
)
def test_bad_options_are_a_usage_error(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["doctor", *args]) == 2
    assert capsys.readouterr().err.startswith("responder: error: ")


def test_an_unreadable_key_file_is_a_configuration_error(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("RESPONDER_DKIM_KEY_FILE", str(tmp_path / "absent.pem"))
    assert main(["doctor", "--nameserver", "127.0.0.1"]) == 2
    assert "cannot read DKIM key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("domain", "from_domain", "strict", "status"),
    [
        ("example.com", "EXAMPLE.com.", True, Status.OK),
        ("mail.example.com", "example.com", False, Status.OK),
        ("example.com", "news.example.com", False, Status.OK),
        ("example.com", "news.example.com", True, Status.WRONG),
        ("a.example.com", "b.example.com", False, Status.WARNING),  # siblings: only if example.com is the org
        ("example.net", "example.com", False, Status.WRONG),
        ("notexample.com", "example.com", False, Status.WRONG),
    ],
)
def test_alignment(domain: str, from_domain: str, strict: bool, status: Status) -> None:
    assert alignment(domain, from_domain, strict=strict) is status


@pytest.mark.parametrize(
    "record",
    ["v=spf1 all:x", "v=spf1 include", "v=spf1 ip4:2001:db8::/32", "v=spf1 ip6:1.2.3.4", "v=spf1 a/33", "v=spf1 foo"],
)
def test_spf_terms_that_do_not_parse(record: str) -> None:
    with pytest.raises(PermError):
        parse(record)
