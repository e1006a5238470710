"""A decision's answer as the API sends it: the ``Verdict``'s JSON, encoded once.

The action's row keeps the answer without its ledger block (``stored``); the answer sent is that
encoding with the block spliced in, so a fresh decision, a retry answered from this process's
memory and one answered from the database all send the same bytes, and no model is built on the
way out. ``Answer.model()`` gives the ``Verdict`` where a caller wants one.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.schemas import Verdict, VerdictName

__all__ = ["Answer", "DecisionMade", "answer_json"]


@dataclass(frozen=True, slots=True)
class Answer:
    """A verdict and its ledger seqs, with the JSON of the whole ``Verdict``."""

    action_id: str
    verdict: VerdictName
    proposal_seq: int
    decision_seq: int
    json: bytes

    def model(self) -> Verdict:
        """The ``Verdict`` this answer encodes."""
        return Verdict.model_validate_json(self.json)


@dataclass(frozen=True, slots=True)
class DecisionMade:
    """A fresh decision, durable and answered: what the metrics and the decision log are told
    (never of a retry answered from its record, which decides nothing)."""

    answer: Answer
    workflow: str
    case_type: str
    reason_codes: tuple[str, ...]
    seconds: float


def answer_json(stored: bytes, proposal_seq: int, decision_seq: int, leaf_hash: str) -> bytes:
    """``stored`` (an action row's answer: a JSON object without ``ledger``) with its ledger
    block: where the proposal and the decision stand and the decision's leaf hash (hex)."""
    ledger = orjson.dumps(
        {"proposal_seq": proposal_seq, "decision_seq": decision_seq, "leaf_hash": leaf_hash}
    )
    return b"".join((stored[:-1], b',"ledger":', ledger, b"}"))
