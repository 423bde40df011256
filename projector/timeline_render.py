"""The renderers of a :class:`projector.timeline.Timeline`: terminal, SVG, HTML and PNG.

* :func:`terminal_lines`: rich ``Text`` lines for a console of any width (the chart takes the
  columns the step table leaves, at least 10; narrow consoles drop the detail columns first).
  ``█`` completed, ``▓`` failed, ``▒`` running, ``▚`` cancelled, ``░`` skipped or pending,
  ``╌`` the gap before a retry; a step with parallel iterations gets a band below it (``▁`` to
  ``█``: how many ran at once, relative to its peak); ``◆`` marks lifecycle events; the axis
  shades the stall with ``░`` and ``//`` is the break before a compressed idle tail.
* :func:`svg`: one self-contained SVG document (no scripts, no external references), every
  producer string escaped; failed attempts red and hatched, gaps dashed, the stall shaded.
* :func:`html`: a self-contained HTML page with that SVG and the step table.
* :func:`png`: the same chart drawn by matplotlib (the ``noetl-projector[png]`` extra).

Producer text shown on a terminal goes through :mod:`projector.cli.safe`; in SVG and HTML
through :func:`html.escape` (and control characters are escaped by :func:`safe.escape` first, so
the XML stays well-formed).
"""

from __future__ import annotations

import html as _html
import io
import math
from datetime import datetime

from rich.text import Text

from .cli.safe import escape, text
from .errors import ConfigurationError
from .fold import TERMINAL
from .timeline import Bar, StepRow, Timeline, format_duration

__all__ = [
    "LEGEND",
    "header_lines",
    "html",
    "png",
    "require_matplotlib",
    "step_table_html",
    "svg",
    "terminal_lines",
]

_CHAR = {"COMPLETED": "█", "FAILED": "▓", "RUNNING": "▒", "CANCELLED": "▚"}
_STYLE = {
    "COMPLETED": "green",
    "FAILED": "bold red",
    "RUNNING": "cyan",
    "PENDING": "cyan",
    "CANCELLED": "yellow",
    "SKIPPED": "dim",
}
_COLOUR = {
    "COMPLETED": "#2e9d4f",
    "FAILED": "#d23c3c",
    "RUNNING": "#2b8fd6",
    "PENDING": "#9ec9ea",
    "CANCELLED": "#d6a72b",
    "SKIPPED": "#b0b0b0",
}
_LEVELS = "▁▂▃▄▅▆▇█"
#: What the terminal characters mean (printed under the chart).
LEGEND = "█ completed  ▓ failed  ▒ running  ▚ cancelled  ╌ wait before retry  ◆ lifecycle  ░ idle"


