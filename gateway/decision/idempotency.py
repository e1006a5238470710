"""What an idempotency key was answered, found before anything is decided.

A retry (the same owner's key again) is answered as the first time, to a token that could have
proposed it, and costs no decision and no write: the decider looks its key up first, in the
answers this process recorded or looked up lately (``Recent``, a bounded map), else in the
database (``Lookup``: one read of the unique (owner, key) index). The unique constraint in the
ledger's transaction still settles a key decided by two processes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.kept import KeptReads
from gateway.db.tables import ACTIONS
from gateway.decision.answer import Answer, answer_json

__all__ = ["Decided", "Lookup", "Recent"]

Key = tuple[str, str]  # (owner, idempotency key)


@dataclass(frozen=True, slots=True)
class Decided:
    """A key's recorded proposal: its request digest, the token that made it, its answer."""

    digest: str
    executor: str
    answer: Answer


class Recent:
    """The answers of the keys this process decided or looked up lately, the oldest dropped
    first past ``capacity`` (a retry storm follows its first attempts closely)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._decided: dict[Key, Decided] = {}

    def get(self, key: Key) -> Decided | None:
        return self._decided.get(key)

    def put(self, key: Key, decided: Decided) -> None:
        kept = self._decided
        if len(kept) >= self.capacity and key not in kept:
            del kept[next(iter(kept))]  # dicts keep insertion order: the oldest
        kept[key] = decided


class Lookup:
    """Reads a key's record in the database: one indexed read on a connection this thread
    keeps (``gateway.db.kept``), before every decision. ``close`` closes them all."""

    def __init__(self, engine: Engine) -> None:
        self._reads = KeptReads(engine)
        self._read = self._reads.prepare(_BY_IDEMPOTENCY_KEY)

    def __call__(self, key: Key) -> Decided | None:
        """The key's recorded proposal, or None; ``sa.exc.OperationalError`` when the database
        cannot say."""
        rows = self._reads.rows(self._read, {"owner": key[0], "key": key[1]})
        if not rows:
            return None
        digest, executor, response, action_id, verdict, proposal_seq, decision_seq, leaf = rows[0]
        answer = Answer(
            action_id,
            verdict,
            proposal_seq,
            decision_seq,
            answer_json(bytes(response), proposal_seq, decision_seq, leaf),
        )
        return Decided(digest, executor, answer)

    def close(self) -> None:
        """Close every connection this lookup opened, in whichever thread."""
        self._reads.close()


_BY_IDEMPOTENCY_KEY = sa.select(
    ACTIONS.c.request_digest,
    ACTIONS.c.executor,
    ACTIONS.c.response,
    ACTIONS.c.id,
    ACTIONS.c.verdict,
    ACTIONS.c.proposal_seq,
    ACTIONS.c.decision_seq,
    ACTIONS.c.decision_leaf,
).where(ACTIONS.c.owner == sa.bindparam("owner"), ACTIONS.c.idempotency_key == sa.bindparam("key"))
