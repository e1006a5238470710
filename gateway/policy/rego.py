"""Evaluate: what does the workflow's Rego policy say? Behind one small interface, two engines.

``RegorusEngine`` evaluates in-process with regorus (a Rust Rego interpreter; the version is
pinned and the choice explained in policies/README.md). ``OpaServerEngine`` asks an OPA server
through its Data API, for sites that already run OPA.

The policy contract: package ``mandate.workflows.<workflow>`` defines the sets ``deny`` and
``hold``, each of ``{"code", "message"}`` objects, and may define ``case_type``, a string: the
case type it classifies the proposal as (one its action type lists in ``data.json``).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import regorus

from gateway.policy.bundle import Bundle

__all__ = [
    "EngineError",
    "OpaServerEngine",
    "RegoEngine",
    "RegoResult",
    "RegoRule",
    "RegoTestResult",
    "RegorusEngine",
    "live_engines",
    "package_of",
]


class EngineError(RuntimeError):
    """The engine could not give an answer; the gateway fails closed on it."""


@dataclass(frozen=True, slots=True)
class RegoResult:
    """What the policy said: reasons to deny and reasons to hold, as the policy wrote them."""

    deny: list[dict[str, Any]]
    hold: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """As recorded in a decision's trace."""
        return {"deny": self.deny, "hold": self.hold}


@dataclass(frozen=True, slots=True)
class RegoRule:
    """One rule definition of a module, as coverage reports it: where it is, what it is called
    and, for ``deny``/``hold`` rules, the reason ``code`` it produces."""

    module: str
    name: str
    line: int
    end_line: int
    code: str | None = None
    package: str = ""
    # What it says: its syntax tree without positions (layout and comments do not count), to
    # tell whether two bundles' rules differ. Not part of its identity.
    meaning: str = field(default="", compare=False, repr=False)

    @property
    def label(self) -> str:
        """``deny over_hard_limit`` or, for a helper rule, its name."""
        return f"{self.name} {self.code}" if self.code else self.name


@dataclass(frozen=True, slots=True)
class RegoTestResult:
    """One ``test_`` rule's outcome."""

    module: str
    name: str
    passed: bool
    error: str | None = None


class RegoEngine(Protocol):
    """What the pipeline needs from a Rego engine."""

    name: str
    version: str

    def evaluate(self, workflow: str, input_: dict[str, Any]) -> RegoResult:
        """Evaluate the workflow's package for this input."""
        ...

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """The workflow's ``case_type`` rule for this input; None where it is undefined."""
        ...

    def unavailable(self) -> str | None:
        """Why the engine cannot answer now (for /readyz), or None when it can."""
        ...


def package_of(workflow: str) -> str:
    """The Rego package that holds a workflow's rules."""
    return f"data.mandate.workflows.{workflow}"


CLASSIFY_RULE = "case_type"
_UNDEFINED = "<undefined>"  # what regorus answers for a rule with no value for this input


