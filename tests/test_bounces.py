"""The bounce table (``core.bounces.classify``): replies as real servers word them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from responder.core.bounces import KINDS, classify
from responder.core.inbound import classify as classify_mail

TABLE = [
    # bad address: suppressed at once
    (550, "5.1.1 <kim@example.org>: Recipient address rejected: User unknown in virtual mailbox table", "address"),
    (550, "5.1.1 The email account that you tried to reach does not exist.", "address"),  # Gmail
    (550, "5.2.1 The email account that you tried to reach is disabled.", "address"),  # Gmail
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "address"),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)", "address"),  # Outlook.com
    (550, "5.5.0 Requested action not taken: mailbox unavailable", "address"),  # Outlook.com
    (554, "delivery error: dd This user doesn't have a yahoo.com account (kim@yahoo.com)", "address"),
    (550, "No such user here", "address"),
    (550, "Requested action not taken: mailbox unavailable", "address"),
    (553, "sorry, that domain isn't in my list of allowed rcpthosts", "address"),
    (550, "5.4.4 Host or domain name not found", "address"),
    # full mailbox or temporary: retried
    (552, "5.2.2 Mailbox full", "full"),
    (452, "4.2.2 The email account that you tried to reach is over quota.", "full"),  # Gmail
    (552, "Requested mail action aborted: exceeded storage allocation", "full"),
    (450, "4.2.1 mailbox busy", "temporary"),
    (451, "4.7.1 Greylisted, please try again in 300 seconds", "temporary"),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", "temporary"),  # Yahoo
    (451, "4.3.0 local error in processing", "temporary"),
    # the sender's reputation, authentication or a filter: never the address's fault
    (554, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "policy"),
    (550, "5.7.1 blocked using zen.spamhaus.org", "policy"),
    (550, "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users", "policy"),
    (550, "5.7.515 Access denied, sending domain does not meet the required authentication level", "policy"),
    (550, "5.7.1 Our system has detected that this message is likely unsolicited mail", "policy"),  # Gmail
    (554, "Message not allowed - [PH01] Email not accepted for policy reasons", "policy"),  # Yahoo
    (550, "Service unavailable, Client host [192.0.2.1] blocked using Spamhaus", "policy"),
    (421, "4.7.28 Gmail has detected an unusual rate of unsolicited mail", "policy"),
    (550, "5.7.606 Access denied, banned sending IP [192.0.2.1]", "policy"),
    (554, "Your IP has a poor reputation", "policy"),
    # the message itself
    (552, "5.3.4 Message size exceeds fixed maximum message size", "message"),
    (554, "5.6.0 Message content rejected", "message"),
    # nothing to go on
    (554, "Transaction failed", "unknown"),
    (500, "5.5.2 Syntax error", "unknown"),
]


@pytest.mark.parametrize(("code", "text", "kind"), TABLE)
def test_the_bounce_table(code: int, text: str, kind: str) -> None:
    assert classify(code, f"{code} {text}").kind == kind


def test_a_dsn_is_classified_from_its_status_without_a_reply_code() -> None:
    assert classify(None, "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown").kind == "address"
    assert classify(None, "Status: 4.2.2 (over quota)").kind == "full"
    bounce = classify(None, "Status: 5.7.1\nDiagnostic-Code: smtp; 554 blocked using b.barracudacentral.org")
    assert (bounce.kind, bounce.status, bounce.suppresses, bounce.retried) == ("policy", "5.7.1", False, True)


@given(st.integers(min_value=400, max_value=599), st.text(max_size=200))
def test_every_reply_has_one_kind_and_only_an_address_kind_suppresses(code: int, text: str) -> None:
    bounce = classify(code, text)
    assert bounce.kind in KINDS
    assert bounce.suppresses == (bounce.kind == "address")
    if str(code).startswith("4") and bounce.status is None:
        assert not bounce.suppresses  # a temporary reply never suppresses


def test_a_report_on_mail_to_a_utf8_address_is_read_too() -> None:
    """RFC 6533: the report on an SMTPUTF8 mail is message/global-delivery-status, in UTF-8."""
    raw = (
        "From: MAILER-DAEMON@t.example\r\nTo: bounces+x@acme.example.com\r\nSubject: failed\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=global-delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--B\r\n"
        "Content-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; t.example\r\n\r\n"
        "Final-Recipient: rfc822; üser@t.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 unknown user\r\n\r\n--B--\r\n"
    ).encode()
    report = classify_mail(raw, sender="")
    assert report.kind == "dsn"
    [recipient] = report.recipients
    assert (recipient.address, recipient.action, recipient.status) == ("üser@t.example", "failed", "5.1.1")
    assert recipient.hard
