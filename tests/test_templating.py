"""Compiling templates once (MJML with Jinja kept intact, CSS inlined, refusals naming the line)
and rendering them per recipient with everything a mail gets automatically."""

from __future__ import annotations

import html
import random
import re

import pytest

from responder.errors import TemplateError
from responder.settings import Settings
from responder.templating.compile import compile_template, generated_text
from responder.templating.context import sample_context
from responder.templating.render import UNTRACKED_PATHS, Footer, last_body_end, render_mail, rewrite_links
from responder.tracking.links import add_trap

BASE = "https://news.example.com"
SETTINGS = Settings.from_env(
    {
        "RESPONDER_BASE_URL": BASE,
        "RESPONDER_FROM": "Acme <n@acme.example>",
        "RESPONDER_WEBSITE": "https://acme.example",
        "RESPONDER_POSTAL_ADDRESS": "1 Market Street, Springfield",
    }
)
SAMPLE = sample_context(SETTINGS, "newsletter")

MJML = """<mjml>
  <mj-head><mj-title>For {{ subscriber.first_name }}</mj-title>
    <mj-style>.big { background-color: #fef3c7; }</mj-style></mj-head>
  <mj-body>
    <mj-section><mj-column>
      <mj-text css-class="{% if subscriber.layer.position > 2 %}big{% else %}small{% endif %}">
        Hello {{ subscriber.first_name }} &amp; welcome{% if subscriber.tags %}, tagged{% endif %}.
        <ul>{% for tag in ["a", "b"] %}<li>item {{ tag }}</li>{% endfor %}</ul>
        <a href="{{ sender.website }}/guide?who={{ subscriber.email|urlencode }}&amp;x=1">Guide</a>
      </mj-text>
      <mj-text css-class="big">Big news</mj-text>
      <mj-text><a href="{% if subscriber.layer.position > 1 %}https://a.example/x{% else %}https://a.example/y{% endif %}">Pick</a></mj-text>
      <mj-button href="{% if subscriber.layer.position >= 3 %}{{ sender.website }}/pro{% else %}{{ sender.website }}/start{% endif %}">Go</mj-button>
    </mj-column></mj-section>
    {% for n in [1, 2] %}
    <mj-section><mj-column><mj-text>Section {{ n }}</mj-text></mj-column></mj-section>
    {% endfor %}
  </mj-body>
</mjml>"""


def context(position: int = 1, tags: list[str] | None = None) -> dict:
    subscriber = {
        **SAMPLE["subscriber"],
        "layer": {"position": position, "name": "x", "label": "L"},
        "tags": tags or [],
    }
    return {**SAMPLE, "subscriber": subscriber}


def render(compiled, ctx, *, tracked: bool = True, footer: Footer | None = None):  # type: ignore[no-untyped-def]
    return render_mail(
        subject=compiled.subject,
        html=compiled.html,
        text=compiled.text,
        context=ctx,
        track_link=(lambda url: f"{BASE}/c/T?u={url}") if tracked else None,
        open_pixel_url=f"{BASE}/o/P" if tracked else None,
        base_url=BASE,
        footer=footer,
    )


def test_jinja_survives_mjml_in_text_attributes_and_hrefs() -> None:
    compiled = compile_template(MJML, "Hi {{ subscriber.first_name }}", samples=[SAMPLE])
    html = compiled.html
    for tag in (
        "{{ subscriber.first_name }}",
        "{% if subscriber.layer.position > 2 %}",
        '{% for tag in ["a", "b"] %}',
        "{% endfor %}",
        "{{ subscriber.email|urlencode }}",
        "{% for n in [1, 2] %}",
    ):
        assert tag in html, tag
    assert "<mj-" not in html
    low = render(compiled, context(1), tracked=False).html
    high = render(compiled, context(3, ["vip"]), tracked=False).html
    assert "Hello Sam &amp; welcome." in low and "Hello Sam &amp; welcome, tagged." in high
    assert 'class="small"' in low and 'class="big"' in high
    assert low.count("<li") == 2 and "item b" in low
    assert "https://acme.example/start" in low and "https://acme.example/pro" in high
    assert "who=sam.sample%40example.com&amp;x=1" in low
    assert low.count("Section ") == 2 and "Section 2" in low
    assert "<title>For Sam</title>" in low
    assert 'href="https://a.example/y"' in low and 'href="https://a.example/x"' in high


def test_css_is_inlined_once_at_upload_and_media_queries_kept() -> None:
    compiled = compile_template(MJML, "Hi", samples=[SAMPLE])
    big = re.search(r'<td class="big"[^>]*>', compiled.html)
    assert big and "background-color: #fef3c7" in big.group(0)
    # Rules for classes Jinja picks per recipient cannot be inlined at upload; the <style> stays
    # for clients that read it, with MJML's responsive media queries.
    assert ".big { background-color: #fef3c7; }" in compiled.html and "@media" in compiled.html


