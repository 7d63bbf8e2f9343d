"""What the funnel should do to scripted subscribers, worked out from the documented rules
(docs/rules.md) and nothing of the engine's code: the reference the 180-day simulation
(tests/test_simulation_180d.py) compares the engine with, subscriber by subscriber.

The world: five layers, each with a main sequence of three steps (delays 0, 4 d, 4 d counted
from the previous step); one rule everywhere — promote on a purchase or a reply or after human
clicks in 2 different mails since entering the layer, demote after 45 days without a human
event (counted from entering the layer or the last human event, whichever is later), sunset
after 100 days without any. No caps and no newsletters: every step goes when it falls due.
Time moves in ticks of 12 hours. At each tick the scheduler runs (the sweep first, then the due
steps), then the subscribers act on the mail delivered before the tick; human opens and clicks
are judged ``JUDGED_AFTER`` seconds later (the machine window), and the scheduler runs again then.
A step already sent to the subscriber (after a demotion) is not sent again, but its delay still
counts before the next one. Times are seconds from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY = 86400
TICK = DAY // 2
DAYS = 180
JUDGED_AFTER = 11
LAYERS = 5
DELAYS = (0, 4 * DAY, 4 * DAY)  # steps 1, 2, 3 of every layer's main sequence
DEMOTE_AFTER = 45 * DAY
SUNSET_AFTER = 100 * DAY
CLICKED_MESSAGES = 2

PERSONAS = {
    # clicks a link in every mail, half a day after it arrives
    "reader": 150,
    # clicks the mails that arrive in its first five days, then never again
    "fader": 150,
    # opens every mail through Gmail's image proxy (a person reading, never a machine)
    "opener": 100,
    # buys (through the API) on days 10, 50 and 80, never clicks
    "buyer": 100,
    # only a link scanner ever touches its mail: every link, half a day after delivery
    "scanned": 100,
    # unsubscribes with the one-click link on day 20
    "unsubscriber": 100,
    # never does anything
    "silent": 300,
}
PURCHASE_DAYS = (10, 50, 80)
UNSUBSCRIBE_DAY = 20
FADER_CLICKS_BEFORE = 5 * DAY


def personas() -> list[str]:
    """The persona of each subscriber, in id order: interleaved, so every batch mixes them."""
    out: list[str] = []
    left = dict(PERSONAS)
    while any(left.values()):
        for name in PERSONAS:
            if left[name]:
                out.append(name)
                left[name] -= 1
    return out


@dataclass
class Person:
    persona: str
    layer: int = 1
    status: str = "active"
    entered: int = 0
    last_human: int | None = None
    sent: set[tuple[int, int]] = field(default_factory=set)  # (layer, step) pairs received
    due: int | None = 0  # the enrollment's next step is due then (None: finished or stopped)
    position: int = 1
    mails: list[tuple[int, int]] = field(default_factory=list)  # (time, mail number) received
    acted: int = 0  # mails acted on so far
    clicked_since_entry: set[int] = field(default_factory=set)
    promotions: int = 0
    demotions: int = 0

    def enter(self, layer: int, at: int) -> None:
        self.layer, self.entered, self.due, self.position = layer, at, at, 1
        self.clicked_since_entry = set()


@dataclass
class Outcome:
    layer: int
    status: str
    mails: int
    promotions: int
    demotions: int


def run() -> list[Outcome]:
    people = [Person(p) for p in personas()]
    for tick in range(DAYS * 2):
        now = tick * TICK
        for person in people:
            _sweep(person, now)
            _steps(person, now)
        clicked: list[Person] = []
        for person in people:
            if _act(person, now):
                clicked.append(person)
        judged = now + JUDGED_AFTER
        for person in clicked:
            if len(person.clicked_since_entry) >= CLICKED_MESSAGES and person.layer < LAYERS:
                person.promotions += 1
                person.enter(person.layer + 1, judged)
        for person in people:
            _steps(person, judged)
    return [Outcome(p.layer, p.status, len(p.mails), p.promotions, p.demotions) for p in people]


def _sweep(person: Person, now: int) -> None:
    if person.status != "active":
        return
    silent_since = person.last_human if person.last_human is not None else 0
    if now - silent_since >= SUNSET_AFTER:
        person.status, person.due = "sunset", None
        return
    since = max(person.entered, person.last_human if person.last_human is not None else person.entered)
    if person.layer > 1 and now - since >= DEMOTE_AFTER:
        person.demotions += 1
        person.enter(person.layer - 1, now)


def _steps(person: Person, now: int) -> None:
    if person.status != "active" or person.due is None or person.due > now:
        return
    if (person.layer, person.position) not in person.sent:
        person.sent.add((person.layer, person.position))
        person.mails.append((now, len(person.mails)))
    if person.position < len(DELAYS):
        person.position += 1
        person.due = now + DELAYS[person.position - 1]
    else:
        person.due = None


def _act(person: Person, now: int) -> bool:
    """What the subscriber does at this tick; True when a human click is to be judged."""
    if person.status == "unsubscribed":
        return False
    if person.persona == "unsubscriber" and now == UNSUBSCRIBE_DAY * DAY:
        person.status, person.due = "unsubscribed", None
        return False
    if person.persona == "buyer" and now in {d * DAY for d in PURCHASE_DAYS}:
        # A purchase is judged as it is recorded: promoted at once (on_any).
        person.last_human = now
        if person.status == "sunset":
            person.status = "active"
        if person.layer < LAYERS:
            person.promotions += 1
            person.enter(person.layer + 1, now)
        return False
    arrived = [(at, n) for at, n in person.mails if at < now][person.acted :]
    person.acted += len(arrived)
    clicked = False
    for at, number in arrived:
        if person.persona == "reader" or (person.persona == "fader" and at < FADER_CLICKS_BEFORE):
            person.last_human = now
            if now >= person.entered:
                person.clicked_since_entry.add(number)
            clicked = True
        elif person.persona == "opener":
            person.last_human = now
    return clicked
