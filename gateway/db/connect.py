"""Opening the database and the ledger that a gateway process or CLI command works on."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from gateway.settings import Settings
from ledger.database import create_engine
from ledger.keys import load_or_create_signing_key
from ledger.note import NoteSigner
from ledger.store import Ledger

__all__ = ["open_engine", "open_ledger", "signing_key"]


def open_engine(settings: Settings) -> Engine:
    """The engine for the configured database; creates the data dir for SQLite."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return create_engine(
        settings.database, schema=settings.database_schema, timeouts=settings.database_timeouts
    )


def signing_key(settings: Settings) -> NoteSigner:
    """The checkpoint signing key, made (mode 0600) on first use."""
    return load_or_create_signing_key(settings.key_path, settings.ledger_origin)


def open_ledger(settings: Settings, engine: Engine | None = None) -> Ledger:
    """An open ledger that appends and signs with this process's key."""
    return Ledger(
        engine or open_engine(settings),
        origin=settings.ledger_origin,
        signer=signing_key(settings),
        checkpoint_every=settings.checkpoint_every,
        checkpoint_interval=settings.checkpoint_interval,
    ).open()
