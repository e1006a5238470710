"""The policy in force: a bundle with the engines built from it, and the one place a process
keeps the bundle it decides with.

``InForce`` is shared by the decider and the services that judge with the policy (approvals,
audits, governance); only the policy lifecycle (``gateway.lifecycle.activation``) replaces what
it holds, so every reader sees a whole bundle, never a half-swapped one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.bundle import Bundle, load_bundle
from gateway.policy.permit import Permitter
from gateway.policy.rego import EngineError, OpaServerEngine, RegoEngine, RegorusEngine

__all__ = ["ActivePolicy", "InForce", "build_policy", "load_policy"]

log = logging.getLogger("mandate.policy")


@dataclass(frozen=True)
class ActivePolicy:
    """The bundle in force and the engines built from it."""

    bundle: Bundle
    permitter: Permitter
    engine: RegoEngine


@dataclass
class InForce:
    """The policy this process decides with, and why it must not decide now, if it must not
    (the active bundle does not load here): then every proposal gets a 503 until it does,
    never a verdict of a stale bundle."""

    policy: ActivePolicy
    unavailable: str | None = None

    def get(self) -> ActivePolicy:
        """The policy in force now (a getter for the services)."""
        return self.policy


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


def load_policy(root: Path, opa_url: str | None = None) -> ActivePolicy:
    """Load a bundle directory and build its engines."""
    return build_policy(load_bundle(root), opa_url)