def _ts(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if t is not None else "-"


def _duration(tl: Timeline, start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    if end is None:
        return format_duration(tl.now - start) + "…"
    return format_duration(end - start)


def _span(tl: Timeline, b: Bar, width: int) -> tuple[int, int]:
    x0 = tl.scale(b.started_at)
    x1 = tl.scale(b.finished_at or tl.bar_end)
    c0 = min(int(x0 * width), width - 1)
    return c0, max(c0 + 1, min(math.ceil(x1 * width), width))


def _chart_cells(tl: Timeline, row: StepRow, width: int) -> Text:
    cells: list[tuple[str, str]] = [(" ", "")] * width
    for g in row.gaps:
        c0 = min(int(tl.scale(g.start) * width), width - 1)
        c1 = max(c0 + 1, min(math.ceil(tl.scale(g.end) * width), width))
        for c in range(c0, c1):
            cells[c] = ("╌", "dim")
    # Failed attempts last, so a failure is never hidden under a bar of another iteration.
    order = sorted(row.bars, key=lambda b: b.status == "FAILED")
    for b in order:
        c0, c1 = _span(tl, b, width)
        char = _CHAR.get(b.status, "░")
        for c in range(c0, c1):
            cells[c] = (char, _STYLE.get(b.status, ""))
    out = Text()
    for char, style in cells:
        out.append(char, style)
    return out


def _band(tl: Timeline, row: StepRow, width: int) -> Text:
    """How many bars were open in each column (the most within the column), relative to the
    step's peak."""
    most = [0] * width
    changes = list(row.concurrency)
    for i, (t, level) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else tl.bar_end
        if level <= 0:
            continue
        c0 = min(int(tl.scale(t) * width), width - 1)
        c1 = max(c0 + 1, min(math.ceil(tl.scale(until) * width), width))
        for c in range(c0, c1):
            most[c] = max(most[c], level)
    out = Text()
    for n in most:
        if n == 0:
            out.append(" ")
        else:
            out.append(_LEVELS[min(len(_LEVELS) - 1, (n * len(_LEVELS) - 1) // row.peak)], "blue")
    return out


def _axis(tl: Timeline, width: int) -> tuple[Text, Text]:
    line = ["─"] * width
    stall = tl.stall
    if stall is not None:
        for c in range(min(int(tl.scale(stall[0]) * width), width - 1), width):
            line[c] = "░"
    labels = [" "] * width
    for pos, label in tl.scale.ticks(max(2, width // 12)):
        c = min(int(pos * width), width - 1)
        if line[c] == "─":
            line[c] = "┬"
        if c + len(label) <= width and all(
            ch == " " for ch in labels[max(c - 1, 0) : c + len(label)]
        ):
            labels[c : c + len(label)] = list(label)
    if tl.scale.broken:
        c = min(int(tl.scale.true_share * width), width - 2)
        line[c : c + 2] = ["/", "/"]
        tail = "+" + format_duration(tl.scale.until - tl.scale.start)
        start = width - len(tail)
        if start > c + 2 and all(ch == " " for ch in labels[start - 1 :]):
            labels[start:] = list(tail)
    return Text("".join(line), "dim"), Text("".join(labels), "dim")


def _markers(tl: Timeline, width: int) -> Text:
    cells = [" "] * width
    for m in tl.markers:
        cells[min(int(tl.scale(m.at) * width), width - 1)] = "◆"
    return Text("".join(cells), "magenta")


def _iterations(row: StepRow) -> str:
    s = row.step
    if s.iterations <= 1 and not s.iterations_running:
        return ""
    return f"{s.iterations_completed}/{s.iterations_failed}/{s.iterations_running}"


def _progress(row: StepRow, width: int) -> Text:
    s = row.step
    out = Text()
    if s.iterations <= 1 or width <= 0:
        return out.append(" " * width)
    done = round(width * s.iterations_completed / s.iterations)
    failed = min(width - done, math.ceil(width * s.iterations_failed / s.iterations))
    out.append("━" * done, "green")
    out.append("━" * failed, "red")
    out.append("─" * (width - done - failed), "dim")
    return out


def header_lines(tl: Timeline) -> list[Text]:
    """The execution's lines above the chart: id, status, start, duration, idle time, error."""
    x = tl.execution
    first = Text()
    first.append("execution ", "bold").append_text(text(x.execution_id, "bold"))
    first.append("  ").append_text(text(x.status, _STYLE.get(x.status, "")))
    if x.status not in TERMINAL:
        first.append(" (settled)" if x.settled and x.step_count else "")
    first.append(
        f"  started {_ts(x.started_at)}  duration {_duration(tl, x.started_at, x.finished_at)}"
    )
    first.append(f"  steps {x.steps_completed}/{x.step_count} done, {x.steps_failed} failed")
    first.append(f"  events {x.event_count}")
    lines = [first]
    if tl.idle is not None:
        lines.append(
            Text(
                f"idle {format_duration(tl.idle)} since last progress at "
                f"{_ts(x.last_progress_at)}; open iterations {x.open_units}",
                "yellow",
            )
        )
    if x.error is not None:
        lines.append(Text("error ", "bold red").append_text(text(x.error)))
    for c in tl.children:
        line = Text("child ").append_text(text(c.execution_id)).append("  ")
        line.append_text(text(c.status, _STYLE.get(c.status, "")))
        if c.error is not None:
            line.append("  ").append_text(text(c.error, "red"))
        lines.append(line)
    return lines


def terminal_lines(tl: Timeline, width: int, *, header: bool = True) -> list[Text]:
    """The timeline as lines of at most `width` columns (any width)."""
    width = max(width, 20)
    head = header_lines(tl) if header else []
    lines: list[Text] = []
    if not tl.steps:
        lines.append(Text("no steps"))
    name_w = min(max((len(escape(r.step.step)) for r in tl.steps), default=4), 28)
    name_w = max(min(name_w, width - 11), 4)
    # Columns: name, status, attempts, iterations d/f/r, progress, duration; dropped from the
    # right of this list while the chart would get fewer than 10 columns.
    iter_w = max((len(_iterations(r)) for r in tl.steps), default=0)
    detail = [("status", 9), ("att", 3), ("iter", iter_w), ("bar", 8 if iter_w else 0), ("dur", 8)]
    detail = [d for d in detail if d[1] > 0]
    while detail and width - name_w - sum(w + 1 for _, w in detail) - 1 < 10:
        detail.pop()
    used = name_w + sum(w + 1 for _, w in detail) + 1
    chart_w = max(width - used, 1)
    keep = {k for k, _ in detail}
    pad = " " * used
    if tl.markers:
        lines.append(Text(pad) + _markers(tl, chart_w))
    for r in tl.steps:
        s = r.step
        name = escape(s.step)
        name = name if len(name) <= name_w else name[: name_w - 1] + "…"
        line = Text(name.ljust(name_w) + " ")
        if "status" in keep:
            line.append(s.status[:9].ljust(9), _STYLE.get(s.status, "")).append(" ")
        if "att" in keep:
            line.append(str(s.attempts).rjust(3), "bold red" if s.attempts > 1 else "")
            line.append(" ")
        if "iter" in keep:
            line.append(_iterations(r).rjust(iter_w) + " ")
        if "bar" in keep:
            line.append_text(_progress(r, 8)).append(" ")
        if "dur" in keep:
            line.append(_duration(tl, s.started_at, s.finished_at)[:8].rjust(8) + " ")
        line.append_text(_chart_cells(tl, r, chart_w))
        lines.append(line)
        if r.peak > 1:
            label = f"{r.peak} at once"[: used - 1].rjust(used - 1) + " "
            lines.append(Text(label, "blue") + _band(tl, r, chart_w))
        if s.error is not None:
            lines.append(Text(" " * 2 + "error ", "red").append_text(text(s.error)))
    line, labels = _axis(tl, chart_w)
    lines.append(Text(pad) + line)
    lines.append(Text(pad) + labels)
    lines.append(Text(LEGEND[: max(width, 1)], "dim"))
    # The header wraps on a narrow console; the chart lines are cut to fit.
    return head + [ln[:width] if ln.cell_len > width else ln for ln in lines]


# --- SVG -------------------------------------------------------------------------------------

_LABEL_W = 330
_ROW_H = 24
_BAND_H = 16
_CHART_W = 720
_TOP = 64


def _x(tl: Timeline, t: datetime) -> float:
    return _LABEL_W + tl.scale(t) * _CHART_W


def _e(value: object) -> str:
    """Producer text for SVG/HTML: controls visible, markup characters escaped."""
    return _html.escape(escape("" if value is None else value), quote=True)


def _bar_title(b: Bar) -> str:
    end = _ts(b.finished_at) if b.finished_at else "open"
    err = f" error: {b.error}" if b.error else ""
    return (
        f"iteration {b.iteration} attempt {b.attempt} {b.status} {_ts(b.started_at)} .. {end}{err}"
    )


def svg(tl: Timeline) -> str:
    """The timeline as a self-contained SVG document."""
    rows = []
    y = _TOP
    for r in tl.steps:
        rows.append((r, y))
        y += _ROW_H + (_BAND_H if r.peak > 1 else 0)
    chart_bottom = y
    height = chart_bottom + 64
    width = _LABEL_W + _CHART_W + 40
    x = tl.execution
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        'font-size="12" class="projector-timeline">',
        f"<title>timeline of execution {_e(x.execution_id)}</title>",
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#d23c3c"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2"/></pattern>'
        '<pattern id="idle" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="8" height="8" fill="#fff5d6"/>'
        '<line x1="0" y1="0" x2="0" y2="8" stroke="#f0d890" stroke-width="3"/></pattern></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    status_colour = _COLOUR.get(x.status, "#333333")
    head = (
        f"execution {_e(x.execution_id)} "
        f'<tspan fill="{status_colour}" font-weight="bold">{_e(x.status)}</tspan>'
        f"  started {_e(_ts(x.started_at))}"
        f"  duration {_e(_duration(tl, x.started_at, x.finished_at))}"
        f"  steps {x.steps_completed}/{x.step_count}  events {x.event_count}"
    )
    out.append(f'<text x="10" y="20" font-size="14">{head}</text>')
    sub = []
    if tl.idle is not None:
        sub.append(f"idle {format_duration(tl.idle)} since last progress {_ts(x.last_progress_at)}")
    if x.error is not None:
        sub.append(f"error: {x.error}")
    if sub:
        out.append(f'<text x="10" y="38" fill="#8a5a00" class="sub">{_e("  |  ".join(sub))}</text>')
    stall = tl.stall
    if stall is not None:
        sx = _x(tl, stall[0])
        out.append(
            f'<rect class="stall" x="{sx:.1f}" y="{_TOP - 14}" '
            f'width="{_LABEL_W + _CHART_W - sx:.1f}" '
            f'height="{chart_bottom - _TOP + 14}" fill="url(#idle)" opacity="0.8">'
            f"<title>idle {_e(format_duration(tl.idle or stall[1] - stall[0]))} since the last "
            "progress</title></rect>"
        )
    for m in tl.markers:
        mx = _x(tl, m.at)
        out.append(
            f'<g class="marker"><line x1="{mx:.1f}" y1="{_TOP - 12}" x2="{mx:.1f}" '
            f'y2="{chart_bottom}" stroke="#9b59b6" stroke-dasharray="2,3" stroke-width="1"/>'
            f'<path d="M{mx - 5:.1f},{_TOP - 18} L{mx + 5:.1f},{_TOP - 18} '
            f'L{mx:.1f},{_TOP - 10} Z" '
            f'fill="#9b59b6"><title>{_e(m.event_type)} {_e(m.status)} {_e(_ts(m.at))}</title>'
            "</path></g>"
        )
    for r, ry in rows:
        s = r.step
        label = escape(s.step)
        label = label if len(label) <= 28 else label[:27] + "…"
        detail = f"{s.status}"
        if s.attempts > 1:
            detail += f" attempts {s.attempts}"
        if s.iterations > 1:
            detail += f" {s.iterations_completed}/{s.iterations}"
        out.append(
            f'<g class="step" data-step="{_e(s.step)}" data-status="{_e(s.status)}">'
            f'<text x="10" y="{ry + 16}">{_html.escape(label)}</text>'
            f'<text x="{_LABEL_W - 8}" y="{ry + 16}" text-anchor="end" font-size="10" '
            f'fill="{_COLOUR.get(s.status, "#333")}">{_e(detail)}</text>'
        )
        for g in r.gaps:
            gx0, gx1 = _x(tl, g.start), _x(tl, g.end)
            out.append(
                f'<line class="gap" x1="{gx0:.1f}" y1="{ry + 12}" x2="{max(gx1, gx0 + 1):.1f}" '
                f'y2="{ry + 12}" stroke="#888" stroke-dasharray="3,2" stroke-width="2">'
                f"<title>wait {_e(format_duration(g.end - g.start))} before attempt "
                f"{g.attempt}</title></line>"
            )
        for b in sorted(r.bars, key=lambda b: b.status == "FAILED"):
            bx0 = _x(tl, b.started_at)
            bx1 = _x(tl, b.finished_at or tl.bar_end)
            fill = "url(#hatch)" if b.status == "FAILED" else _COLOUR.get(b.status, "#999")
            opacity = "" if r.peak <= 1 else ' fill-opacity="0.35"'
            out.append(
                f'<rect class="bar {_e(b.status.lower())}" x="{bx0:.1f}" y="{ry + 4}" '
                f'width="{max(bx1 - bx0, 2):.1f}" height="{_ROW_H - 8}" fill="{fill}"{opacity} '
                f'rx="2"><title>{_e(_bar_title(b))}</title></rect>'
            )
        if r.peak > 1:
            by = ry + _ROW_H + _BAND_H - 2
            points = []
            changes = list(r.concurrency)
            for i, (t, level) in enumerate(changes):
                until = changes[i + 1][0] if i + 1 < len(changes) else tl.bar_end
                h = (_BAND_H - 4) * level / r.peak
                points += [(_x(tl, t), by - h), (max(_x(tl, until), _x(tl, t) + 1), by - h)]
            path = " ".join(f"L{px:.1f},{py:.1f}" for px, py in points)
            first = points[0][0] if points else _LABEL_W
            out.append(
                f'<path class="band" d="M{first:.1f},{by} {path} L{points[-1][0]:.1f},{by} Z" '
                f'fill="#5b7fd6" opacity="0.7"><title>at most {r.peak} iterations at once'
                "</title></path>"
                f'<text x="{_LABEL_W - 8}" y="{by}" text-anchor="end" font-size="10" '
                f'fill="#5b7fd6">{r.peak} at once</text>'
            )
        out.append("</g>")
    # Axis.
    ay = chart_bottom + 6
    out.append(
        f'<line x1="{_LABEL_W}" y1="{ay}" x2="{_LABEL_W + _CHART_W}" y2="{ay}" stroke="#444"/>'
    )
    for pos, label in tl.scale.ticks(9):
        tx = _LABEL_W + pos * _CHART_W
        out.append(
            f'<line x1="{tx:.1f}" y1="{ay}" x2="{tx:.1f}" y2="{ay + 5}" stroke="#444"/>'
            f'<text x="{tx:.1f}" y="{ay + 17}" text-anchor="middle" font-size="10">'
            f"{_e(label)}</text>"
        )
    if tl.scale.broken:
        bx = _LABEL_W + tl.scale.true_share * _CHART_W
        out.append(
            f'<path d="M{bx - 4:.1f},{ay + 6} L{bx + 2:.1f},{ay - 6} M{bx + 2:.1f},{ay + 6} '
            f'L{bx + 8:.1f},{ay - 6}" stroke="#444" stroke-width="1.5"/>'
            f'<text x="{_LABEL_W + _CHART_W:.1f}" y="{ay + 17}" text-anchor="end" font-size="10">'
            f"now +{_e(format_duration(tl.scale.until - tl.scale.start))}</text>"
        )
    ly = ay + 40
    legend = [
        ("COMPLETED", "completed"),
        ("FAILED", "failed attempt"),
        ("RUNNING", "running"),
        ("CANCELLED", "cancelled"),
    ]
    lx = _LABEL_W
    for status, name in legend:
        fill = "url(#hatch)" if status == "FAILED" else _COLOUR[status]
        out.append(
            f'<rect x="{lx}" y="{ly - 9}" width="14" height="10" fill="{fill}"/>'
            f'<text x="{lx + 18}" y="{ly}" font-size="10">{name}</text>'
        )
        lx += 110
    out.append(
        f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 14}" y2="{ly - 4}" stroke="#888" '
        f'stroke-dasharray="3,2" stroke-width="2"/><text x="{lx + 18}" y="{ly}" font-size="10">'
        "wait before retry</text>"
        f'<rect x="{lx + 130}" y="{ly - 9}" width="14" height="10" fill="url(#idle)"/>'
        f'<text x="{lx + 148}" y="{ly}" font-size="10">idle</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def step_table_html(tl: Timeline) -> str:
    """The step table as an HTML ``<table>`` (every cell escaped)."""
    head = (
        "<tr><th>step</th><th>status</th><th>attempts</th><th>iterations</th>"
        "<th>done/failed/running</th><th>started</th><th>duration</th><th>error</th></tr>"
    )
    body = []
    for r in tl.steps:
        s = r.step
        body.append(
            f'<tr class="status-{_e(s.status.lower())}"><td>{_e(s.step)}</td>'
            f'<td class="status">{_e(s.status)}</td><td>{s.attempts}</td><td>{s.iterations}</td>'
            f"<td>{s.iterations_completed}/{s.iterations_failed}/{s.iterations_running}</td>"
            f"<td>{_e(_ts(s.started_at))}</td>"
            f"<td>{_e(_duration(tl, s.started_at, s.finished_at))}</td>"
            f"<td>{_e(s.error)}</td></tr>"
        )
    return f'<table class="steps"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


_CSS = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
.status-failed .status { color: #d23c3c; font-weight: bold; }
.status-completed .status { color: #2e9d4f; }
.status-running .status, .status-pending .status { color: #2b8fd6; }
.error { color: #d23c3c; white-space: pre-wrap; }
"""


def html(tl: Timeline) -> str:
    """A self-contained HTML page: the execution, the timeline SVG, the step table and the
    child executions."""
    x = tl.execution
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>execution {_e(x.execution_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>execution {_e(x.execution_id)} <span>{_e(x.status)}</span></h1>",
    ]
    if x.playbook is not None:
        parts.append(f"<p>playbook {_e(x.playbook)}</p>")
    if x.error is not None:
        parts.append(f'<p class="error">error: {_e(x.error)}</p>')
    if tl.idle is not None:
        parts.append(
            f"<p>idle {_e(format_duration(tl.idle))} since the last progress at "
            f"{_e(_ts(x.last_progress_at))}</p>"
        )
    parts.append(svg(tl))
    parts.append(step_table_html(tl))
    if tl.children:
        rows = "".join(
            f'<tr class="status-{_e(c.status.lower())}"><td>{_e(c.execution_id)}</td>'
            f'<td class="status">{_e(c.status)}</td><td class="error">{_e(c.error)}</td></tr>'
            for c in tl.children
        )
        parts.append(
            "<h2>child executions</h2><table><thead><tr><th>execution</th><th>status</th>"
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def require_matplotlib() -> None:
    """:class:`ConfigurationError` naming the extra when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "--png needs matplotlib: pip install 'noetl-projector[png]'"
        ) from None


def png(tl: Timeline) -> bytes:
    """The timeline as a PNG drawn by matplotlib (:func:`require_matplotlib` first)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    n = max(len(tl.steps), 1)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * n), dpi=100)
    try:
        labels = []
        for i, r in enumerate(tl.steps):
            y = n - 1 - i
            labels.append((y, escape(r.step.step)[:30]))
            for g in r.gaps:
                ax.plot([tl.scale(g.start), tl.scale(g.end)], [y, y], ls="--", c="#888", lw=1.5)
            alpha = 1.0 if r.peak <= 1 else 0.35
            for b in sorted(r.bars, key=lambda b: b.status == "FAILED"):
                x0 = tl.scale(b.started_at)
                w = max(tl.scale(b.finished_at or tl.bar_end) - x0, 0.002)
                failed = b.status == "FAILED"
                ax.barh(
                    y,
                    w,
                    left=x0,
                    height=0.6,
                    color=_COLOUR.get(b.status, "#999"),
                    alpha=1.0 if failed else alpha,
                    hatch="//" if failed else None,
                    edgecolor="white" if failed else None,
                )
            if r.peak > 1:
                ax.text(1.0, y + 0.3, f"{r.peak} at once", fontsize=8, ha="right", color="#5b7fd6")
        stall = tl.stall
        if stall is not None:
            ax.axvspan(tl.scale(stall[0]), 1.0, color="#f0d890", alpha=0.4, lw=0)
        for m in tl.markers:
            ax.axvline(tl.scale(m.at), color="#9b59b6", ls=":", lw=1)
        ax.set_yticks([y for y, _ in labels], [label for _, label in labels])
        ticks = tl.scale.ticks(9)
        ax.set_xticks([p for p, _ in ticks], [label for _, label in ticks])
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.7, n - 0.3)
        x = tl.execution
        title = f"execution {escape(x.execution_id)}  {x.status}"
        if tl.idle is not None:
            title += f"  idle {format_duration(tl.idle)}"
        ax.set_title(title, loc="left", fontsize=11)
        ax.legend(
            handles=[
                Patch(color=_COLOUR["COMPLETED"], label="completed"),
                Patch(facecolor=_COLOUR["FAILED"], hatch="//", edgecolor="white", label="failed"),
                Patch(color=_COLOUR["RUNNING"], label="running"),
            ],
            loc="lower right",
            fontsize=8,
            ncol=3,
        )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
