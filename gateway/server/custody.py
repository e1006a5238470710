"""The gateway as its own first witness: it keeps the last checkpoint of its ledger in the data
dir (``<data dir>/last-checkpoint``) and serves no database whose ledger does not extend it.

A database restored from an old backup, dropped and made anew, or another deployment's, would
otherwise be taken as it is: a fresh ledger starting again from seq 0, or history that quietly
lost its tail. At start, before the ledger writes anything, and then at every checkpoint
interval, the database's tree must hold the kept one: as many entries at least, and the same
root at the kept size (its own subtree hashes say so, as a consistency proof would). While it
does, the latest checkpoint of the database is kept in its place (written atomically, never a
smaller one). When it does not, the ledger is halted (nothing is appended, not even the key
entry of an empty database), ``/readyz`` names the fault, proposals are 503s, and one log line
says why and how to go on; the fault lasts until the process restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from ledger.checkpoint import Checkpoint, parse_checkpoint_body
from ledger.errors import LedgerError
from ledger.note import parse_note
from ledger.store import Ledger

__all__ = ["FILE_NAME", "Custody"]

FILE_NAME = "last-checkpoint"
log = logging.getLogger("mandate.custody")


class Custody:
    """The kept checkpoint of one data dir, and the fault found against it, if any."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self.fault: str | None = None

    def check(self, ledger: Ledger) -> str | None:
        """Why the database's ledger does not extend the kept checkpoint (and so must not be
        served), or None; a fault found is logged once and stays."""
        if self.fault is None:
            fault = self._compare(ledger)
            if fault is not None:
                self.fault = fault
                log.error("%s", fault)
        return self.fault

    def keep(self, ledger: Ledger) -> None:
        """Keep the database's latest checkpoint, if it is larger than the kept one and nothing
        is wrong."""
        if self.fault is not None:
            return
        latest = ledger.latest_checkpoint()
        kept = self._kept()
        if latest is None or (kept is not None and latest.size <= kept.size):
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(self.path, latest.note)

    def _kept(self) -> Checkpoint | None:
        try:
            note = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return parse_checkpoint_body(parse_note(note).text)

    def _compare(self, ledger: Ledger) -> str | None:
        how = (
            f"restore the database this gateway wrote, or, if this one is meant to be the "
            f"ledger from now on, move {self.path} away and restart"
        )
        try:
            kept = self._kept()
        except (OSError, UnicodeDecodeError, LedgerError) as exc:
            return f"the kept checkpoint {self.path} cannot be read ({exc}); {how}"
        if kept is None:
            return None
        prefix = "the database's ledger does not extend the last checkpoint this gateway kept"
        prefix += f" ({self.path}, size {kept.size}): "
        if kept.origin != ledger.origin:
            return f"{prefix}that one is of the log {kept.origin!r}, not {ledger.origin!r}; {how}"
        size = ledger.size()
        if size < kept.size:
            return (
                f"{prefix}it holds {size} entries, fewer than the {kept.size} signed (a "
                f"restored backup, or a database dropped and made anew); {how}"
            )
        root = ledger.root(kept.size)
        if root != kept.root:
            return (
                f"{prefix}its tree of size {kept.size} has root {root.hex()}, not the root "
                f"{kept.root.hex()} signed (another deployment's database, or history "
                f"rewritten); {how}"
            )
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
