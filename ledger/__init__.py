"""Mandate's ledger: a verifiable, signed, append-only log that a regulator checks offline.

It imports nothing from ``gateway`` or ``adapters``. The verifier side (``ledger.verify``,
``ledger.merkle``, ``ledger.note``, ``ledger.checkpoint``, ``ledger.cosignature``, and the
witness, ``ledger.witness``) needs no database; the store side (``ledger.store`` and the
writer behind it) adds SQLAlchemy and is loaded only when asked for.

    from ledger import Ledger, create_engine
    from ledger.verify import verify_export
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger.errors import LedgerError, VerificationError

if TYPE_CHECKING:
    from ledger.database import create_engine
    from ledger.store import Appended, Ledger, Record, StoredCheckpoint

__all__ = [
    "Appended",
    "Ledger",
    "LedgerError",
    "Record",
    "StoredCheckpoint",
    "VerificationError",
    "create_engine",
]

_LAZY = {
    "Appended": "ledger.store",
    "Ledger": "ledger.store",
    "Record": "ledger.store",
    "StoredCheckpoint": "ledger.store",
    "create_engine": "ledger.database",
}


def __getattr__(name: str) -> Any:
    # The store pulls in SQLAlchemy; a verifier that never needs it should not pay for it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ledger' has no attribute {name!r}")
