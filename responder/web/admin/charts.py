"""Small SVG charts rendered on the server.

Hand-written rather than a vendored chart library: the dashboard needs four simple shapes
(a funnel, grouped columns, horizontal bars, stacked bars); as inline SVG with presentation
attributes they need no JavaScript, work under a ``script-src 'self'; style-src 'self'``
policy, print, and add no third-party code to audit. Every label goes through ``escape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 520
ROW_H = 34
UP, DOWN, HUMAN, MACHINE, BAR = "#2d7a4f", "#b8453a", "#2d5b8a", "#a9b4c2", "#2d5b8a"


def _svg(height: int, body: str, label: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _text(x: float, y: float, text: object, anchor: str = "start", fill: str = "#222") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}" '
        f'font-size="15" font-family="sans-serif">{escape(str(text))}</text>'
    )


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    shown: str  # the figure printed beside the bar


def funnel(rows: Sequence[Bar]) -> Markup:
    """Centred bars narrowing down the layers: the trust funnel."""
    peak = max((r.value for r in rows), default=0) or 1
    body = []
    for i, row in enumerate(rows):
        width = max(4.0, (WIDTH - 240) * row.value / peak)
        x = 120 + ((WIDTH - 240) - width) / 2
        y = i * ROW_H
        body.append(
            f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{ROW_H - 8}" '
            f'rx="3" fill="{BAR}" opacity="{1 - i * 0.1:.2f}"/>'
        )
        body.append(_text(4, y + ROW_H / 2 + 4, row.label[:18]))
        body.append(_text(WIDTH - 4, y + ROW_H / 2 + 4, row.shown, "end"))
    return _svg(max(ROW_H, len(rows) * ROW_H), "".join(body), "subscribers per layer")


def hbars(rows: Sequence[Bar], label: str, peak: float | None = None) -> Markup:
    peak = peak or max((r.value for r in rows), default=0) or 1
    body = []
    for i, row in enumerate(rows):
        width = (WIDTH - 260) * min(row.value / peak, 1)
        y = i * ROW_H
        body.append(f'<rect x="180" y="{y + 6}" width="{width:.1f}" height="{ROW_H - 12}" fill="{DOWN}"/>')
        body.append(_text(4, y + ROW_H / 2 + 4, row.label[:24]))
        body.append(_text(WIDTH - 4, y + ROW_H / 2 + 4, row.shown, "end"))
    return _svg(max(ROW_H, len(rows) * ROW_H), "".join(body), label)


def up_down_columns(weeks: Sequence[tuple[str, int, int]]) -> Markup:
    """Per week, a green column of moves up and a red one of moves down."""
    return paired_columns(weeks, (UP, DOWN), "moves up and down per week")


def paired_columns(
    rows: Sequence[tuple[str, int, int]], colours: tuple[str, str], label: str, every: int = 1
) -> Markup:
    """Per row, two columns side by side (e.g. moves up and down, opens and clicks); with many
    rows only every ``every``-th label and no figures are printed, each column keeps a tooltip."""
    height, base = 180, 150
    peak = max((max(a, b) for _, a, b in rows), default=0) or 1
    slot = WIDTH / max(len(rows), 1)
    body = []
    for i, (name, first, second) in enumerate(rows):
        x = i * slot + slot * 0.15
        bar_w = slot * 0.33
        for offset, value, colour in ((0, first, colours[0]), (bar_w, second, colours[1])):
            h = (base - 20) * value / peak
            body.append(
                f'<rect x="{x + offset:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(name)}: '
                f"{value}</title></rect>"
            )
            if every == 1:
                body.append(_text(x + offset + bar_w / 2, base - h - 4, value, "middle"))
        if i % every == 0:
            body.append(_text(x + bar_w, base + 18, name, "middle"))
    return _svg(height, "".join(body), label)


def stacked(rows: Sequence[tuple[str, int, int]]) -> Markup:
    """Per row, human (dark) and machine (light) parts of one total."""
    body = []
    for i, (label, human, machine) in enumerate(rows):
        total = human + machine or 1
        y = i * ROW_H
        human_w = (WIDTH - 260) * human / total
        machine_w = (WIDTH - 260) * machine / total if human + machine else 0
        body.append(f'<rect x="100" y="{y + 6}" width="{human_w:.1f}" height="{ROW_H - 12}" fill="{HUMAN}"/>')
        body.append(
            f'<rect x="{100 + human_w:.1f}" y="{y + 6}" width="{machine_w:.1f}" '
            f'height="{ROW_H - 12}" fill="{MACHINE}"/>'
        )
        body.append(_text(4, y + ROW_H / 2 + 4, label))
        body.append(_text(WIDTH - 4, y + ROW_H / 2 + 4, f"{human} human · {machine} machine", "end"))
    return _svg(len(rows) * ROW_H, "".join(body), "human versus machine")
