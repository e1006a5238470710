"""Gateways on demand and the example receiver on loopback (tests.approvals' fixtures)."""

from tests.approvals.conftest import hook, launch

__all__ = ["hook", "launch"]
