"""Why a mail was refused, from the SMTP reply or a delivery status notification: pure.

A refusal is the address's fault only when it says the mailbox does not exist or is disabled.
A blocklist, a reputation or authentication problem, or a content filter says something about
the sender, and one morning on a blocklist must not suppress a whole list: such a refusal is
``policy`` and the message waits and is tried again. A full mailbox or a temporary trouble is
``soft``: retried, and the address is suppressed only after several such messages.

The order of the evidence: phrasings that name a blocklist or reputation first (providers put
them under 5.7.1 and under plain 550 alike), then the RFC 3463 enhanced status code
(``class.subject.detail``), then phrasings of the common servers (Postfix, Exim, Exchange,
Gmail, Yahoo, Outlook.com), then the basic reply code of RFC 5321.

    kind        examples                                           what happens
    address     5.1.1, 5.1.2, 5.1.3, 5.1.10, 5.2.1, 5.4.4,         message bounced, address
                "user unknown", "no such user", "does not exist"   suppressed at once
    full        5.2.2, 4.2.2, 552, "mailbox full", "over quota"    retried; suppressed after
                                                                   N such messages in M days
    policy      5.7.x (5.7.1, 5.7.26, 5.7.515), "blocked using",   retried later, never
                "spamhaus", "reputation", "DMARC", "blocklist"     suppresses; the admin is told
    message     5.3.4 (too big), 5.6.x (content)                   this message failed
    temporary   any other 4xx                                      retried
    unknown     any other 5xx                                      this message failed; counted
                                                                   with the soft ones
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("address", "full", "policy", "message", "temporary", "unknown")
# Kinds that count towards suppressing an address after several messages (``soft_limit``).
SOFT = ("full", "unknown")

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_POLICY_WORDS = re.compile(
    r"blocked using|block ?list|black ?list|spamhaus|spamcop|barracuda|sorbs|\bdnsbl\b|\brbl\b|"
    r"reputation|\bdmarc\b|\bspf\b|\bdkim\b|not authenticated|authentication|unsolicited|"
    r"\bspam\b|as junk|banned sending|sender denied|policy|listed at|listed in|poor sender",
    re.IGNORECASE,
)
_FULL_WORDS = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|exceeded (the )?storage|insufficient storage|"
    r"mailbox size limit|out of storage",
    re.IGNORECASE,
)
_ADDRESS_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|doesn't exist|"
    r"recipient (address )?rejected: (user unknown|undeliverable)|invalid (recipient|mailbox|address)|"
    r"unknown recipient|mailbox (not found|unavailable|disabled)|account (is )?(disabled|inactive)|"
    r"not our customer|address rejected|no mailbox here|unrouteable address|recipient not found|"
    r"(doesn't|does not) have an? [\w.-]+ account",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Bounce:
    kind: str
    # The enhanced status code, when the reply had one ("5.1.1").
    status: str | None = None

    @property
    def suppresses(self) -> bool:
        """The address itself is refused: suppress it now."""
        return self.kind == "address"

    @property
    def retried(self) -> bool:
        """The message is tried again later."""
        return self.kind in ("full", "policy", "temporary")


def enhanced_status(text: str) -> str | None:
    found = _ENHANCED.search(text)
    return ".".join(found.groups()) if found else None


def classify(code: int | None, text: str) -> Bounce:
    """The kind of a refusal: ``code`` the SMTP reply code (None for a DSN, which has only the
    ``Status`` and the diagnostic text), ``text`` the reply or diagnostic text."""
    status = enhanced_status(text)
    first = status[0] if status else (str(code)[0] if code else "5")
    if _POLICY_WORDS.search(text):
        return Bounce("policy", status)
    if status is not None:
        _, subject, detail = (int(part) for part in status.split("."))
        if subject == 2 and detail == 2:
            return Bounce("full", status)
        if first == "4":
            return Bounce("temporary", status)
        if subject == 7:
            return Bounce("policy", status)
        if subject == 1 or (subject, detail) in ((2, 1), (4, 4), (4, 1)):
            return Bounce("address", status)
        if subject == 6 or (subject, detail) == (3, 4):
            return Bounce("message", status)
    if _FULL_WORDS.search(text):
        return Bounce("full", status)
    if first == "4":
        return Bounce("temporary", status)
    if _ADDRESS_WORDS.search(text):
        return Bounce("address", status)
    if status is None and code in (550, 551, 553):  # RFC 5321: mailbox unavailable, not local, bad name
        return Bounce("address", status)
    if status is None and code == 552:  # exceeded storage allocation
        return Bounce("full", status)
    return Bounce("unknown", status)
