"""The decider: one proposal from validation to a durable verdict.

``propose`` validates, runs the steps (``gateway.decision.steps.judge``) at the case type's
level in force, and records the proposal and the decision in the ledger with every row beside
them (``gateway.decision.records``) in one transaction; it answers once they are durable. An
idempotency key already used is answered as it was the first time, to a token that could have
made the proposal, and written nowhere: its key is looked up before anything is decided
(``gateway.decision.idempotency``). Every input of a decision (the proposal, the executor,
the case type, the level, the figures, the clock, the action id) is recorded with it, so
replaying the ledger reproduces every verdict (``gateway.decision.redecide``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.autonomy.levels import LEVEL_NAMES, AutonomyBook
from gateway.decision.answer import Answer, DecisionMade, answer_json
from gateway.decision.history import HistoryBook
from gateway.decision.idempotency import Decided, Lookup, Recent
from gateway.decision.personal import Personal, find_personal
from gateway.decision.records import Judgement, decision_rows
from gateway.decision.steps import (
    UNKNOWN,
    Judged,
    Unknown,
    admit,
    input_digest,
    judge,
    recorded_proposal,
    rego_output,
    request_digest,
    validate,
)
from gateway.errors import Conflict, DecisionUnavailable, InvalidInput
from gateway.execution.routing import Routing, handover
from gateway.identity import Identity, may_act_for
from gateway.policy.active import ActivePolicy, InForce
from gateway.policy.rego import package_of
from gateway.schemas import ApprovalRef, Proposal, Reason, Verdict
from ledger.entry import format_time
from ledger.errors import EntryError, LedgerError
from ledger.store import Appended, Ledger, Record

__all__ = ["Decider"]

log = logging.getLogger("mandate")


class _RandomHex:
    """Random hex digits from ``os.urandom`` read 4 KiB at a time: one system call for some 170
    ids, not one each (``secrets`` reads per call). Emptied in a forked child, which must never
    hand out its parent's."""

    _CHUNK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def take(self, size: int) -> str:
        """``size`` random bytes, in hex."""
        with self._lock:
            at = self._at
            if at + size > len(self._buffer):
                self._buffer, at = os.urandom(self._CHUNK), 0
            self._at = at + size
            return self._buffer[at : at + size].hex()

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0


_random_hex = _RandomHex()


