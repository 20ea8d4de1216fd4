"""Server-rendered SVG bar charts for the dashboard: no JavaScript library, no CDN."""

from datetime import datetime
from zoneinfo import ZoneInfo

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from jobs.read_model import Series

COLOURS = {"succeeded": "#2e7d32", "cancelled": "#9e9e9e", "dead": "#c62828"}


def stacked_bars(series: Series, *, title: str, label_format: str, chart_id: str) -> SafeString:
    """Bars of finished jobs per slot, stacked by outcome, with a y-axis maximum and time labels."""
    width, height, left, bottom, top = 640, 180, 36, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    n = len(series.totals)
    peak = max(series.totals, default=0)
    scale = plot_h / peak if peak else 0
    slot_w = plot_w / n
    bar_w = max(1.0, slot_w * 0.8)
    tz: ZoneInfo = timezone.get_current_timezone()
    parts = [
        f'<svg id="{chart_id}" class="jobs-chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" '
        f'data-peak="{peak}" data-total="{sum(series.totals)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" '
        'stroke="#888" stroke-width="1"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" font-size="10" fill="#666">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10" fill="#666">0</text>',
    ]
    labels = series.labels
    for i in range(n):
        x = left + i * slot_w + (slot_w - bar_w) / 2
        y = top + plot_h
        tip = [f"{_local(labels[i], tz, label_format)}:"]
        for outcome in ("succeeded", "cancelled", "dead"):
            count = getattr(series, outcome)[i]
            if not count:
                continue
            h = max(1.0, count * scale)
            y -= h
            tip.append(f"{count} {outcome}")
            parts.append(
                f'<rect class="bar bar-{outcome}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[outcome]}"><title>{escape(" ".join(tip))}</title></rect>'
            )
    for i in (0, n // 2, n - 1):
        x = left + i * slot_w + slot_w / 2
        parts.append(
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" font-size="10" fill="#666">'
            f"{escape(_local(labels[i], tz, label_format))}</text>"
        )
    if not peak:
        parts.append(
            f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
            'text-anchor="middle" font-size="12" fill="#999">no finished jobs</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _local(value: datetime, tz, fmt: str) -> str:
    return value.astimezone(tz).strftime(fmt)