@pytest.mark.parametrize(
    "source,subject,expected",
    [
        ("<p>{{ subscriber.name }</p>", "Hi", "body, line 1: unexpected '}'"),
        ("<p>ok</p>\n<p>{% if x %}</p>", "Hi", "body, line 2: Unexpected end of template"),
        (
            "<p>ok</p>\n\n<p>{{ subscriber.nickname }}</p>",
            "Hi",
            "body, line 3: 'dict object' has no attribute 'nickname'",
        ),
        ("<p>ok</p>", "Hi {{ subscriber.nme }}", "subject, line 1: 'dict object' has no attribute 'nme'"),
        ("<p>{{ 1 / 0 }}</p>", "Hi", "body, line 1: ZeroDivisionError"),
        (
            "<mjml><mj-body>\n<mj-section><mj-column>\n<mj-text>hi</mj-column>\n</mj-section></mj-body></mjml>",
            "Hi",
            "line 3: </mj-column> found where <mj-text> (line 3) should be closed first",
        ),
        (
            "<mjml><mj-body>\n<mj-section><mj-column><mj-text>a < b</mj-text>\n</mj-column></mj-section></mj-body></mjml>",
            "Hi",
            "line 2: a bare '<'",
        ),
        (
            "<mjml>\n<mj-head>{% if subscriber.tags %}<mj-title>t</mj-title>{% endif %}</mj-head>\n<mj-body></mj-body></mjml>",
            "Hi",
            "body, line 2: {% if subscriber.tags %} sits where MJML drops it",
        ),
        ("x" * (512 * 1024 + 1), "Hi", "larger than 512 KB"),
        ("<p>ok</p>", "", "subject must be one line"),
    ],
)
def test_refusals_name_part_line_and_problem(source: str, subject: str, expected: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, subject, samples=[SAMPLE])
    assert expected in caught.value.message
    assert caught.value.status == 422


def test_every_mail_gets_tracked_links_pixel_footer_and_text() -> None:
    source = (
        "<html><head><style>p { color: #123456; }</style></head><body>"
        '<p>Hi {{ subscriber.first_name }}, read <a href="https://acme.example/a?x=1&amp;y=2">'
        'the guide</a> or <a href="{{ links.preferences }}">preferences</a>.</p></body></html>'
    )
    compiled = compile_template(source, "Hi", samples=[SAMPLE])
    footer = Footer("Acme", "1 Market Street, Springfield", SAMPLE["links"]["unsubscribe"])
    mail = render(compiled, SAMPLE, footer=footer)
    assert '<p style="color: #123456;">Hi Sam' in mail.html
    assert 'href="https://news.example.com/c/T?u=https://acme.example/a?x=1&amp;y=2"' in mail.html
    assert f'href="{SAMPLE["links"]["preferences"]}"' in mail.html  # never tracked
    assert f'<a href="{SAMPLE["links"]["unsubscribe"]}"' in mail.html  # footer added, untracked
    assert "1 Market Street, Springfield" in mail.html
    assert mail.html.index("1 Market Street") < mail.html.index(f"{BASE}/o/P") < mail.html.index("</body>")
    assert "[the guide](https://acme.example/a?x=1&y=2)" in mail.text  # targets kept in text
    assert f"Unsubscribe: {SAMPLE['links']['unsubscribe']}" in mail.text
    assert "<" not in mail.text and "{{" not in mail.text


def test_no_footer_when_the_template_has_one_and_explicit_text_wins() -> None:
    source = '<p>Hi</p><p>{{ sender.postal_address }} <a href="{{ links.unsubscribe }}">Leave</a></p>'
    compiled = compile_template(
        source,
        "Hi",
        text="Hi {{ subscriber.first_name }} & co.\nLeave: {{ links.unsubscribe }}\n{{ sender.postal_address }}",
        samples=[SAMPLE],
    )
    mail = render(compiled, SAMPLE, footer=Footer("Acme", SETTINGS.postal_address, SAMPLE["links"]["unsubscribe"]))
    assert mail.html.count(SAMPLE["links"]["unsubscribe"]) == 1
    assert mail.text.startswith("Hi Sam & co.\n")  # text is not HTML-escaped
    assert "--" not in mail.text


def test_subject_is_one_line_and_not_escaped() -> None:
    compiled = compile_template("<p>x</p>", "Tips  for  {{ sender.name }} & {{ subscriber.first_name }}")
    assert render(compiled, SAMPLE, tracked=False).subject == "Tips for Acme & Sam"


