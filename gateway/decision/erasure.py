"""Erasure: every sealed value of one data subject erased from the ledger, on request (GDPR
art. 17), by `mandate ledger erase` and ``POST /v1/erasures``.

The values a decision sealed (``gateway.decision.personal``) live only in the ledger's sealed
table: the entries hold salted commitments, and no other table of the gateway holds them. So
erasing them there is the whole erasure. The ledger appends an ``erasure`` entry that lists the
fields erased and names the subject only by its keyed digest, and the export still verifies.
What comes after reads the fields as erased: the action's view and pages, a replay (which counts
the decisions it cannot re-decide), and the dispatcher (which carries out no action whose
personal data is gone: ``gateway.execution.dispatcher``).
"""

from __future__ import annotations

import unicodedata

from gateway.errors import DecisionUnavailable, InvalidInput
from gateway.schemas import ErasedField, ErasureView
from ledger.entry import parse_entry
from ledger.errors import EntryError, LedgerError
from ledger.store import Ledger

__all__ = ["erase_subject"]


def erase_subject(ledger: Ledger, data_subject: str, *, actor: str, reason: str) -> ErasureView:
    """Erase every value sealed for ``data_subject``; say what went, and from which actions.

    InvalidInput (naming the field) for a reason that names the subject or that the ledger
    cannot hold; DecisionUnavailable for a ledger that cannot erase (no subject key, another
    key than the values were sealed under, the database failing).
    """
    # Ids were recorded in NFC (the ledger holds no other form): the same id typed otherwise
    # must find them.
    data_subject = unicodedata.normalize("NFC", data_subject)
    if not data_subject.strip():
        raise InvalidInput([("data_subject", "must not be empty")])
    if not reason.strip():
        raise InvalidInput([("reason", "must not be empty")])
    try:
        appended = ledger.erase(data_subject, actor=actor, reason=reason)
        digest = ledger.subject_digest(data_subject)
    except EntryError as exc:
        raise InvalidInput([(exc.path.removeprefix("body."), exc.problem)]) from exc
    except LedgerError as exc:
        raise DecisionUnavailable(
            f"the ledger did not erase: {exc.diagnostics()}", cause="ledger"
        ) from exc
    if appended is None:
        return ErasureView(erasure_seq=None, subject_digest=digest, erased=[], actions=[])
    erased = [ErasedField(**item) for item in parse_entry(appended.data).body["erased"]]
    sealers = ledger.entries_at(field.seq for field in erased)
    actions = sorted({parse_entry(data).subject for data in sealers})
    return ErasureView(
        erasure_seq=appended.seq, subject_digest=digest, erased=erased, actions=actions
    )
