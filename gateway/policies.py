"""The policy lifecycle: bundles kept in the database, activation, shadow mode, and the watcher
that keeps every gateway process on the active bundle.

- **Storage.** A bundle's files live in ``gateway_bundles`` by digest; ``gateway_policy_slots``
  says which one is ``active`` and which one runs in ``shadow`` beside it. Every change is a
  ``policy`` ledger entry (mode, digest, the files with their hashes, who, why, what the
  validation found) written in the same transaction as the slot, so the two never disagree.
- **Activation** (``PolicyLifecycle.activate``; ``POST /v1/policies``, ``mandate policy
  activate``) checks the bundle first (``gateway.policy.checks``: it loads, its Rego tests and
  decision cases pass) and refuses it otherwise, naming what failed.
- **Following.** Every process polls the slots (``policy_poll_interval``, default 0.5 s): when
  the active seq moves, it loads that bundle from the database, builds its engines and replaces
  ``decider.policy`` in one assignment (a decision in flight keeps the policy it started with).
  Held approvals are then re-evaluated by ``gateway.approvals`` on their next vote.
- **Start.** A process follows the database. On a database with no active bundle, the
  ``--policies`` directory (default ./policies) is activated. A directory given explicitly
  (``--policies``, ``MANDATE_POLICIES``, ``mandate.toml``) that differs from the active bundle
  is activated at start: the operator who starts a process with a bundle means that bundle.
  (Processes of one deployment should then be started without it, and bundles changed with
  ``mandate policy activate``.) At start the bundle is loaded and parsed, not tested.
- **Shadow.** A shadow bundle decides every new proposal again, from what the ledger recorded
  for it (the proposal, the executor, the level, the figures, the clock), on a thread of its
  own after the live answer is given: it never changes, delays or fails the live verdict. A
  disagreement (another verdict or other reason codes) or a failure of the shadow is a row in
  ``gateway_shadow_disagreements``, listed by ``GET /v1/policies/shadow``. Not ledger entries:
  a shadow verdict is not an event of the governed system, a candidate that disagrees with
  half of a million proposals must not double the ledger, and every disagreement can be
  recomputed from the ledger anyway (the shadow's ``policy`` entry names its files; replaying
  the decisions of its window with it gives the same rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.errors import Conflict, DecisionUnavailable, InvalidInput
from gateway.identity import Identity
from gateway.models import BUNDLES, POLICY_SLOTS, SHADOW_DISAGREEMENTS
from gateway.pipeline import ActivePolicy, Decider
from gateway.policy.bundle import (
    Bundle,
    BundleError,
    bundle_from_files,
    file_manifest,
    read_bundle_files,
)
from gateway.policy.checks import check_bundle
from gateway.policy.permit import Permitter
from gateway.policy.rego import EngineError, OpaServerEngine, RegoEngine, RegorusEngine
from gateway.redecide import Inputs, Redecision, redecide
from gateway.schemas import Verdict
from gateway.settings import Settings
from ledger.database import WRITE
from ledger.errors import LedgerError
from ledger.store import Appended, Ledger, Record

__all__ = [
    "SYSTEM",
    "Activation",
    "BundleStore",
    "PolicyLifecycle",
    "ShadowRunner",
    "Slot",
    "build_policy",
    "refusal",
    "write_slot",
]

log = logging.getLogger("mandate.policy")

SlotName = Literal["active", "shadow"]
# Who changes the bundle when a process starts with one (recorded as the entry's actor).
SYSTEM = Identity(
    token_id="mandate",  # noqa: S106 - a name, not a secret
    name="mandate",
    role="system",
    workflow=None,
    owner="mandate",
)


def build_policy(bundle: Bundle, opa_url: str | None = None) -> ActivePolicy:
    """A bundle's engines: Casbin, and Rego in-process (regorus) or on an OPA server (which
    is asked for a classification only where the bundle's Rego, parsed here, has the rule).
    The OPA server is loaded with the bundle here (``OpaServerEngine.push``); a server that
    cannot take it now is loaded when it can (``PolicyLifecycle.refresh``), and until then
    every decision fails closed."""
    local = RegorusEngine(bundle)
    engine: RegoEngine = local
    if opa_url:
        classifying = frozenset(w for w in bundle.workflows if local.classifies(w))
        engine = server = OpaServerEngine(opa_url, bundle, classifying=classifying)
        try:
            server.push()
        except EngineError as exc:
            log.error("%s", exc)
    return ActivePolicy(bundle, Permitter(bundle.casbin_model, bundle.casbin_policy), engine)


def refusal(exc: BundleError) -> InvalidInput:
    """A bundle that does not load, as the 422 names it."""
    return InvalidInput([(f"files.{exc.path}" if exc.path else "files", str(exc))])


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
    only_if_empty: bool = False,
) -> Activation:
    """Put ``bundle`` in ``slot`` (None: empty the shadow slot) with its ``policy`` entry, in
    one transaction. Activating the bundle that shadows stops the shadow in the same entry.
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


# -- shadow ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shadowing:
    """The shadow bundle in force in this process: its engines and its slot."""

    policy: ActivePolicy
    slot: Slot