def test_text_part_follows_blocks_per_recipient() -> None:
    compiled = compile_template(MJML, "Hi", samples=[SAMPLE])
    low, high = render(compiled, context(1)).text, render(compiled, context(3, ["vip"])).text
    assert "Hello Sam & welcome." in low and "tagged" not in low and "tagged" in high
    assert "[Go](https://acme.example/start)" in low and "[Go](https://acme.example/pro)" in high


def test_text_part_falls_back_when_conversion_moves_jinja() -> None:
    # inscriptis lays tables out cell by cell: the loop's tags would leave the row they wrap, so
    # the text part is converted from each recipient's rendered HTML instead.
    source = '<table>{% for t in ["a", "b"] %}<tr><td>row {{ t }}</td></tr>{% endfor %}</table>'
    compiled = compile_template(source, "Hi", samples=[SAMPLE])
    assert generated_text(compiled.html) is None
    mail = render(compiled, SAMPLE, tracked=False)
    assert "row a" in mail.text and "row b" in mail.text


def test_text_part_is_precompiled_for_starter_like_markup() -> None:
    assert generated_text(compile_template(MJML, "Hi").html) is not None


def test_blocks_between_mjml_components_survive() -> None:
    source = (
        "<mjml><mj-body><mj-section><mj-column>"
        "{% for i in [1, 2, 3] %}<mj-text>item {{ i }}</mj-text>{% endfor %}"
        '{% if subscriber.tags %}<mj-button href="https://x.example">Tagged</mj-button>'
        "{% endif %}</mj-column></mj-section></mj-body></mjml>"
    )
    compiled = compile_template(source, "Hi", samples=[SAMPLE])
    plain, tagged = render(compiled, context(1), tracked=False), render(compiled, context(1, ["t"]), tracked=False)
    assert re.findall(r"item \d", plain.html) == ["item 1", "item 2", "item 3"]
    assert "Tagged" not in plain.html and "Tagged" in tagged.html
    assert "item 3" in plain.text and "[Tagged](https://x.example)" in tagged.text


def _rewrite_links_reference(body: str, track_link, base_url: str) -> str:  # type: ignore[no-untyped-def]
    """rewrite_links as it was: one case-insensitive regex over the body."""
    own = tuple(base_url + path for path in UNTRACKED_PATHS)
    signed: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        target = html.unescape(match.group(2))
        if target.startswith(own):
            return match.group(0)
        if target not in signed:
            signed[target] = f'href="{html.escape(track_link(target))}"'
        return signed[target]

    return re.sub(r"""href=(["'])(https?://[^"']+)\1""", replace, body, flags=re.IGNORECASE)


def test_link_rewriting_matches_the_case_insensitive_pattern_everywhere() -> None:
    base = "https://news.example.com"
    pieces = [
        'href="',
        "HREF='",
        "Href=",
        "href= ",
        'href="http://a.example/x',
        "https://",
        "HTTPS://",
        "HtTp://",
        "İ",
        "é",
        "😀",
        "<a ",
        ">",
        '"',
        "'",
        "&amp;",
        "&quot;",
        "x",
        " ",
        "\n",
        f"{base}/unsubscribe/t",
        f"{base}/c/",
        f"{base}/page",
        "http://b.example/?a=1&amp;b=2",
        "/path",
        "ß",
        "K",
    ]
    rnd = random.Random(3)
    for i in range(3000):
        pool = pieces + ["httpſ://", "hrefſ"] if i % 10 == 0 else pieces  # "ſ" matches "s"
        body = "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 40)))
        calls: list[str] = []

        def track(url: str, calls: list[str] = calls) -> str:
            calls.append(url)
            return f"{base}/c/{len(calls)}?u={url}"

        expected_calls: list[str] = []

        def track_reference(url: str, calls: list[str] = expected_calls) -> str:
            calls.append(url)
            return f"{base}/c/{len(calls)}?u={url}"

        assert rewrite_links(body, track, base) == _rewrite_links_reference(body, track_reference, base), body
        assert calls == expected_calls


def test_last_body_end_is_where_lower_casing_would_find_it() -> None:
    rnd = random.Random(5)
    pieces = ["</body>", "</BODY>", "</Body >", "</p>", "</", "<", "body>", "é", "😀", "x", "\n", "</html>"]
    for _ in range(3000):
        body = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 30)))
        assert last_body_end(body) == body.lower().rfind("</body>"), body
    # "İ" lower-cases to two characters: the offset stays that of the body itself.
    body = "<p>İstanbul</p></BODY></html>"
    assert body[last_body_end(body) :].startswith("</BODY>")
    assert add_trap(body, "https://x.example/c/t").endswith("&#8203;</a></BODY></html>")
