"""Identities: bearer tokens, stored hashed, shown once; ``authenticate`` is the pipeline's
first step.

A token is ``mdt_`` followed by 32 random bytes in base64url. Its SHA-256 is what the database
keeps: the token has enough entropy that a slow hash would add nothing but latency.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import TOKENS
from gateway.errors import Unauthenticated
from ledger.database import WRITE
from ledger.entry import format_time
from ledger.store import Ledger

__all__ = [
    "GATEWAY_ROLES",
    "PERSON_ROLES",
    "WITNESS_ROLE",
    "Identity",
    "TokenBook",
    "TokenEntry",
    "authenticate",
    "may_act_for",
]

# Roles held by people; executor roles come from the Casbin policy.
PERSON_ROLES = ("approver", "governor", "auditor", "policy-admin")
# A witness is another party's program: it reads checkpoints and consistency proofs and posts
# its cosignatures (``python -m ledger witness``), nothing else.
WITNESS_ROLE = "witness"
# The roles the gateway names itself; every other role is an executor role of the bundle.
GATEWAY_ROLES = (*PERSON_ROLES, WITNESS_ROLE)
_PREFIX = "mdt_"
_CACHE_SECONDS = 1.0  # a revoked token stops working everywhere within this long


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the token's name, role, optional workflow binding and owner."""

    token_id: str
    name: str
    role: str
    workflow: str | None
    owner: str

    @property
    def standing(self) -> tuple[str, str, str | None]:
        """What the token may do, apart from which token it is: owner, role and workflow
        binding. Another token of the same standing (a rotated one) could have made the same
        proposals, so it is answered their idempotency keys and reports their outcomes."""
        return (self.owner, self.role, self.workflow)

    def to_json(self) -> dict[str, str | None]:
        """As recorded in ledger entries."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "role": self.role,
            "workflow": self.workflow,
            "owner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A token as `mandate token list` shows it."""

    token_id: str
    name: str
    role: str
    workflow: str | None
    owner: str
    created_at: str
    revoked_at: str | None


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenBook:
    """Tokens in the database, with a one-second cache in front of lookups."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[bytes, tuple[float, Identity | None]] = {}

    def create(
        self, *, name: str, role: str, workflow: str | None = None, owner: str | None = None
    ) -> tuple[str, Identity]:
        """Make a token; return it (shown once) and the identity it stands for."""
        token = _PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        identity = Identity(
            token_id=f"tok_{secrets.token_hex(8)}",
            name=name,
            role=role,
            workflow=workflow,
            owner=owner or name,
        )
        # A write transaction from the start (BEGIN IMMEDIATE on SQLite): a read that turned
        # into a write would fail at once, not wait, if another process wrote in between.
        with (
            self._engine.connect().execution_options(**{WRITE: True}) as conn,
            conn.begin(),
        ):
            exists = conn.execute(sa.select(TOKENS.c.id).where(TOKENS.c.name == name)).first()
            if exists is not None:
                raise ValueError(f"a token named {name!r} exists already; pick another name")
            conn.execute(
                sa.insert(TOKENS).values(
                    id=identity.token_id,
                    name=name,
                    role=role,
                    workflow=workflow,
                    owner=identity.owner,
                    token_hash=_hash(token),
                    created_at=format_time(dt.datetime.now(dt.UTC)),
                    revoked_at=None,
                )
            )
        return token, identity

    def revoke(self, name: str) -> bool:
        """Revoke the token with this name; False if there is no such live token."""
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.update(TOKENS)
                .where(TOKENS.c.name == name, TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=format_time(dt.datetime.now(dt.UTC)))
            )
        self._cache.clear()
        return bool(result.rowcount)

    def listing(self) -> list[TokenEntry]:
        """Every token, live and revoked, oldest first: what it is, never its secret (only the
        hash is kept, and not even that is listed)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    TOKENS.c.id,
                    TOKENS.c.name,
                    TOKENS.c.role,
                    TOKENS.c.workflow,
                    TOKENS.c.owner,
                    TOKENS.c.created_at,
                    TOKENS.c.revoked_at,
                ).order_by(TOKENS.c.created_at, TOKENS.c.name)
            ).all()
        return [TokenEntry(*row) for row in rows]

    def lookup(self, token: str) -> Identity | None:
        """The live identity of a token, or None."""
        digest = _hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(TOKENS).where(
                    TOKENS.c.token_hash == digest, TOKENS.c.revoked_at.is_(None)
                )
            ).first()
        identity = (
            None if row is None else Identity(row.id, row.name, row.role, row.workflow, row.owner)
        )
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (now + _CACHE_SECONDS, identity)
        return identity


def authenticate(tokens: TokenBook, authorization: str | None) -> Identity:
    """Step 1: who is calling? ``Authorization: Bearer <token>``, or Unauthenticated saying
    why not."""
    if not authorization:
        raise Unauthenticated("no token: send Authorization: Bearer <token> (mandate token create)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    identity = tokens.lookup(token.strip())
    if identity is None:
        raise Unauthenticated("unknown or revoked token")
    return identity


def may_act_for(ledger: Ledger, identity: Identity, executor: str, proposal_seq: int) -> bool:
    """Whether ``identity`` could have made the proposal recorded at ``proposal_seq`` by the
    token named ``executor``: that token, or another of its standing, as the proposal entry
    records it. Only such a token is answered a retried idempotency key, reports the action's
    outcome or withdraws it; the ledger is read only for a token of another name."""
    if identity.name == executor:  # names are unique, and a token's standing never changes
        return True
    recorded = ledger.entry(proposal_seq).body["executor"]
    return identity.standing == (recorded["owner"], recorded["role"], recorded["workflow"])
