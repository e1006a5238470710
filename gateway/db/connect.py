"""Opening the database and the ledger that a gateway process or CLI command works on.

A gateway makes what it lacks on its first start: the data dir, the SQLite file, the signing
key and the subject key. A command that only reads (``gateway.cli.local``) passes
``create=False`` and is refused instead, so that it never hands anyone a new, empty ledger.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine

from gateway.settings import Settings
from ledger.cosignature import CosignatureVerifier
from ledger.database import create_engine
from ledger.errors import KeyFileError, LedgerError
from ledger.keys import (
    copy_signing_key,
    generate_signing_key,
    load_or_create_signing_key,
    load_or_create_subject_key,
    load_signing_key,
    load_subject_key,
)
from ledger.note import NoteSigner
from ledger.store import Ledger, StoredCheckpoint
from ledger.verify import load_witness_keys
from ledger.writer import Keyring

__all__ = [
    "keyring",
    "open_engine",
    "open_ledger",
    "rotate_signing_key",
    "signing_key",
    "subject_key",
    "witness_keys",
]


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


def _next_key_path(settings: Settings) -> Path:
    """Where a rotation puts the new key until the log has it: beside the current one."""
    return settings.key_path.with_name(f"{settings.key_path.name}.next")


def keyring(settings: Settings) -> Keyring:
    """The signer of a key the log rotated to, found in the key file or, while a rotation
    installs it, beside it: how every process on one database takes up a new key."""

    def signer_for(vkey: str) -> NoteSigner | None:
        # The key file a second time: a rotation that finishes while this looks renames
        # <key>.next to <key> between the first two reads.
        for path in (settings.key_path, _next_key_path(settings), settings.key_path):
            try:
                signer = load_signing_key(path, settings.ledger_origin)
            except LedgerError:
                continue
            if signer.vkey == vkey:
                return signer
        return None

    return signer_for


def rotate_signing_key(
    settings: Settings, ledger: Ledger, new_key: Path | None = None
) -> tuple[NoteSigner, StoredCheckpoint | None]:
    """Hand the log over to a new signing key: made here, or the key at ``new_key`` (copied).

    1. The new key is written beside the current one (``<key>.next``, mode 0600).
    2. ``Ledger.rotate_key``: a ``key`` entry names it, and the old key signs the hand-over
       checkpoint. From then on every process on the database signs with the new key from
       its next checkpoint on (``keyring``).
    3. The old key file is kept as ``<key>.retired-<key id>``, and the new one takes its name.

    A rotation cut short after step 2 is finished by the next one (the new key is already the
    log's: no second hand-over; the checkpoint returned is then None). Raises KeyFileError.
    """
    old = load_signing_key(settings.key_path, settings.ledger_origin)
    staged = _next_key_path(settings)
    current = ledger.keys()[-1][1]
    if staged.exists():
        new = load_signing_key(staged, settings.ledger_origin)
        if new.vkey != current:
            raise KeyFileError(
                f"{staged} holds a key the log never rotated to (a rotation that stopped "
                "before its key entry): move it away, then rotate again"
            )
        handover = None
    else:
        if new_key is None:
            new = generate_signing_key(staged, settings.ledger_origin)
        else:
            new = copy_signing_key(new_key, staged, settings.ledger_origin)
        handover = ledger.rotate_key(new)
    key_path = settings.key_path
    retired = key_path.with_name(f"{key_path.name}.retired-{old.key_id.hex()}")
    if old.vkey != new.vkey and not retired.exists():
        os.link(key_path, retired)
    os.replace(staged, key_path)
    return new, handover


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
        keyring=keyring(settings),
        commit_delay=settings.commit_delay_ms / 1000,
    )
    if halted is not None:
        ledger.halt(halted)
    return ledger.open()
