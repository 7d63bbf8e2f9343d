"""Server-side template injection and resource exhaustion: each payload is refused at upload or
fails safely at render, quickly, with a TemplateError and nothing leaked."""

from __future__ import annotations

import time

import pytest

from responder.errors import TemplateError
from responder.settings import Settings
from responder.templating.compile import compile_template
from responder.templating.context import sample_context
from responder.templating.sandbox import html_env, render_string

SAMPLE = sample_context(Settings.from_env({}), "newsletter")

PAYLOADS = {
    "class mro": ("{{ ''.__class__.__mro__ }}", "unsafe"),
    "subclasses": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    "cycler globals": ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "unsafe"),
    "joiner globals": ("{{ joiner.__init__.__globals__ }}", "unsafe"),
    "self": ("{{ self.__init__.__globals__ }}", "unsafe"),
    "request-style config": ("{{ config.items() }}", "undefined"),
    "attr filter": ("{{ ''|attr('__class__') }}", "unsafe"),
    "format attribute walk": ("{{ '{0.__class__}'.format('') }}", "unsafe"),
    "huge repeat": ("{{ 'a' * 10**9 }}", "too large"),
    "huge list repeat": ("{{ [1] * 10**9 }}", "too large"),
    "huge power": ("{{ 9 ** 999999 }}", "too large"),
    "printf width": ("{{ '%0999999999d' % 1 }}", "too large"),
    "format width": ("{{ '{:>999999999}'.format(1) }}", "too large"),
    "format filter width": ("{{ '%999999999s'|format('x') }}", "too large"),
    "ljust": ("{{ 'a'.ljust(10**9) }}", "too large"),
    "center filter": ("{{ 'x'|center(10**9) }}", "too large"),
    "replace blow-up": ("{{ ('a' * 100000)|replace('a', 'a' * 100000) }}", "too large"),
    "deep recursion": ("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "RecursionError"),
    "doubling recursion": ("{% macro d(s) %}{{ d(s ~ s) }}{% endmacro %}{{ d('ab') }}", "too large"),
    "output flood": (
        ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}"),
        "renders larger than",
    ),
    "busy loop": (("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"), "longer than"),
    "mutate data": ("{{ subscriber.tags.append(1) }}", "unsafe"),
    "namespace state": ("{% set ns = namespace(s='a') %}{{ ns.s }}", "undefined"),
    "lipsum": ("{{ lipsum(100000) }}", "undefined"),
}


@pytest.mark.parametrize("payload,problem", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_payload_fails_safely(payload: str, problem: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render_string(html_env(), payload, SAMPLE, "body", time_limit_s=0.3)
    assert problem in caught.value.message
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("payload", [PAYLOADS["class mro"][0], PAYLOADS["huge repeat"][0]])
def test_upload_of_a_payload_is_refused(payload: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(f"<p>{payload}</p>", "Hi", samples=[SAMPLE])
    assert caught.value.status == 422 and "body, line 1" in caught.value.message


def test_timeout_leaves_the_thread_usable() -> None:
    with pytest.raises(TemplateError):
        render_string(html_env(), PAYLOADS["busy loop"][0], SAMPLE, "body", time_limit_s=0.05)
    time.sleep(0.1)  # a late watchdog shot would land here, outside any render
    assert render_string(html_env(), "{{ subscriber.first_name }}", SAMPLE, "body") == "Sam"


def test_plain_data_renders_normally() -> None:
    out = render_string(
        html_env(),
        "{% for t in ['x', 'y'] %}{{ t|upper }}{% endfor %} "
        "{{ '%05.1f'|format(3.14159) }} {{ '{:>4}'.format(7) }} {{ 2 ** 10 }} "
        "{{ '<b>' }}",
        SAMPLE,
        "body",
    )
    assert out == "XY 003.1    7 1024 &lt;b&gt;"


def test_a_timeout_swallowed_mid_render_is_raised_again() -> None:
    """The watchdog's exception may land in a callback the garbage collector ran mid-render,
    which swallows it: it comes again until the render is over."""
    from responder.templating import sandbox

    entry = sandbox._watchdog.add(time.monotonic() + 0.05)
    swallowed = 0
    started = time.monotonic()
    try:
        with pytest.raises(sandbox.RenderTimeout):
            while time.monotonic() - started < 5:
                try:
                    while time.monotonic() - started < 5:
                        pass
                except sandbox.RenderTimeout:
                    swallowed += 1  # as a weak reference's callback would
                    if swallowed == 2:
                        raise
    finally:
        sandbox._watchdog.remove(entry)
    assert swallowed == 2 and time.monotonic() - started < 1