class ShadowRunner:
    """Decides every new proposal again with the shadow bundle, on a thread of its own.

    ``offer`` (called by the decision path once the live answer is durable) only queues the
    action; a full queue drops it and counts it as skipped, so the shadow never slows the live
    path. The thread reads the proposal and decision entries back from the ledger and runs
    ``redecide`` on what they recorded: the shadow sees exactly the inputs the live decision
    had.
    """

    def __init__(self, engine: Engine, ledger: Ledger, *, capacity: int = 4096) -> None:
        self._engine = engine
        self._ledger = ledger
        self._queue: queue.Queue[tuple[Shadowing, Verdict] | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self.current: Shadowing | None = None
        self.compared = 0
        self.skipped = 0
        self.disagreements = 0

    @property
    def pending(self) -> int:
        """Proposals queued for the shadow in this process."""
        return self._queue.qsize()

    def offer(self, verdict: Verdict) -> None:
        """Queue a fresh live decision for the shadow, if one runs. Never raises."""
        current = self.current
        if current is None:
            return
        if self._thread is None:
            self.start()
        try:
            self._queue.put_nowait((current, verdict))
        except queue.Full:
            self.skipped += 1

    def start(self) -> None:
        """Start the shadow's thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-shadow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let the thread finish what is queued, then end it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.compare(*item)
            except Exception:  # the shadow must never stop; a failure is logged and counted
                log.exception("the shadow comparison failed")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until everything queued so far is compared (tests, benches)."""
        self._queue.join()

    def compare(self, shadowing: Shadowing, verdict: Verdict) -> bool:
        """Decide one recorded proposal with the shadow; record a disagreement. True if they
        disagreed."""
        ref = verdict.ledger
        proposed = self._ledger.entry(ref.proposal_seq).body
        decided = self._ledger.entry(ref.decision_seq).body
        try:
            shadow = redecide(shadowing.policy, Inputs.recorded(proposed, decided))
        except Exception as exc:  # the shadow's own failure is recorded, never raised
            shadow = Redecision("error", [], error=f"{type(exc).__name__}: {exc}")
        self.compared += 1
        live_codes = sorted(r["code"] for r in decided["reasons"])
        if shadow.verdict == decided["verdict"] and shadow.codes == live_codes:
            return False
        self.disagreements += 1
        proposal = proposed["proposal"]
        detail = {
            "active": {"verdict": decided["verdict"], "reasons": decided["reasons"]},
            "shadow": shadow.to_json(),
            "level": decided["trace"]["autonomy"]["level"],
            "proposal": proposal,
        }
        # A write transaction from the start (BEGIN IMMEDIATE on SQLite): it waits for the
        # ledger's writer instead of failing when a read would turn into a write.
        with self._engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            conn.execute(
                sa.insert(SHADOW_DISAGREEMENTS).values(
                    shadow_digest=shadowing.policy.bundle.digest,
                    active_digest=decided["trace"]["bundle_digest"],
                    action_id=verdict.action_id,
                    decision_seq=ref.decision_seq,
                    decided_at=decided["trace"]["decided_at"],
                    workflow=proposal["workflow"],
                    case_type=decided["trace"]["autonomy"]["case_type"],
                    action_type=proposal["action_type"],
                    executor=proposed["executor"]["name"],
                    active_verdict=decided["verdict"],
                    shadow_verdict=shadow.verdict,
                    verdict_changed=shadow.verdict != decided["verdict"],
                    detail=orjson.dumps(detail),
                )
            )
        return True


# -- the process's view ----------------------------------------------------------------------


class PolicyLifecycle:
    """One gateway process's side of the lifecycle: start, activate, follow, shadow."""

    def __init__(self, settings: Settings, engine: Engine, ledger: Ledger) -> None:
        self.settings = settings
        self.engine = engine
        self.ledger = ledger
        self.store = BundleStore(engine)
        self.shadow = ShadowRunner(engine, ledger)
        self.decider: Decider | None = None
        self.problem: str | None = None  # why the active bundle could not be followed
        self._seen: dict[str, int] = {"active": -1, "shadow": -1}
        self._lock = threading.Lock()
        self.replaying = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def bootstrap(self) -> ActivePolicy:
        """The policy this process starts with (see the module docstring, "Start")."""
        settings = self.settings
        directory = bundle_from_files(read_bundle_files(settings.policies), settings.policies)
        explicit = "policies" in settings.model_fields_set
        for _ in range(5):
            active = self.store.slots().get("active")
            if active is not None and (active.digest == directory.digest or not explicit):
                break
            policy = build_policy(directory, settings.opa_url)  # it must load before it is used
            why = (
                f"first start: the bundle in {settings.policies}"
                if active is None
                else f"started with --policies {settings.policies}"
            )
            written = write_slot(
                self.engine,
                self.ledger,
                "active",
                directory,
                by=SYSTEM,
                reason=why,
                validation={"checked": False, "why": "loaded and parsed at start; not tested"},
                only_if_empty=active is None,
            )
            if written.changed:
                self._seen["active"] = written.slot.seq
                log.warning("policy bundle %s activated: %s", directory.digest[:12], why)
                self._follow_shadow()
                return policy
        slots = self.store.slots()
        active = slots["active"]
        assert active.digest is not None
        self._seen["active"] = active.seq
        if active.digest != directory.digest:
            log.warning(
                "the active bundle is %s (set by %s at %s); %s holds %s and is not used",
                active.digest[:12],
                active.changed_by,
                active.changed_at,
                settings.policies,
                directory.digest[:12],
            )
        bundle = (
            directory if active.digest == directory.digest else self.store.bundle(active.digest)
        )
        self._follow_shadow()
        return build_policy(bundle, settings.opa_url)

    def attach(self, decider: Decider) -> None:
        """Follow into this decider, and let it offer fresh decisions to the shadow."""
        self.decider = decider
        decider.shadow = self.shadow.offer

    # -- following -----------------------------------------------------------------------

    def refresh(self) -> bool:
        """Follow the slots now; True if anything changed in this process."""
        with self._lock:
            slots = self.store.slots()
            changed = False
            active = slots.get("active")
            if active is not None and active.seq > self._seen["active"]:
                changed |= self._follow_active(active)
            shadow = slots.get("shadow")
            if shadow is not None and shadow.seq > self._seen["shadow"]:
                changed |= self._follow_shadow(shadow)
            if active is not None and self.decider is not None:
                self._reload_server(active)
            return changed

    def _reload_server(self, active: Slot) -> None:
        """An OPA server that lost the active bundle (it restarted) gets it again, from the
        process deciding with it; one that holds another bundle is left to fail closed."""
        assert self.decider is not None
        policy = self.decider.policy
        if isinstance(policy.engine, OpaServerEngine) and policy.bundle.digest == active.digest:
            try:
                if policy.engine.sync():
                    log.warning("OPA server %s reloaded with the active bundle", policy.engine.url)
            except EngineError as exc:
                log.error("%s", exc)

    def _follow_active(self, slot: Slot) -> bool:
        decider = self.decider
        assert decider is not None
        assert slot.digest is not None
        if decider.policy.bundle.digest == slot.digest:
            self._seen["active"] = slot.seq
            decider.unavailable = self.problem = None
            return False
        try:
            policy = build_policy(self.store.bundle(slot.digest), self.settings.opa_url)
        except Exception as exc:  # tried again at the next poll; /readyz says why
            self.problem = f"bundle {slot.digest[:12]} is active but does not load here: {exc}"
            decider.unavailable = self.problem  # fail closed: no verdict of a stale bundle
            log.error("%s", self.problem)
            return False
        decider.policy = policy
        decider.unavailable = self.problem = None
        self._seen["active"] = slot.seq
        log.warning("now deciding with bundle %s (%s)", slot.digest[:12], slot.reason)
        return True

    def _follow_shadow(self, slot: Slot | None = None) -> bool:
        if slot is None:
            slot = self.store.slots().get("shadow")
            if slot is None:
                return False
        self._seen["shadow"] = slot.seq
        if slot.digest is None:
            self.shadow.current = None
            return True
        try:
            policy = build_policy(self.store.bundle(slot.digest))
        except Exception:
            log.exception("the shadow bundle %s does not load; no shadow", slot.digest[:12])
            self.shadow.current = None
            return True
        self.shadow.current = Shadowing(policy, slot)
        return True

    async def watch_forever(self, interval: float, stop: asyncio.Event) -> None:
        """Poll the slots every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the next poll tries again
                log.exception("following the policy slots failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # -- changing ------------------------------------------------------------------------

    def activate(self, bundle: Bundle, *, slot: SlotName, by: Identity, reason: str) -> Activation:
        """Check ``bundle`` and put it in ``slot``; InvalidInput naming what failed if the
        check does not pass. This process follows at once; the others at their next poll."""
        if slot == "shadow":
            active = self.store.slots().get("active")
            if active is not None and active.digest == bundle.digest:
                raise Conflict("this bundle is the active one; a shadow runs another beside it")
        check = check_bundle(bundle)
        if not check.passed:
            raise InvalidInput(
                [(f"files.{p.file}", p.message) for p in check.failures()]
                or [("files", "the bundle does not pass its checks")]
            )
        try:
            activation = write_slot(
                self.engine,
                self.ledger,
                slot,
                bundle,
                by=by,
                reason=reason,
                validation=check.summary(),
            )
        except LedgerError as exc:
            raise DecisionUnavailable(f"the ledger did not record the activation: {exc}") from exc
        if self.decider is not None:
            self.refresh()
        return activation

    def stop_shadow(self, *, by: Identity, reason: str) -> Activation:
        """Empty the shadow slot (a ``policy`` entry with mode ``shadow-stopped``)."""
        current = self.store.slots().get("shadow")
        if current is None or current.digest is None:
            raise Conflict("no shadow bundle is running")
        activation = write_slot(
            self.engine, self.ledger, "shadow", None, by=by, reason=reason, validation=None
        )
        if self.decider is not None:
            self.refresh()
        return activation
