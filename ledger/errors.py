"""One exception tree for everything the ledger can refuse or detect.

Every error explains itself through ``diagnostics()``, so the CLIs can print it as it is and map
the class to an exit code. A proof or signature that does not match fails in one way; input that
is malformed (wrong lengths, bad encodings) fails in another, with what was got and wanted.
"""

from __future__ import annotations

__all__ = [
    "EntryError",
    "KeyFileError",
    "LedgerError",
    "NoteError",
    "ProofError",
    "RootMismatchError",
    "SignatureError",
    "StorageError",
    "VerificationError",
]


class LedgerError(Exception):
    """Base of every error the ledger raises."""

    def diagnostics(self) -> str:
        """A message a person can act on."""
        return str(self)


class EntryError(LedgerError, ValueError):
    """A value that may not enter the ledger (a float, a non-NFC string, an unsafe integer)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class ProofError(LedgerError, ValueError):
    """A proof request or proof that is malformed: an index out of range, a wrong length."""


class RootMismatchError(LedgerError):
    """A recomputed Merkle root differs from the one expected."""

    def __init__(self, expected: bytes, calculated: bytes) -> None:
        self.expected = expected
        self.calculated = calculated
        super().__init__(f"root mismatch: expected {expected.hex()}, calculated {calculated.hex()}")


class NoteError(LedgerError, ValueError):
    """A signed note, checkpoint or verifier key that cannot be parsed."""


class SignatureError(LedgerError):
    """A signature that does not verify, or one made by a key nobody trusts."""


class KeyFileError(LedgerError):
    """The signing key file is missing, unreadable, malformed or too widely readable."""


class StorageError(LedgerError):
    """The database refused or failed an operation; nothing was appended."""


class VerificationError(LedgerError):
    """An export that fails verification; ``seq`` names the first bad entry when there is one."""

    def __init__(self, seq: int | None, problem: str) -> None:
        self.seq = seq
        self.problem = problem
        where = f"seq {seq}: " if seq is not None else ""
        super().__init__(f"{where}{problem}")