def _case_type(value: Any, package: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EngineError(
            f"{package}.{CLASSIFY_RULE} must be a string, got {orjson.dumps(value).decode()}"
        )
    return value


def _reasons(value: Any, rule: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise EngineError(f"{rule} must be a set of objects, got {orjson.dumps(value).decode()}")
    return sorted(value, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))


class _ThreadEngines(threading.local):
    """This thread's regorus engines, by the ``RegorusEngine`` each was loaded for.

    A regorus engine may only be used, and dropped, on the thread that made it (dropped
    anywhere else it raises and leaks). So engines live here, in one thread-local that lasts as
    long as the process, and never in a ``RegorusEngine``: when one of those goes (a bundle
    replaced, a bundle checked), each thread drops its own engine for it at its next
    evaluation, and a thread that ends drops all of its own as it ends.
    """

    def __init__(self) -> None:
        self.engines: dict[int, regorus.Engine] = {}


_THREAD_ENGINES = _ThreadEngines()
_NEXT_ID = itertools.count()
# Ids of RegorusEngines gone, whose engines threads drop at their next evaluation. (An id is a
# few bytes, kept because a thread that holds an engine for it may not have evaluated since.)
_RETIRED: set[int] = set()


def _retire(engine_id: int) -> None:
    _RETIRED.add(engine_id)  # a set's add is atomic: safe from whichever thread collects


def live_engines() -> int:
    """How many regorus engines this thread holds (one per bundle it evaluated, until the
    bundle's ``RegorusEngine`` goes and the thread evaluates again)."""
    return len(_THREAD_ENGINES.engines)


class RegorusEngine:
    """In-process Rego with regorus.

    A regorus engine may only be used, and dropped, on the thread that made it, so each
    thread that evaluates gets its own copy (loaded from the same bundle on first use).
    """

    name = "regorus"

    def __init__(
        self, bundle: Bundle, *, include_tests: bool = False, coverage: bool = False
    ) -> None:
        self.version = importlib.metadata.version("gordon-to-regorus")
        self._coverage = coverage
        self._sources = dict(bundle.modules)
        if include_tests:
            self._sources.update(bundle.tests)
        self._data = orjson.dumps(bundle.data).decode()
        self._id = next(_NEXT_ID)
        weakref.finalize(self, _retire, self._id)
        self._packages = set(self._engine().get_packages())
        self._tests = bundle.tests if include_tests else {}
        self._classifying = {
            f"data.{rule.package}" for rule in self.rules() if rule.name == CLASSIFY_RULE
        }

    def _engine(self) -> regorus.Engine:
        engines = _THREAD_ENGINES.engines
        if _RETIRED:
            for gone in _RETIRED.intersection(engines):
                del engines[gone]  # dropped here, on the thread that made it
        engine = engines.get(self._id)
        if engine is None:
            engine = regorus.Engine()
            try:
                for path, source in self._sources.items():
                    engine.add_policy(path, source)
                engine.add_data_json(self._data)
            except Exception as exc:  # regorus reports parse errors as plain exceptions
                # Dropped here, on its thread: the traceback travels, and may end elsewhere.
                engine = None
                raise EngineError(f"the bundle's Rego does not load: {_first_line(exc)}") from exc
            if self._coverage:
                engine.set_enable_coverage(True)
            engines[self._id] = engine
        return engine

    def unavailable(self) -> str | None:
        """Never: the engine is in this process."""
        return None

    def has_workflow(self, workflow: str) -> bool:
        """Whether the bundle has a package for this workflow."""
        return package_of(workflow) in self._packages

    def classifies(self, workflow: str) -> bool:
        """Whether the workflow's package has a ``case_type`` rule."""
        return package_of(workflow) in self._classifying

    def evaluate(self, workflow: str, input_: dict[str, Any]) -> RegoResult:
        """Evaluate ``deny`` and ``hold`` of the workflow's package."""
        package = package_of(workflow)
        if package not in self._packages:
            raise EngineError(f"no Rego package {package} in the bundle")
        engine = self._engine()
        try:
            engine.set_input_json(orjson.dumps(input_).decode())
            deny = orjson.loads(engine.eval_rule_as_json(f"{package}.deny"))
            hold = orjson.loads(engine.eval_rule_as_json(f"{package}.hold"))
        except Exception as exc:
            raise EngineError(f"regorus failed on {package}: {_first_line(exc)}") from exc
        return RegoResult(_reasons(deny, "deny"), _reasons(hold, "hold"))

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """Evaluate the workflow's ``case_type`` rule, if its package has one."""
        package = package_of(workflow)
        if package not in self._classifying:
            return None
        engine = self._engine()
        try:
            engine.set_input_json(orjson.dumps(input_).decode())
            value = orjson.loads(engine.eval_rule_as_json(f"{package}.{CLASSIFY_RULE}"))
        except Exception as exc:
            raise EngineError(f"regorus failed on {package}: {_first_line(exc)}") from exc
        return _case_type(None if value == _UNDEFINED else value, package)

    def run_tests(self) -> list[RegoTestResult]:
        """Evaluate every ``test_`` rule of the test modules, as ``opa test`` does."""
        engine = self._engine()
        results = []
        for path, source in sorted(self._tests.items()):
            package = _package_line(source)
            for name in _test_rules(source):
                try:
                    value = engine.eval_rule(f"data.{package}.{name}")
                except Exception as exc:
                    results.append(RegoTestResult(path, name, False, str(exc)))
                    continue
                results.append(RegoTestResult(path, name, value is True))
        return results

    # -- coverage (``coverage=True``): which lines, and so which rules, evaluation reached --

    def covered_lines(self) -> dict[str, set[int]]:
        """Lines of each module this thread's evaluations reached since the last clear."""
        report = orjson.loads(self._engine().get_coverage_report_as_json())
        return {f["path"]: set(f.get("covered") or ()) for f in report.get("files", [])}

    def clear_coverage(self) -> None:
        """Forget what this thread's evaluations reached so far."""
        self._engine().clear_coverage_data()

    def rules(self) -> list[RegoRule]:
        """Every rule definition of the bundle's modules (test modules left out), in order."""
        found: list[RegoRule] = []
        for module in orjson.loads(self._engine().get_ast_as_json()):
            path = module["source"]["file"]
            if path in self._tests or path not in self._sources:
                continue
            text = module["source"]["contents"].encode()
            package = _package_line(text.decode(errors="replace"))
            for rule in module["ast"]["rules"]:
                span = next(iter(rule.values()))["span"]
                source = text[span["start"] : span["end"]].decode(errors="replace")
                name = _RULE_NAME.match(source)
                code = _REASON_CODE.search(source)
                found.append(
                    RegoRule(
                        module=path,
                        name=name.group(1) if name else source.split()[0],
                        line=int(span["line"]),
                        end_line=int(span["line"]) + source.count("\n"),
                        code=code.group(1) if code else None,
                        package=package,
                        meaning=orjson.dumps(
                            _positionless(rule), option=orjson.OPT_SORT_KEYS
                        ).decode(),
                    )
                )
        return sorted(found, key=lambda r: (r.module, r.line))


_POSITIONS = frozenset({"span", "eidx", "qidx", "sidx"})  # where a part is, not what it says
_SPAN = frozenset({"line", "col", "start", "end"})


def _positionless(node: Any) -> Any:
    """A regorus syntax tree without the positions of its parts."""
    if isinstance(node, dict):
        if set(node) == _SPAN:
            return None
        return {k: _positionless(v) for k, v in node.items() if k not in _POSITIONS}
    if isinstance(node, list):
        return [_positionless(item) for item in node]
    return node


_RULE_NAME = re.compile(r"(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
_REASON_CODE = re.compile(r'"code"\s*:\s*"([^"\\]+)"')


def _first_line(exc: BaseException) -> str:
    """Where and what, without the backtrace regorus appends when RUST_BACKTRACE is set."""
    lines = [line.strip() for line in str(exc).split("Stack backtrace:")[0].splitlines()]
    where = next((line[4:] for line in lines if line.startswith("--> ")), "")
    what = next((line for line in lines if line.startswith("error:")), "")
    summary = f"{what} at {where}" if what and where else what or (lines[0] if lines else "")
    return summary[:300] or type(exc).__name__


def _package_line(source: str) -> str:
    for line in source.splitlines():
        if line.startswith("package "):
            return line.split()[1]
    raise EngineError("a test module has no package line")


def _test_rules(source: str) -> list[str]:
    names: list[str] = []
    for line in source.splitlines():
        if line.startswith("test_"):
            name = line.split()[0].split("(")[0]
            if name not in names:
                names.append(name)
    return names


class OpaServerEngine:
    """Rego evaluated by an OPA server through its Data API (``opa-python-client``)."""

    name = "opa-server"

    def __init__(
        self, url: str, *, timeout: float = 2.0, classifying: frozenset[str] = frozenset()
    ) -> None:
        """``classifying``: the workflows whose package has a ``case_type`` rule (the bundle
        says), so that the server is asked for it only where there is one."""
        from opa_client.opa import OpaClient

        parts = urlsplit(url)
        if parts.hostname is None:
            raise EngineError(f"OPA URL {url!r} has no host")
        self._client = OpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 8181),
            ssl=parts.scheme == "https",
            timeout=timeout,
            retries=0,
        )
        self.version = importlib.metadata.version("opa-python-client")
        self.url = url
        self._classifying = classifying

    def unavailable(self) -> str | None:
        """Whether the OPA server answers its /health endpoint."""
        if self._client.check_health():
            return None
        return f"the OPA server at {self.url} does not answer /health"

    def evaluate(self, workflow: str, input_: dict[str, Any]) -> RegoResult:
        """POST the input to /v1/data/mandate/workflows/<workflow> and read deny and hold."""
        try:
            answer = self._client.query_rule(
                input_data=input_, package_path=f"mandate.workflows.{workflow}"
            )
        except Exception as exc:
            raise EngineError(f"OPA server at {self.url} failed: {exc}") from exc
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise EngineError(f"OPA server at {self.url} has no package for workflow {workflow}")
        return RegoResult(
            _reasons(result.get("deny"), "deny"), _reasons(result.get("hold"), "hold")
        )

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """POST the input to /v1/data/mandate/workflows/<workflow>/case_type."""
        if workflow not in self._classifying:
            return None
        package = f"mandate.workflows.{workflow}"
        try:
            answer = self._client.query_rule(
                input_data=input_, package_path=package, rule_name=CLASSIFY_RULE
            )
        except Exception as exc:
            raise EngineError(f"OPA server at {self.url} failed: {exc}") from exc
        result = answer.get("result") if isinstance(answer, dict) else None
        return _case_type(result, package)
