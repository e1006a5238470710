"""Charts drawn on the server: the coordinates of an SVG line chart of agreement and error rate
per day, for a template to render (no JavaScript, no build step).

The x axis is days (UTC), oldest on the left, ending today; the y axis is a rate from 0 to
100 %. A day without reviewed (or checked) actions has no point for that line; a line joins
the days that have one. Changes of level are marked by vertical lines on their day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from gateway.schemas import AutonomyChange, SeriesPoint

__all__ = ["Chart", "trend_chart"]

WIDTH = 560
HEIGHT = 170
LEFT, RIGHT, TOP, BOTTOM = 40, 12, 10, 24


@dataclass(frozen=True)
class Point:
    """A point of a line, and what it says (for its tooltip)."""

    x: float
    y: float
    title: str


@dataclass
class Chart:
    """What the template draws: lines as SVG ``points`` strings, their dots, grid and marks."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    agreement: list[Point] = field(default_factory=list)
    errors: list[Point] = field(default_factory=list)
    grid: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    marks: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    summary: str = ""

    @property
    def agreement_line(self) -> str:
        """The agreement line as an SVG ``points`` attribute."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.agreement)

    @property
    def error_line(self) -> str:
        """The error-rate line as an SVG ``points`` attribute."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.errors)

    @property
    def empty(self) -> bool:
        """Nothing was reviewed or checked in the period: no line to draw."""
        return not self.agreement and not self.errors


def _pct(bp: int) -> str:
    return f"{bp / 100:.1f} %"


def trend_chart(
    series: list[SeriesPoint],
    changes: list[AutonomyChange],
    today: dt.date,
    days: int,
) -> Chart:
    """Lay out ``days`` days ending ``today``: agreement and error rate per day."""
    chart = Chart(WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM)
    first = today - dt.timedelta(days=days - 1)
    span_x = WIDTH - LEFT - RIGHT
    span_y = HEIGHT - TOP - BOTTOM

    def x_of(day: dt.date) -> float:
        return LEFT + span_x * (day - first).days / max(1, days - 1)

    def y_of(bp: int) -> float:
        return TOP + span_y * (1 - bp / 10_000)

    for bp in (0, 5000, 10_000):
        chart.grid.append((y_of(bp), f"{bp // 100} %"))
    step = max(1, days // 5)
    for offset in range(0, days, step):
        day = first + dt.timedelta(days=offset)
        chart.ticks.append((x_of(day), day.strftime("%d %b")))
    for point in series:
        day = dt.date.fromisoformat(point.day)
        if day < first or day > today:
            continue
        if point.agreement_bp is not None:
            chart.agreement.append(
                Point(
                    x_of(day),
                    y_of(point.agreement_bp),
                    f"{point.day}: agreement {_pct(point.agreement_bp)} of {point.reviewed} "
                    "reviewed",
                )
            )
        if point.error_bp is not None:
            chart.errors.append(
                Point(
                    x_of(day),
                    y_of(point.error_bp),
                    f"{point.day}: errors {_pct(point.error_bp)} of {point.checked} checked",
                )
            )
    for change in changes:
        day = dt.date.fromisoformat(change.time[:10])
        if first <= day <= today:
            chart.marks.append((x_of(day), f"{change.event} to {change.to_level}"))
    last_agree = next((p for p in reversed(series) if p.agreement_bp is not None), None)
    last_error = next((p for p in reversed(series) if p.error_bp is not None), None)
    parts = [f"Agreement and error rate per day over the last {days} days."]
    if last_agree is not None and last_agree.agreement_bp is not None:
        parts.append(f"Latest agreement {_pct(last_agree.agreement_bp)} on {last_agree.day}.")
    if last_error is not None and last_error.error_bp is not None:
        parts.append(f"Latest error rate {_pct(last_error.error_bp)} on {last_error.day}.")
    if chart.marks:
        parts.append(f"{len(chart.marks)} change(s) of level.")
    chart.summary = " ".join(parts)
    return chart