def _new_id(prefix: str) -> str:
    return f"{prefix}_{_random_hex.take(12)}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Decider:
    """Runs a proposal from validation to a durable verdict. Dependencies come in here."""

    engine: Engine
    ledger: Ledger
    in_force: InForce
    autonomy: AutonomyBook
    routing: Routing = field(default_factory=lambda: Routing({}))
    on_hold: Callable[[Verdict, Proposal, Identity], None] | None = None
    on_execute: Callable[[], None] | None = None
    clock: Callable[[], dt.datetime] = _utcnow
    new_id: Callable[[str], str] = _new_id
    # The shadow bundle's hook (``gateway.lifecycle.activation.ShadowRunner.offer``): told of
    # every fresh decision once it is durable and answered; it only queues, and what it raises
    # is logged.
    shadow: Callable[[Answer], None] | None = None
    # The history signals (input.history); None: decisions see none and record none.
    history: HistoryBook | None = None
    # Told of every fresh decision once it is durable (the metrics and the decision log);
    # what it raises propagates, so it must not fail.
    on_decided: Callable[[DecisionMade], None] | None = None
    _inflight: dict[tuple[str, str], tuple[str, Identity, asyncio.Future[Answer]]] = field(
        default_factory=dict
    )
    # The answers of keys decided lately: a retry is answered from here, decided again never.
    _recent: Recent = field(default_factory=Recent)
    _lookup: Lookup = field(init=False)

    def __post_init__(self) -> None:
        self._lookup = Lookup(self.engine)

    def close(self) -> None:
        """Close the connections the idempotency look-ups and the history reads opened."""
        self._lookup.close()
        if self.history is not None:
            self.history.close()

    async def propose(self, identity: Identity, proposal: Proposal) -> Verdict:
        """``decide``, answered as a ``Verdict`` (the API sends ``Answer.json`` as it is)."""
        return (await self.decide(identity, proposal)).model()

    async def decide(self, identity: Identity, proposal: Proposal) -> Answer:
        """Validate, permit, classify, evaluate, decide and record; answer once the ledger has
        it. A key decided before is answered from its record, and nothing is decided."""
        started = time.perf_counter()
        if self.in_force.unavailable is not None:
            raise DecisionUnavailable(self.in_force.unavailable)
        policy = self.in_force.policy
        validate(proposal, policy)
        key = (identity.owner, proposal.idempotency_key)
        # The proposal as the ledger keeps it, and its personal data: found once, for the
        # request digest and for the judgement.
        kept = recorded_proposal(proposal)
        personal = find_personal(policy.bundle.workflows[proposal.workflow], kept)
        digest = self._request_digest(kept, personal)
        earlier = self._inflight.get(key)
        if earlier is not None:
            # The same key is being decided right now: answer what that decision answers, to
            # a token that could have proposed it (another learns nothing, not even its fate).
            if earlier[1].standing != identity.standing:
                raise _conflict(key[1], other_standing=True)
            answer = await asyncio.shield(earlier[2])
            if earlier[0] != digest:
                raise _conflict(key[1])
            return answer
        admit(policy.permitter, identity, proposal)  # refused as the first attempt would be
        decided = self._decided(key)
        if decided is not None:
            return self._retried(decided, key[1], digest, identity)
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (digest, identity, waiter)
        try:
            try:
                answer = await self._decide_and_record(
                    identity, proposal, (kept, personal), digest, policy, started
                )
            except DecisionUnavailable:
                try:
                    # Decided meanwhile by another process: its answer stands.
                    recorded = self._recorded(key, digest, identity)
                except sa.exc.SQLAlchemyError:
                    recorded = None  # the database is down: say why the decision is not made
                if recorded is None:
                    raise
                answer = recorded
        except BaseException as exc:
            waiter.set_exception(exc)
            waiter.exception()  # mark retrieved: duplicates that never came must not warn
            raise
        else:
            waiter.set_result(answer)
            return answer
        finally:
            del self._inflight[key]

    def _decided(self, key: tuple[str, str]) -> Decided | None:
        """The key's recorded proposal: in this process's recent answers, else the database's
        (then kept among the recent ones). None when the database cannot say: the decision is
        then made, and the unique key in its transaction catches a retry."""
        decided = self._recent.get(key)
        if decided is None:
            try:
                decided = self._lookup(key)
            except sa.exc.SQLAlchemyError:
                return None
            if decided is not None:
                self._recent.put(key, decided)
        return decided

    def _retried(self, decided: Decided, key: str, digest: str, identity: Identity) -> Answer:
        """A recorded key's answer, or Conflict if the body differs or ``identity`` could not
        have proposed it."""
        answer = decided.answer
        if not may_act_for(self.ledger, identity, decided.executor, answer.proposal_seq):
            raise _conflict(key, other_standing=True)
        if decided.digest != digest:
            raise _conflict(key)
        return answer

    def _request_digest(self, recorded: dict[str, Any], personal: Personal | None) -> str:
        """The proposal's request digest, its personal data counted by keyed digest."""
        if personal is None:
            return request_digest(recorded)
        try:
            return request_digest(recorded, personal, self.ledger.subject_digest)
        except LedgerError as exc:  # a ledger with no subject key: nothing can be sealed
            raise DecisionUnavailable(
                f"the ledger cannot seal personal data: {exc}", cause="ledger"
            ) from exc

    def _offer_shadow(self, answer: Answer) -> None:
        """Hand a fresh decision to the shadow bundle, if one runs: never the live verdict's
        business, so nothing it does can fail or change it."""
        if self.shadow is None:
            return
        try:
            self.shadow(answer)
        except Exception:
            log.exception("the shadow bundle was not told of %s", answer.action_id)

    def _recorded(self, key: tuple[str, str], digest: str, identity: Identity) -> Answer | None:
        """The earlier answer to this idempotency key in the database, or Conflict if the body
        differs or ``identity`` could not have proposed it."""
        decided = self._lookup(key)
        if decided is None:
            return None
        self._recent.put(key, decided)
        return self._retried(decided, key[1], digest, identity)

    def judged(
        self,
        identity: Identity,
        proposal: Proposal,
        policy: ActivePolicy,
        moment: dt.datetime,
        *,
        admitted: str | None = None,
        admitted_history: dict[str, Any] | None = None,
        found: tuple[dict[str, Any], Personal | Unknown | None] | None = None,
    ) -> Judged:
        """``judge`` (gateway.decision.steps), the policy's check, at the case type's level in
        force and with its figures and history signals (see ``judgement``)."""
        recorded, personal = (recorded_proposal(proposal), UNKNOWN) if found is None else found
        workflow = proposal.workflow

        def standing(case_type: str) -> tuple[int, str, dict[str, int]]:
            level, source = self.autonomy.level(policy.bundle, workflow, case_type)
            stats = self.autonomy.stats(policy.bundle, workflow, case_type, level, moment)
            return level, source, stats

        def signals(case_type: str) -> dict[str, Any] | None:
            if admitted is not None:
                return admitted_history
            return self._history(identity, recorded, policy, case_type, moment)

        return judge(
            policy,
            identity,
            proposal,
            recorded,
            format_time(moment),
            standing,
            signals,
            admitted=admitted,
            personal=personal,
        )

    def judgement(
        self,
        identity: Identity,
        proposal: Proposal,
        policy: ActivePolicy,
        moment: dt.datetime,
        *,
        admitted: str | None = None,
        admitted_history: dict[str, Any] | None = None,
        found: tuple[dict[str, Any], Personal | Unknown | None] | None = None,
    ) -> Judgement:
        """``judged``, with the trace that shows each step and, for a hold, its approval: what
        the ledger records. ``admitted``: a held proposal re-evaluated under a new bundle, as
        the case type it was decided as; it is decided with the history its first decision
        recorded (``admitted_history``), as of when it was proposed. ``found``: the proposal as
        recorded and its personal data, if the caller has them already."""
        if found is None:
            found = (recorded_proposal(proposal), UNKNOWN)
        judged = self.judged(
            identity,
            proposal,
            policy,
            moment,
            admitted=admitted,
            admitted_history=admitted_history,
            found=found,
        )
        now, workflow, recorded = format_time(moment), proposal.workflow, found[0]
        decision, classification = judged.decision, judged.classification
        sealed = () if judged.personal is None else judged.personal.paths
        rules = ("case_type", "deny", "hold") if classification.source == "classified" else ()
        # The trace as the answer and the ledger hold it (``Trace``'s fields, in its order),
        # built as plain data: the schema documents it, the SDK validates it.
        trace = {
            "casbin": judged.permitted.trace(),
            "rego": {
                "engine": policy.engine.name,
                "version": policy.engine.version,
                "query": [f"{package_of(workflow)}.{rule}" for rule in rules or ("deny", "hold")],
                "input_digest": input_digest(judged.input, sealed),
                "output": None if judged.rego is None else rego_output(judged.rego),
            },
            "autonomy": {
                "level": judged.level,
                "name": LEVEL_NAMES[judged.level],
                "source": judged.level_source,
                "case_type": classification.case_type,
                "case_type_source": classification.source,
            },
            "bundle_digest": policy.bundle.digest,
            "decided_at": now,
            "recommendation": decision.recommendation,
        }
        approval = None
        if decision.verdict == "hold":
            config = policy.bundle.workflows[workflow]
            approval = ApprovalRef(
                id=self.new_id("apr"),
                quorum=config.quorum(classification.case_type),
                expires_at=format_time(moment + dt.timedelta(hours=config.approval_ttl_hours)),
            )
        return Judgement(
            decision,
            trace,
            judged.stats,
            approval,
            recorded,
            classification.case_type,
            judged.history,
            judged.personal,
        )

    def _history(
        self,
        identity: Identity,
        recorded: dict[str, Any],
        policy: ActivePolicy,
        case_type: str,
        moment: dt.datetime,
    ) -> dict[str, Any] | None:
        """``input.history`` for a fresh decision; the tables unreadable fail closed."""
        if self.history is None:
            return None
        terms = self.autonomy.terms(policy.bundle, recorded["workflow"], case_type)
        window = (terms.window_decisions, terms.window_days)
        try:
            return self.history.signals(identity.name, recorded, case_type, window, moment)
        except sa.exc.SQLAlchemyError as exc:
            raise DecisionUnavailable(
                f"the history signals cannot be read: {exc}", cause="database"
            ) from exc

    async def _decide_and_record(
        self,
        identity: Identity,
        proposal: Proposal,
        found: tuple[dict[str, Any], Personal | None],
        digest: str,
        policy: ActivePolicy,
        started: float,
    ) -> Answer:
        action_id = self.new_id("act")
        judgement = self.judgement(identity, proposal, policy, self.clock(), found=found)
        decision, trace, approval = judgement.decision, judgement.trace, judgement.approval
        proposal_body = {
            "action_id": action_id,
            "proposal": judgement.recorded,
            "executor": identity.to_json(),
            "request_digest": digest,
        }
        personal = judgement.personal
        sealed: tuple[str, ...] = ()
        data_subject = None
        if personal is not None:
            # Which fields the entry seals (the ledger puts commitments in their place), so a
            # replay rebuilds the input digest without the bundle that decided.
            proposal_body["sealed"] = list(personal.paths)
            sealed, data_subject = personal.entry_paths, personal.data_subject
        adapter = None
        if decision.verdict != "reject":
            adapter = self.routing.route(identity.name, proposal.workflow)[0]
        answer = {
            "action_id": action_id,
            "verdict": decision.verdict,
            "reasons": [_reason(r) for r in decision.reasons],
            "warnings": [_reason(r) for r in decision.warnings],
            "trace": trace,
            "approval": None if approval is None else approval.model_dump(),
            "execution": None if adapter is None else {"adapter": adapter},
        }
        autonomy = self.autonomy
        # The audit sample is drawn now, by the action id, and recorded with the decision.
        audit = autonomy.audit(
            policy.bundle,
            proposal.workflow,
            judgement.case_type,
            trace["autonomy"]["level"],
            decision.verdict,
            action_id,
        )
        decision_body = answer | {"stats": judgement.stats}
        if judgement.history is not None:
            decision_body["history"] = judgement.history
        if audit is not None:
            decision_body["audit"] = audit
        # Every entry names the data subject: the ledger refuses one that holds its id in clear.
        records = [
            Record("proposal", identity.name, action_id, proposal_body, sealed, data_subject),
            Record("decision", "mandate", action_id, decision_body, (), data_subject),
        ]
        if decision.verdict == "execute" and adapter == "callback":
            # Handed to the executor in the decision's own transaction: nothing for the
            # dispatcher to claim, no second write competing for the ledger's lock.
            records.append(
                Record("execution", "mandate", action_id, handover(action_id), (), data_subject)
            )
        # What a retry with the same idempotency key is answered; the ledger block is rebuilt.
        stored = orjson.dumps(answer)

        def rows(appended: list[Appended]) -> list[tuple[sa.Table, dict[str, Any]]]:
            return decision_rows(
                identity,
                proposal,
                digest,
                judgement,
                action_id,
                stored,
                appended,
                policy,
                self.routing,
                audit=audit,
                figures=autonomy.figures is not None,
            )

        try:
            appended = await self.ledger.append_many_async(records, rows=rows)
        except EntryError as exc:
            if personal is None or exc.path != "data_subject":
                raise DecisionUnavailable(
                    f"the ledger did not record the decision: {exc}", cause="ledger"
                ) from exc
            # Its id is a value the decision holds elsewhere (a reason code, a name): sealed in
            # one place, it would stay in clear in another.
            problem = "is a value the decision holds elsewhere in clear; it cannot be sealed"
            raise InvalidInput([(personal.subject_path, problem)]) from exc
        except LedgerError as exc:
            try:
                raced = self._recorded((identity.owner, proposal.idempotency_key), digest, identity)
            except sa.exc.SQLAlchemyError:
                raced = None  # the database is down too: the ledger's failure is the reason
            if raced is not None:
                return raced
            raise DecisionUnavailable(
                f"the ledger did not record the decision: {exc}", cause="ledger"
            ) from exc
        autonomy.decided(
            proposal.workflow,
            judgement.case_type,
            decision.verdict,
            warned=bool(decision.warnings),
        )
        if self.history is not None:
            self.history.decided(
                identity.name, judgement.recorded, judgement.case_type, decision.verdict
            )
        proposal_seq, decision_seq = appended[0].seq, appended[1].seq
        leaf = appended[1].leaf_hash.hex()
        answered = Answer(
            action_id,
            decision.verdict,
            proposal_seq,
            decision_seq,
            answer_json(stored, proposal_seq, decision_seq, leaf),
        )
        key = (identity.owner, proposal.idempotency_key)
        self._recent.put(key, Decided(digest, identity.name, answered))
        if self.on_decided is not None:
            codes = tuple(reason.code for reason in decision.reasons)
            seconds = time.perf_counter() - started
            self.on_decided(
                DecisionMade(answered, proposal.workflow, judgement.case_type, codes, seconds)
            )
        if decision.verdict == "execute" and len(records) == 2 and self.on_execute is not None:
            self.on_execute()
        elif decision.verdict == "hold" and self.on_hold is not None:
            self.on_hold(answered.model(), proposal, identity)
        self._offer_shadow(answered)
        return answered


def _reason(reason: Reason) -> dict[str, str]:
    """A reason as answered and recorded (``Reason.model_dump()``, without pydantic's cost)."""
    return {"code": reason.code, "message": reason.message, "source": reason.source}


def _conflict(key: str, *, other_standing: bool = False) -> Conflict:
    """The 409 for a key used before. It names no action: several tokens share an owner's
    keys, and only those of the proposer's standing may learn what a key was used for."""
    used = (
        "by another token of your owner, with another role or workflow binding"
        if other_standing
        else "for a different proposal"
    )
    return Conflict(f"idempotency key {key!r} was used {used}; use a new key for a new proposal")
