"""What an idempotency key was answered, found before anything is decided.

A retry (the same owner's key again) is answered as the first time, to a token that could have
proposed it, and costs no decision and no write: the decider looks its key up first, in the
answers this process recorded or looked up lately (``Recent``, a bounded map), else in the
database (``lookup``: one read of the unique (owner, key) index). The unique constraint in the
ledger's transaction still settles a key decided by two processes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import ACTIONS
from gateway.decision.answer import Answer, answer_json

__all__ = ["Decided", "Recent", "lookup"]

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


def lookup(engine: Engine, key: Key) -> Decided | None:
    """The key's recorded proposal in the database, or None."""
    with engine.connect() as conn:
        row = conn.execute(_BY_IDEMPOTENCY_KEY, {"owner": key[0], "key": key[1]}).first()
    if row is None:
        return None
    answer = Answer(
        row.id,
        row.verdict,
        row.proposal_seq,
        row.decision_seq,
        answer_json(bytes(row.response), row.proposal_seq, row.decision_seq, row.decision_leaf),
    )
    return Decided(row.request_digest, row.executor, answer)


# Built once: constructing and cache-keying a SQLAlchemy select per proposal costs more than
# running it.
_BY_IDEMPOTENCY_KEY = sa.select(
    ACTIONS.c.request_digest,
    ACTIONS.c.executor,
    ACTIONS.c.response,
    ACTIONS.c.id,
    ACTIONS.c.verdict,
    ACTIONS.c.proposal_seq,
    ACTIONS.c.decision_seq,
    ACTIONS.c.decision_leaf,
).where(
    ACTIONS.c.owner == sa.bindparam("owner"),
    ACTIONS.c.idempotency_key == sa.bindparam("key"),
)
