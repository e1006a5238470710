"""What every command prints through: messages and one-line errors on stderr, columns for
people and for `cut`/`awk`, and a progress bar for long reads."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

__all__ = ["err", "fail", "show_progress", "tabulate"]

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error to stderr and return the exit to raise."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def tabulate(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns (the last one unpadded), for people and for `cut`/`awk`."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def show_progress(description: str) -> Progress:
    """A progress bar on stderr, shown only to a terminal and gone when done."""
    return Progress(
        f"[progress.description]{description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
