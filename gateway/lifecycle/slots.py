"""Bundles in the database and the slots that name the active one and its shadow.

A bundle's files live in ``gateway_bundles`` by digest; ``gateway_policy_slots`` says which one
is ``active`` and which one runs in ``shadow`` beside it. Every change of a slot is a ``policy``
ledger entry (mode, digest, the files with their hashes, who, why, what the validation found,
and who signed it when the gateway checks signatures) written in the same transaction as the
slot, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import BUNDLES, POLICY_SLOTS
from gateway.errors import Conflict
from gateway.identity import Identity
from gateway.policy.bundle import (
    Bundle,
    bundle_from_files,
    file_manifest,
)
from gateway.policy.signing import Signer
from ledger.store import Appended, Ledger, Record

__all__ = ["Activation", "BundleStore", "Slot", "SlotName", "write_slot"]

SlotName = Literal["active", "shadow"]


@dataclass(frozen=True)
class Slot:
    """What the active (or shadow) slot holds and who put it there."""

    slot: str
    digest: str | None
    seq: int
    changed_at: str
    changed_by: str
    reason: str


@dataclass(frozen=True)
class Activation:
    """The outcome of an activation: the slot as it is now, and whether this call changed it."""

    slot: Slot
    changed: bool
    validation: dict[str, Any] | None = None


class BundleStore:
    """The bundles in the database and the two slots."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def slots(self) -> dict[str, Slot]:
        """The active and shadow slots, as far as they were ever set."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(POLICY_SLOTS)).all()
        return {
            row.slot: Slot(
                row.slot, row.digest, row.seq, row.changed_at, row.changed_by, row.reason
            )
            for row in rows
        }

    def files(self, digest: str) -> dict[str, bytes]:
        """A stored bundle's files; KeyError if there is none with that digest."""
        with self._engine.connect() as conn:
            data = conn.execute(
                sa.select(BUNDLES.c.files).where(BUNDLES.c.digest == digest)
            ).scalar()
        if data is None:
            raise KeyError(digest)
        return {path: text.encode() for path, text in orjson.loads(data).items()}

    def bundle(self, digest: str) -> Bundle:
        """A stored bundle, loaded."""
        return bundle_from_files(self.files(digest), Path(f"bundle {digest[:12]}"))


class _Raced(Exception):
    """The slot changed between reading it and writing: try again."""


def _text_files(bundle: Bundle) -> bytes:
    return orjson.dumps(
        {path: content.decode("utf-8") for path, content in bundle.files.items()},
        option=orjson.OPT_SORT_KEYS,
    )


def write_slot(
    engine: Engine,
    ledger: Ledger,
    slot: SlotName,
    bundle: Bundle | None,
    *,
    by: Identity,
    reason: str,
    validation: dict[str, Any] | None,
    signer: Signer | None = None,
    only_if_empty: bool = False,
) -> Activation:
    """Put ``bundle`` in ``slot`` (None: empty the shadow slot) with its ``policy`` entry, in
    one transaction. Activating the bundle that shadows stops the shadow in the same entry.
    ``signer``: who signed the bundle, as checked against the bundle key (recorded as the
    entry's ``signature``: key id, algorithm, the key's SHA-256).
    ``only_if_empty``: only if the slot was never set (the first start). A slot that already
    holds the bundle is left alone (``changed`` False, no entry)."""
    store = BundleStore(engine)
    digest = None if bundle is None else bundle.digest
    for _ in range(5):
        slots = store.slots()
        current = slots.get(slot)
        previous = None if current is None else current.digest
        if current is not None and (previous == digest or only_if_empty):
            return Activation(current, False)
        if bundle is None and previous is None:
            raise Conflict("no shadow bundle is running")
        shadow = slots.get("shadow")
        stops_shadow = (
            slot == "active"
            and digest is not None
            and shadow is not None
            and shadow.digest == digest
        )
        body: dict[str, Any] = {
            "mode": slot if bundle is not None else "shadow-stopped",
            "digest": digest if digest is not None else previous,
            "previous": previous,
            "by": by.to_json(),
            "why": reason,
        }
        if bundle is not None:
            body["files"] = file_manifest(bundle.files)
            body["workflows"] = sorted(bundle.workflows)
            body["validation"] = validation
            if signer is not None:
                body["signature"] = signer.to_json()
        if stops_shadow:
            body["shadow_stopped"] = True

        def write(
            conn: sa.Connection,
            appended: list[Appended],
            previous: str | None = previous,
            stops_shadow: bool = stops_shadow,
            had_slot: bool = current is not None,
        ) -> None:
            entry = appended[0]
            now = {
                row.slot: row.digest
                for row in conn.execute(sa.select(POLICY_SLOTS.c.slot, POLICY_SLOTS.c.digest))
            }
            if now.get(slot) != previous or (slot in now) != had_slot:
                raise _Raced
            if stops_shadow != (
                slot == "active" and digest is not None and now.get("shadow") == digest
            ):
                raise _Raced
            if bundle is not None and (
                conn.execute(
                    sa.select(BUNDLES.c.digest).where(BUNDLES.c.digest == bundle.digest)
                ).first()
                is None
            ):
                conn.execute(
                    sa.insert(BUNDLES).values(
                        digest=bundle.digest, files=_text_files(bundle), stored_at=entry.time
                    )
                )
            _set_slot(conn, slot, digest, entry, by.name, reason, slot not in now)
            if stops_shadow:
                why = "the shadow bundle became the active one"
                _set_slot(conn, "shadow", None, entry, by.name, why, False)

        try:
            appended = ledger.append_many(
                [Record("policy", by.name, str(body["digest"]), body)], in_transaction=write
            )
        except _Raced:
            continue
        entry = appended[0]
        return Activation(
            Slot(slot, digest, entry.seq, entry.time, by.name, reason), True, validation
        )
    raise Conflict(f"the {slot} bundle kept changing while this one was written; try again")


def _set_slot(
    conn: sa.Connection,
    slot: str,
    digest: str | None,
    entry: Appended,
    by: str,
    reason: str,
    new: bool,
) -> None:
    values = {
        "digest": digest,
        "seq": entry.seq,
        "changed_at": entry.time,
        "changed_by": by,
        "reason": reason,
    }
    if new:
        conn.execute(sa.insert(POLICY_SLOTS).values(slot=slot, **values))
    else:
        conn.execute(sa.update(POLICY_SLOTS).where(POLICY_SLOTS.c.slot == slot).values(**values))
