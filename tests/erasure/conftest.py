"""The erasure tests' fixtures: gateways on demand and the example receiver on loopback."""

from tests.approvals.conftest import hook, launch

__all__ = ["hook", "launch"]
