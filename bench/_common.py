"""What every bench shares: settings, logging, figures, medians, percentiles.

A bench prints figures, never asserts them: the machine is shared and noisy, so each figure is
the median of several runs, next to a baseline measured in the same run, with the target (when
the issue sets one) marked met or not met for the reader.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = [
    "Context",
    "Figure",
    "fmt_rate",
    "percentile",
    "print_summary",
]

FIGURE_PREFIX = "FIGURE"


@dataclass
class Context:
    """How a bench should run: sizes (``quick`` for the smoke test), repeats, where data lives."""

    out: Path
    quick: bool = False
    repeat: int = 5
    figures: list[Figure] = field(default_factory=list)
    bench: str = "bench"

    def log(self, message: str) -> None:
        """Say what the bench is doing, prefixed with its name; flushed so progress shows."""
        print(f"[{self.bench}] {message}", flush=True)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Log ``what``, run the block and log how long it took."""
        self.log(f"{what} ...")
        start = time.perf_counter()
        yield
        self.log(f"{what}: done in {time.perf_counter() - start:.1f} s")

    def figure(self, figure: Figure) -> Figure:
        """Print a figure line and keep it for the summary."""
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure


@dataclass(frozen=True)
class Figure:
    """One measured figure: the median of ``runs``, and how it compares with a baseline."""

    name: str  # "<bench>.<what>", e.g. "ledger_append.async_32"
    runs: tuple[float, ...]
    unit: str
    baseline: str | None = None  # the name of the figure this one is compared with
    ratio: float | None = None  # median / baseline median
    target: str | None = None  # what the issue asks, e.g. ">= 50 % of raw"
    met: bool | None = None
    note: str = ""
    digits: int = 0  # decimals shown for the value

    @property
    def median(self) -> float:
        """The median of the runs (the figure reported)."""
        return statistics.median(self.runs)

    def line(self) -> str:
        """``FIGURE name: median unit (runs) | ratio | target``, one line."""
        runs = " ".join(_num(r, self.digits) for r in self.runs)
        parts = [
            f"{FIGURE_PREFIX} {self.name}: {_num(self.median, self.digits)} {self.unit}"
            f" (median of {len(self.runs)}: {runs})"
        ]
        if self.ratio is not None and self.baseline is not None:
            parts.append(f"{self.ratio * 100:.1f} % of {self.baseline}")
        if self.target is not None:
            verdict = "n/a" if self.met is None else ("met" if self.met else "NOT MET")
            parts.append(f"target {self.target}: {verdict}")
        if self.note:
            parts.append(self.note)
        return " | ".join(parts)


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def fmt_rate(value: float) -> str:
    """A rate with thousands separators."""
    return f"{value:,.0f}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of nothing")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def print_summary(figures: Sequence[Figure], stream: TextIO | None = None) -> None:
    """All figures again at the end, one line each, so a long log need not be scrolled."""
    out = sys.stdout if stream is None else stream
    print("\n=== summary ===", file=out)
    for figure in figures:
        print(figure.line(), file=out)
