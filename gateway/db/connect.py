"""Opening the database and the ledger that a gateway process or CLI command works on.

A gateway makes what it lacks on its first start: the data dir, the SQLite file, the signing
key and the subject key. A command that only reads (``gateway.cli.local``) passes
``create=False`` and is refused instead, so that it never hands anyone a new, empty ledger.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from gateway.settings import Settings
from ledger.cosignature import CosignatureVerifier
from ledger.database import create_engine
from ledger.keys import (
    load_or_create_signing_key,
    load_or_create_subject_key,
    load_signing_key,
    load_subject_key,
)
from ledger.note import NoteSigner
from ledger.store import Ledger
from ledger.verify import load_witness_keys

__all__ = ["open_engine", "open_ledger", "signing_key", "subject_key", "witness_keys"]


def open_engine(settings: Settings, *, create: bool = True) -> Engine:
    """The engine for the configured database; with ``create``, makes the data dir for SQLite."""
    if create and settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return create_engine(
        settings.database, schema=settings.database_schema, timeouts=settings.database_timeouts
    )


def signing_key(settings: Settings, *, create: bool = True) -> NoteSigner:
    """The checkpoint signing key; with ``create``, made (mode 0600) on first use."""
    load = load_or_create_signing_key if create else load_signing_key
    return load(settings.key_path, settings.ledger_origin)


def subject_key(settings: Settings, *, create: bool = True) -> bytes:
    """The subject key, kept beside the signing key; with ``create``, made on first use."""
    load = load_or_create_subject_key if create else load_subject_key
    return load(settings.subject_key_path)


def witness_keys(settings: Settings) -> tuple[CosignatureVerifier, ...]:
    """The witnesses whose cosignatures the gateway keeps (none when no file is set).

    Raises NoteError naming the line that is not a witness's verifier key, OSError if the file
    cannot be read: a gateway told to trust witnesses does not start without them."""
    if settings.witness_keys is None:
        return ()
    return tuple(load_witness_keys(settings.witness_keys))


def open_ledger(
    settings: Settings, engine: Engine | None = None, *, halted: str | None = None
) -> Ledger:
    """An open ledger as a gateway opens it: it appends and signs with this process's key, and
    seals and erases personal data with its subject key; keys it lacks are made. ``halted``:
    it appends nothing, for that reason (``Ledger.halt``)."""
    ledger = Ledger(
        engine or open_engine(settings),
        origin=settings.ledger_origin,
        signer=signing_key(settings),
        checkpoint_every=settings.checkpoint_every,
        checkpoint_interval=settings.checkpoint_interval,
        subject_key=subject_key(settings),
    )
    if halted is not None:
        ledger.halt(halted)
    return ledger.open()
