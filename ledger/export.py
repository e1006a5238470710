"""Exports: the ledger as JSON Lines, ending with a checkpoint that covers all of it.

Each entry's line is exactly its stored canonical bytes; the last line is
``{"checkpoint":"<signed note>"}``. The export is streamed a page at a time, so a ledger of a
million entries never sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from ledger.entry import canonical_json
from ledger.store import Ledger, StoredCheckpoint

__all__ = ["checkpoint_line", "export_lines", "write_export"]

Progress = Callable[[int, int], None]


def checkpoint_line(note: str) -> bytes:
    """The export line that carries a signed checkpoint."""
    return canonical_json({"checkpoint": note}, "checkpoint") + b"\n"


def export_lines(
    ledger: Ledger, checkpoint: StoredCheckpoint | None = None, *, chunk: int = 1000
) -> Iterator[bytes]:
    """Yield the export in chunks of about ``chunk`` lines.

    ``checkpoint`` defaults to ``ledger.export_checkpoint()``: the latest checkpoint when only
    its own entry follows it, otherwise one signed now.
    """
    checkpoint = checkpoint or ledger.export_checkpoint()
    lines: list[bytes] = []
    for data in ledger.entries(0, checkpoint.size):
        lines.append(data)
        if len(lines) >= chunk:
            lines.append(b"")
            yield b"\n".join(lines)
            lines = []
    if lines:
        lines.append(b"")
        yield b"\n".join(lines)
    yield checkpoint_line(checkpoint.note)


def write_export(
    ledger: Ledger, out: BinaryIO, *, progress: Progress | None = None
) -> StoredCheckpoint:
    """Write the whole export to ``out``; ``progress(done, total)`` is told as it goes."""
    checkpoint = ledger.export_checkpoint()
    done = 0
    for block in export_lines(ledger, checkpoint):
        out.write(block)
        done += block.count(b"\n")
        if progress is not None:
            progress(min(done, checkpoint.size), checkpoint.size)
    return checkpoint
