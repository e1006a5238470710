"""The policy lifecycle: bundles kept in the database, activation, shadow mode, and the watcher
that keeps every gateway process on the active bundle.

- **Storage.** A bundle's files live in ``gateway_bundles`` by digest; ``gateway_policy_slots``
  says which one is ``active`` and which one runs in ``shadow`` beside it. Every change is a
  ``policy`` ledger entry (mode, digest, the files with their hashes, who, why, what the
  validation found) written in the same transaction as the slot, so the two never disagree.
- **Activation** (``PolicyLifecycle.activate``; ``POST /v1/policies``, ``mandate policy
  activate``) checks the bundle first (``gateway.lifecycle.checks``: it loads, its Rego tests and
  decision cases pass) and refuses it otherwise, naming what failed.
- **Signatures.** With a bundle key (``bundle_key``, ``MANDATE_BUNDLE_KEY``: a PEM public key),
  a bundle enters the database only with a signature of that key covering every file as it is
  (OPA's ``.signatures.json``, ``gateway.policy.signing``): activation, shadow and the start's
  activation of ``--policies`` refuse an unsigned or altered one, naming the file. The
  ``policy`` entry records who signed (key id, algorithm, the key's SHA-256). Processes that
  follow the database trust what entered it.
- **Following.** Every process polls the slots (``policy_poll_interval``, default 0.5 s): when
  the active seq moves, it loads that bundle from the database, builds its engines and replaces
  the policy in force (``gateway.policy.active.InForce``) in one assignment (a decision in
  flight keeps the policy it started with).
  Held approvals are then re-evaluated by ``gateway.approvals.votes`` on their next vote.
- **Start.** A process follows the database. On a database with no active bundle, the
  ``--policies`` directory (default ./policies) is activated. A directory given explicitly
  (``--policies``, ``MANDATE_POLICIES``, ``mandate.toml``) that differs from the active bundle
  is activated at start: the operator who starts a process with a bundle means that bundle.
  (Processes of one deployment should then be started without it, and bundles changed with
  ``mandate policy activate``.) At start the bundle is loaded and parsed, not tested (and its
  signature checked, with a bundle key).
- **Shadow.** A shadow bundle decides every new proposal again beside the active one
  (``gateway.lifecycle.shadow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path

from sqlalchemy.engine import Engine

from gateway.errors import Conflict, DecisionUnavailable, InvalidInput
from gateway.identity import Identity
from gateway.lifecycle.checks import check_bundle
from gateway.lifecycle.shadow import Shadowing, ShadowRunner
from gateway.lifecycle.slots import Activation, BundleStore, Slot, SlotName, write_slot
from gateway.policy.active import ActivePolicy, InForce, build_policy
from gateway.policy.bundle import (
    Bundle,
    BundleError,
    bundle_from_files,
    read_bundle_files,
)
from gateway.policy.rego import EngineError, OpaServerEngine
from gateway.policy.signing import (
    PublicKey,
    SignatureError,
    Signer,
    read_public_key,
    read_signatures,
    verify_files,
)
from gateway.settings import Settings
from ledger.errors import LedgerError
from ledger.store import Ledger

__all__ = ["SYSTEM", "PolicyLifecycle", "check_start", "refusal"]

log = logging.getLogger("mandate.policy")

# Who changes the bundle when a process starts with one (recorded as the entry's actor).
SYSTEM = Identity(
    token_id="mandate",  # noqa: S106 - a name, not a secret
    name="mandate",
    role="system",
    workflow=None,
    owner="mandate",
)


def refusal(exc: BundleError) -> InvalidInput:
    """A bundle that does not load, or whose signature does not vouch for it, as the 422 names
    it: the file that is wrong, else ``signatures`` (or ``files``)."""
    if exc.path:
        return InvalidInput([(f"files.{exc.path}", str(exc))])
    return InvalidInput([("signatures" if isinstance(exc, SignatureError) else "files", str(exc))])


def _activates_at_start(active: Slot | None, directory: Bundle, explicit: bool) -> bool:
    """Whether a starting process activates its --policies directory (module docstring)."""
    return active is None or (explicit and active.digest != directory.digest)


def _vouched(key: PublicKey | None, directory: Path, bundle: Bundle) -> Signer | None:
    if key is None:
        return None
    try:
        return verify_files(bundle.files, read_signatures(directory), key)
    except SignatureError as exc:
        raise SignatureError(f"{directory}: {exc}", exc.path) from None


def check_start(settings: Settings, engine: Engine) -> None:
    """What would stop a process from starting, found before it starts (``mandate serve``
    says it in one line): a bundle key that cannot be read, or a --policies directory that
    the start would activate and that the key did not sign. BundleError saying which."""
    if settings.bundle_key is None:
        return
    key = read_public_key(settings.bundle_key)
    directory = bundle_from_files(read_bundle_files(settings.policies), settings.policies)
    active = BundleStore(engine).slots().get("active")
    if _activates_at_start(active, directory, "policies" in settings.model_fields_set):
        _vouched(key, settings.policies, directory)


# -- the process's view ----------------------------------------------------------------------


class PolicyLifecycle:
    """One gateway process's side of the lifecycle: start, activate, follow, shadow."""

    def __init__(self, settings: Settings, engine: Engine, ledger: Ledger) -> None:
        self.settings = settings
        self.engine = engine
        self.ledger = ledger
        self.store = BundleStore(engine)
        self.shadow = ShadowRunner(engine, ledger)
        self.in_force: InForce | None = None
        self.problem: str | None = None  # why the active bundle could not be followed
        self._seen: dict[str, int] = {"active": -1, "shadow": -1}
        self._lock = threading.Lock()
        self.replaying = threading.Lock()
        self._key: PublicKey | None = None  # the bundle key, read at start

    # -- start ---------------------------------------------------------------------------

    def bootstrap(self) -> ActivePolicy:
        """The policy this process starts with (see the module docstring, "Start")."""
        settings = self.settings
        if settings.bundle_key is not None:
            self._key = read_public_key(settings.bundle_key)
        directory = bundle_from_files(read_bundle_files(settings.policies), settings.policies)
        explicit = "policies" in settings.model_fields_set
        for _ in range(5):
            active = self.store.slots().get("active")
            if not _activates_at_start(active, directory, explicit):
                break
            signer = _vouched(self._key, settings.policies, directory)
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
                signer=signer,
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

    def attach(self, in_force: InForce) -> None:
        """Follow into this process's policy in force."""
        self.in_force = in_force

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
            if active is not None and self.in_force is not None:
                self._reload_server(active)
            return changed

    def _reload_server(self, active: Slot) -> None:
        """An OPA server that lost the active bundle (it restarted) gets it again, from the
        process deciding with it; one that holds another bundle is left to fail closed."""
        assert self.in_force is not None
        policy = self.in_force.policy
        if isinstance(policy.engine, OpaServerEngine) and policy.bundle.digest == active.digest:
            try:
                if policy.engine.sync():
                    log.warning("OPA server %s reloaded with the active bundle", policy.engine.url)
            except EngineError as exc:
                log.error("%s", exc)

    def _follow_active(self, slot: Slot) -> bool:
        in_force = self.in_force
        assert in_force is not None
        assert slot.digest is not None
        if in_force.policy.bundle.digest == slot.digest:
            self._seen["active"] = slot.seq
            in_force.unavailable = self.problem = None
            return False
        try:
            policy = build_policy(self.store.bundle(slot.digest), self.settings.opa_url)
        except Exception as exc:  # tried again at the next poll; /readyz says why
            self.problem = f"bundle {slot.digest[:12]} is active but does not load here: {exc}"
            in_force.unavailable = self.problem  # fail closed: no verdict of a stale bundle
            log.error("%s", self.problem)
            return False
        in_force.policy = policy
        in_force.unavailable = self.problem = None
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

    def activate(
        self,
        bundle: Bundle,
        *,
        slot: SlotName,
        by: Identity,
        reason: str,
        signatures: bytes | None = None,
    ) -> Activation:
        """Check ``bundle`` and put it in ``slot``; InvalidInput naming what failed if the
        check does not pass. With a bundle key, ``signatures`` (its ``.signatures.json``) must
        vouch for every file first. This process follows at once; the others at their next
        poll."""
        if slot == "shadow":
            active = self.store.slots().get("active")
            if active is not None and active.digest == bundle.digest:
                raise Conflict("this bundle is the active one; a shadow runs another beside it")
        signer = None
        if self._key is not None:
            try:
                signer = verify_files(bundle.files, signatures, self._key)
            except SignatureError as exc:
                raise refusal(exc) from None
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
                signer=signer,
            )
        except LedgerError as exc:
            raise DecisionUnavailable(
                f"the ledger did not record the activation: {exc}", cause="ledger"
            ) from exc
        if self.in_force is not None:
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
        if self.in_force is not None:
            self.refresh()
        return activation
