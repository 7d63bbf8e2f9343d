"""The funnel's decisions as pure functions: plain data in, a decision out, an explicit ``now``.

Nothing here does I/O or imports the rest of responder (``tests/test_layout.py`` checks):
promotion, demotion, sunset and minimum stay; drip scheduling, send windows, caps and
collisions; the human-or-machine verdict on a hit; what an inbound mail is; retry backoff.
"""
