"""Rego evaluated by OPA's own evaluator, in this process: the reference a bundle's meaning is
checked against.

``OpaEngine`` loads a bundle into OPA's Go ``rego`` package through ``opa-golib-python-bindings``
(a Go shared library loaded with ctypes; the optional extra ``mandate[opa]``). The gateway decides
with regorus; this engine is what ``mandate policy test --engine opa``, ``mandate policy replay
--engine opa`` and the conformance check (``gateway.lifecycle.conformance``) evaluate with, so that
a bundle is known to mean what OPA says it means before it decides anything. Why this package
and not an OPA binary: policies/README.md ("Two engines, one meaning").

It answers the same questions as ``RegorusEngine`` (``evaluate``, ``classify``, ``run_tests``),
from the same bundle, with the package's document as an OPA server's Data API returns it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import mmap
import re
from pathlib import Path
from typing import Any

from gateway.policy.bundle import Bundle
from gateway.policy.rego import (
    CLASSIFY_RULE,
    EngineError,
    RegoResult,
    RegoTestResult,
    package_of,
    result_of,
    unit_tests_of,
)

__all__ = ["DISTRIBUTION", "INSTALL_HINT", "OpaEngine", "opa_available", "opa_version"]

DISTRIBUTION = "opa-golib-python-bindings"
INSTALL_HINT = (
    "OPA's evaluator is not installed: pip install --ignore-requires-python "
    "'opa-golib-python-bindings==0.4.4' (the extra mandate[opa]; `make setup` installs it)"
)
_EMBEDDED = re.compile(rb"dep\tgithub\.com/open-policy-agent/opa\t(v[0-9][0-9A-Za-z.+-]*)\t")


def opa_available() -> bool:
    """Whether OPA's evaluator can be loaded here."""
    try:
        import opa_bindings  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@functools.cache
def opa_version() -> str:
    """``OPA v1.20.2 (opa-golib-python-bindings 0.4.4)``: the OPA release the shared library was
    built from, as Go's build information inside it names it, and the package that ships it."""
    import opa_bindings

    package = importlib.metadata.version(DISTRIBUTION)
    library = Path(opa_bindings.__file__).with_name("libopabridge.so")
    release = "of an unknown release"
    try:
        with library.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = _EMBEDDED.search(m)
            if found is not None:
                release = found.group(1).decode()
    except (OSError, ValueError):
        pass  # the version only names the engine in traces and reports
    return f"OPA {release} ({DISTRIBUTION} {package})"


class OpaEngine:
    """A bundle loaded into OPA's evaluator; ``include_tests`` adds its test modules."""

    name = "opa"

    def __init__(self, bundle: Bundle, *, include_tests: bool = False) -> None:
        try:
            from opa_bindings import OpaEngine as Evaluator
            from opa_bindings import OpaError, OpaUndefinedError
        except (ImportError, OSError) as exc:
            raise EngineError(INSTALL_HINT) from exc
        self._error = OpaError
        self._undefined = OpaUndefinedError
        self.version = opa_version()
        self._tests = bundle.tests if include_tests else {}
        sources = dict(bundle.modules) | dict(self._tests)
        self._evaluator = Evaluator()
        try:
            for path, source in sources.items():
                self._evaluator.add_policy(path, source)
            self._evaluator.add_data(bundle.data)
        except OpaError as exc:
            raise EngineError(f"the bundle's Rego does not load in OPA: {exc.message}") from exc

    def unavailable(self) -> str | None:
        """Never: the evaluator is in this process."""
        return None

    def _document(self, path: str, input_: dict[str, Any] | None) -> Any:
        """The document at ``data.<path>`` for this input; None where it is undefined."""
        try:
            return self._evaluator.eval_document(path, input_)
        except self._undefined:
            return None
        except self._error as exc:
            raise EngineError(f"OPA failed on data.{path}: {exc.message}") from exc

    def evaluate(self, workflow: str, input_: dict[str, Any]) -> RegoResult:
        """The workflow package's document, as an OPA server's Data API answers it: its
        ``deny``, ``hold`` and ``warn``."""
        package = package_of(workflow)
        document = self._document(package.removeprefix("data."), input_)
        if not isinstance(document, dict):
            raise EngineError(f"no Rego package {package} in the bundle")
        return result_of(document)

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """The workflow's ``case_type`` rule for this input; None where it is undefined."""
        package = package_of(workflow).removeprefix("data.")
        value = self._document(f"{package}.{CLASSIFY_RULE}", input_)
        if value is not None and not isinstance(value, str):
            raise EngineError(f"data.{package}.{CLASSIFY_RULE} must be a string, got {value!r}")
        return value

    def run_tests(self) -> list[RegoTestResult]:
        """Evaluate every ``test_`` rule of the test modules, as ``opa test`` does."""
        results = []
        for path, source in sorted(self._tests.items()):
            package, names = unit_tests_of(source)
            for name in names:
                try:
                    value = self._document(f"{package}.{name}", None)
                except EngineError as exc:
                    results.append(RegoTestResult(path, name, False, str(exc)))
                    continue
                results.append(RegoTestResult(path, name, value is True))
        return results
