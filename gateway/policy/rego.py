"""Evaluate: what does the workflow's Rego policy say? Behind one small interface, two engines.

``RegorusEngine`` evaluates in-process with regorus (a Rust Rego engine; the version is pinned
and the choice explained in policies/README.md): its compiled VM answers the packages it answers
exactly as the interpreter (``gateway.policy.rvm``), the interpreter the others. ``OpaServerEngine``
asks an OPA server through its Data API, for sites that already run OPA.

The policy contract: package ``mandate.workflows.<workflow>`` defines the sets ``deny`` and
``hold``, each of ``{"code", "message"}`` objects, may define the set ``warn`` (advisories that
are recorded with the verdict and never change it), and may define ``case_type``, a string: the
case type it classifies the proposal as (one its action type lists in ``data.json``).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import regorus

from gateway.policy.bundle import Bundle
from gateway.policy.rvm import VmPlan, plan_packages

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
    "result_of",
    "unit_tests_of",
]


class EngineError(RuntimeError):
    """The engine could not give an answer; the gateway fails closed on it."""


@dataclass(frozen=True, slots=True)
class RegoResult:
    """What the policy said: reasons to deny, reasons to hold and warnings (advisory only), as
    the policy wrote them."""

    deny: list[dict[str, Any]]
    hold: list[dict[str, Any]]
    warn: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """As recorded in a decision's trace."""
        return {"deny": self.deny, "hold": self.hold, "warn": self.warn}


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
REASON_RULES = ("deny", "hold", "warn")
_UNDEFINED = "<undefined>"  # what regorus answers for a rule with no value for this input
_UNDEFINED_JSON = orjson.dumps(_UNDEFINED).decode()


def _case_type(value: Any, package: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EngineError(
            f"{package}.{CLASSIFY_RULE} must be a string, got {orjson.dumps(value).decode()}"
        )
    return value


def result_of(document: dict[str, Any]) -> RegoResult:
    """The reasons of a package's document (or of its ``deny``, ``hold`` and ``warn`` rules),
    checked and in a stable order; a rule the package does not define gives none."""
    deny, hold, warn = (_reasons(document.get(rule), rule) for rule in REASON_RULES)
    return RegoResult(deny, hold, warn)


def _reasons(value: Any, rule: str) -> list[dict[str, Any]]:
    if value is None or value == _UNDEFINED:
        return []
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise EngineError(f"{rule} must be a set of objects, got {orjson.dumps(value).decode()}")
    return sorted(value, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))


class _ThreadEngines(threading.local):
    """This thread's regorus engines (interpreters and VMs), by the ``RegorusEngine`` each was
    loaded for.

    A regorus engine, VM or program may only be used, and dropped, on the thread that made it
    (dropped anywhere else it raises and leaks). So engines live here, in one thread-local that
    lasts as long as the process, and never in a ``RegorusEngine``: when one of those goes (a
    bundle replaced, a bundle checked), each thread drops its own engines for it at its next
    evaluation, and a thread that ends drops all of its own as it ends.
    """

    def __init__(self) -> None:
        self.engines: dict[int, regorus.Engine] = {}
        self.vms: dict[int, regorus.Rvm] = {}

    def drop_retired(self) -> None:
        """Drop, here on the thread that made them, the engines of RegorusEngines gone."""
        if _RETIRED:
            for gone in _RETIRED.intersection(self.engines):
                del self.engines[gone]
            for gone in _RETIRED.intersection(self.vms):
                del self.vms[gone]


_THREAD_ENGINES = _ThreadEngines()
_NEXT_ID = itertools.count()
# Ids of RegorusEngines gone, whose engines threads drop at their next evaluation. (An id is a
# few bytes, kept because a thread that holds an engine for it may not have evaluated since.)
_RETIRED: set[int] = set()


def _retire(engine_id: int) -> None:
    _RETIRED.add(engine_id)  # a set's add is atomic: safe from whichever thread collects


def live_engines() -> int:
    """For how many bundles this thread holds regorus engines (each bundle it evaluated, until
    the bundle's ``RegorusEngine`` goes and the thread evaluates again)."""
    return len(_THREAD_ENGINES.engines.keys() | _THREAD_ENGINES.vms.keys())


class RegorusEngine:
    """In-process Rego with regorus.

    ``evaluate`` and ``classify`` run on regorus's compiled VM (RVM), one program for the
    bundle's workflow packages, for the packages and inputs where its answer is surely the
    interpreter's (``vm_plans``; ``interpreted`` says why the others are not), and on the
    interpreter otherwise; tests, rules and coverage always on the interpreter.

    A regorus engine, VM or program may only be used, and dropped, on the thread that made it,
    so each thread that evaluates gets its own (loaded from the same bundle on first use).
    """

    name = "regorus"

    def __init__(
        self, bundle: Bundle, *, include_tests: bool = False, coverage: bool = False
    ) -> None:
        self.version = importlib.metadata.version("gordon-to-regorus")
        self._coverage = coverage
        self._modules = dict(bundle.modules)
        self._sources = dict(bundle.modules)
        if include_tests:
            self._sources.update(bundle.tests)
        self._data = orjson.dumps(bundle.data).decode()
        self._id = next(_NEXT_ID)
        weakref.finalize(self, _retire, self._id)
        self._packages = set(self._engine().get_packages())
        self._tests = bundle.tests if include_tests else {}
        rules = self.rules()
        self._classifying = {f"data.{r.package}" for r in rules if r.name == CLASSIFY_RULE}
        self._warning = {f"data.{r.package}" for r in rules if r.name == "warn"}
        self.vm_plans: dict[str, VmPlan] = {}
        self.interpreted: dict[str, str] = {}  # the workflow packages the VM does not answer
        self._program = b""  # the VM's program (serialized: a Program is thread-bound too)
        self._entry_points: frozenset[str] = frozenset()
        if not coverage:  # coverage is the interpreter's
            self._compile(bundle, {(f"data.{r.package}", r.name) for r in rules})

    def _compile(self, bundle: Bundle, defined: set[tuple[str, str]]) -> None:
        """Plan which workflow packages the VM answers and compile them into one program."""
        workflows = [p for p in self._packages if p.startswith(package_of(""))]
        plans, self.interpreted = plan_packages(self._syntax(), bundle.data, workflows)
        entry_points = [
            f"{package}.{rule}"
            for package in sorted(plans)
            for rule in (*REASON_RULES, CLASSIFY_RULE)
            if (package, rule) in defined
        ]
        if not entry_points:
            return
        try:
            program = regorus.Program.compile_from_modules(
                self._data, sorted(self._modules.items()), entry_points
            )
            self._program = bytes(program.serialize_binary())
        except Exception as exc:  # regorus reports what it cannot compile as plain exceptions
            why = f"regorus's VM does not compile it: {_first_line(exc)}"
            logging.getLogger("mandate").warning(
                "bundle %s: %s; the interpreter evaluates it", bundle.digest[:12], why
            )
            self.interpreted.update(dict.fromkeys(plans, why))
            return
        self.vm_plans = plans
        self._entry_points = frozenset(entry_points)

    def _engine(self) -> regorus.Engine:
        engines = _THREAD_ENGINES.engines
        _THREAD_ENGINES.drop_retired()
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

    def _vm(self) -> regorus.Rvm:
        vms = _THREAD_ENGINES.vms
        _THREAD_ENGINES.drop_retired()
        vm = vms.get(self._id)
        if vm is None:
            try:
                program, partial = regorus.Program.deserialize_binary(self._program)
                if partial:
                    raise EngineError("regorus's VM program deserialized only in part")
                vm = regorus.Rvm()
                vm.load_program(program)
                vm.set_data_json(self._data)
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"regorus's VM does not load: {_first_line(exc)}") from exc
            vms[self._id] = vm
        return vm

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
        """Evaluate ``deny``, ``hold`` and (where the package has it) ``warn``."""
        package = package_of(workflow)
        if package not in self._packages:
            raise EngineError(f"no Rego package {package} in the bundle")
        rules = [rule for rule in REASON_RULES if rule != "warn" or package in self._warning]
        return result_of(self._values(package, rules, input_))

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """Evaluate the workflow's ``case_type`` rule, if its package has one."""
        package = package_of(workflow)
        if package not in self._classifying:
            return None
        value = self._values(package, [CLASSIFY_RULE], input_).get(CLASSIFY_RULE)
        return _case_type(None if value == _UNDEFINED else value, package)

    def _values(self, package: str, rules: list[str], input_: dict[str, Any]) -> dict[str, Any]:
        """The rules' values for this input (the input set once): the VM's where its plan for
        the package admits the input and its answer has nothing undefined in it, else the
        interpreter's. A rule left out is undefined."""
        try:
            text = orjson.dumps(input_).decode()
        except Exception as exc:
            raise EngineError(f"regorus failed on {package}: {_first_line(exc)}") from exc
        plan = self.vm_plans.get(package)
        if plan is not None and plan.admits(input_):
            found = self._ask_vm(package, plan, rules, text)
            if found is not None:
                return found
        engine = self._engine()
        try:
            engine.set_input_json(text)
            return {
                rule: orjson.loads(engine.eval_rule_as_json(f"{package}.{rule}")) for rule in rules
            }
        except Exception as exc:
            # Not kept by the traceback's frame, which may be collected on another thread: a
            # regorus engine dropped anywhere but on its own thread raises and leaks.
            del engine
            raise EngineError(f"regorus failed on {package}: {_first_line(exc)}") from exc

    def _ask_vm(
        self, package: str, plan: VmPlan, rules: list[str], text: str
    ) -> dict[str, Any] | None:
        """The VM's values, or None where the interpreter must answer: an undefined value
        inside an answer (the VM keeps one where the interpreter drops the whole value), or an
        undefined rule that the VM leaves undefined where its definitions disagree."""
        vm = self._vm()
        try:
            vm.set_input_json(text)
            answers = {
                rule: vm.execute_entry_point(f"{package}.{rule}")
                for rule in rules
                if f"{package}.{rule}" in self._entry_points
            }
        except Exception as exc:
            del vm  # as in _values: never kept by a traceback
            raise EngineError(f"regorus failed on {package}: {_first_line(exc)}") from exc
        found: dict[str, Any] = {}
        for rule, answer in answers.items():
            if answer == _UNDEFINED_JSON and rule not in plan.recheck:
                continue
            if _UNDEFINED_JSON in answer:
                return None
            found[rule] = orjson.loads(answer)
        return found

    def run_tests(self) -> list[RegoTestResult]:
        """Evaluate every ``test_`` rule of the test modules, as ``opa test`` does."""
        engine = self._engine()
        results = []
        for path, source in sorted(self._tests.items()):
            package, names = unit_tests_of(source)
            for name in names:
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

    def _syntax(self) -> list[dict[str, Any]]:
        """The regorus syntax trees of the bundle's modules (test modules left out)."""
        return [
            module
            for module in orjson.loads(self._engine().get_ast_as_json())
            if module["source"]["file"] in self._modules
        ]

    def rules(self) -> list[RegoRule]:
        """Every rule definition of the bundle's modules (test modules left out), in order."""
        found: list[RegoRule] = []
        for module in self._syntax():
            path = module["source"]["file"]
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


def unit_tests_of(source: str) -> tuple[str, list[str]]:
    """A test module's package and its ``test_`` rules, in order."""
    return _package_line(source), _test_rules(source)


def _test_rules(source: str) -> list[str]:
    names: list[str] = []
    for line in source.splitlines():
        if line.startswith("test_"):
            name = line.split()[0].split("(")[0]
            if name not in names:
                names.append(name)
    return names


BUNDLE_DOCUMENT = "mandate_bundle"  # the data document where the gateway names what it pushed
POLICY_PREFIX = "mandate/"  # the Policy API ids of the modules the gateway pushed


class OpaServerEngine:
    """Rego evaluated by an OPA server (``opa-python-client``), which the gateway loads itself.

    ``push`` puts the bundle on the server: each Rego module through the Policy API
    (``PUT /v1/policies/mandate/<path>``, after deleting the modules it pushed before) and
    ``data.json`` through the Data API (``PUT /v1/data``), with the bundle's digest beside it
    (``data.mandate_bundle.digest``), written last, so that a server holds a digest only once
    every file of that bundle is in. Every evaluation asks, in one query (one snapshot of the
    server's store), for the digest and the workflow's document: a server holding another
    bundle, or one half pushed, fails closed (``EngineError``), never a verdict of a bundle
    that is not the active one.
    """

    name = "opa-server"

    def __init__(
        self,
        url: str,
        bundle: Bundle,
        *,
        timeout: float = 2.0,
        classifying: frozenset[str] = frozenset(),
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
        self._timeout = timeout
        self.version = importlib.metadata.version("opa-python-client")
        self.url = url
        self.bundle = bundle
        self._classifying = classifying

    # -- the server's copy of the bundle --------------------------------------------------

    def push(self) -> None:
        """Load the bundle onto the server (see the class docstring); EngineError if the server
        refuses a file or cannot be reached."""
        client = self._client
        try:
            client.update_or_create_data({"digest": None, "pushing": self.bundle.digest},
                                         BUNDLE_DOCUMENT)  # fmt: skip
            for old in client.get_policies_list():
                if old.startswith(POLICY_PREFIX):
                    client.delete_policy(old)
            for path, source in sorted(self.bundle.modules.items()):
                # rego_compat=False: the server gets the Rego as written, never a rewrite of it.
                client.update_policy_from_string(source, POLICY_PREFIX + path, rego_compat=False)
            document = {**self.bundle.data, BUNDLE_DOCUMENT: {"digest": self.bundle.digest}}
            # PUT /v1/data (the root document) in one write: the client's data call always
            # adds a path, so its session is asked directly.
            answer = client._session.put(
                f"{client.root_url}/data", json=document, timeout=self._timeout
            )
            if answer.status_code != 204:
                raise EngineError(f"PUT /v1/data answered {answer.status_code}: {answer.text}")
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(
                f"the OPA server at {self.url} did not take bundle {self.bundle.digest[:12]}: {exc}"
            ) from exc

    def held(self) -> str | None:
        """The digest of the bundle the server holds (None: none, or one half pushed)."""
        try:
            answer = self._client.get_data(f"{BUNDLE_DOCUMENT}/digest")
        except Exception as exc:
            if type(exc).__name__ == "PolicyNotFoundError":
                return None  # the server holds no document there: nothing was pushed
            raise EngineError(f"OPA server at {self.url} failed: {exc}") from exc
        digest = answer.get("result")
        return digest if isinstance(digest, str) else None

    def sync(self) -> bool:
        """Push the bundle if the server holds none (it restarted, or a push was cut short);
        True if it pushed. A server holding another bundle is left as it is: someone else
        loaded it, and evaluations fail closed until the bundle is activated again."""
        if self.held() is not None:
            return False
        self.push()
        return True

    def _mismatch(self, digest: Any) -> str:
        held = "no bundle" if not isinstance(digest, str) else f"bundle {digest[:12]}"
        return (
            f"the OPA server at {self.url} holds {held}, not the active bundle "
            f"{self.bundle.digest[:12]}: activate the bundle again to push it"
        )

    # -- evaluation -------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        """Whether the OPA server answers its /health endpoint and holds the active bundle."""
        if not self._client.check_health():
            return f"the OPA server at {self.url} does not answer /health"
        try:
            digest = self.held()
        except EngineError as exc:
            return str(exc)
        return None if digest == self.bundle.digest else self._mismatch(digest)

    def _ask(self, workflow: str, rule: str | None, input_: dict[str, Any]) -> list[Any]:
        """One query: the digest the server holds and the values of the workflow's package (or
        of one of its rules), from one snapshot of its store. The values: [] where undefined."""
        target = f"data.mandate.workflows[{orjson.dumps(workflow).decode()}]"
        if rule is not None:
            target += f".{rule}"
        query = f"digest := data.{BUNDLE_DOCUMENT}.digest; values := [x | x := {target}]"
        try:
            answer = self._client.ad_hoc_query(query, input_data=input_)
        except Exception as exc:
            raise EngineError(f"OPA server at {self.url} failed: {exc}") from exc
        results = answer.get("result") if isinstance(answer, dict) else None
        digest = results[0].get("digest") if results else None
        if digest != self.bundle.digest:
            raise EngineError(self._mismatch(digest))
        values = results[0].get("values") if results else None
        if not isinstance(values, list):
            raise EngineError(f"OPA server at {self.url} answered {answer!r}")
        return values

    def evaluate(self, workflow: str, input_: dict[str, Any]) -> RegoResult:
        """The workflow's package document for this input: its deny, hold and warn."""
        values = self._ask(workflow, None, input_)
        if not values or not isinstance(values[0], dict):
            raise EngineError(f"OPA server at {self.url} has no package for workflow {workflow}")
        return result_of(values[0])

    def classify(self, workflow: str, input_: dict[str, Any]) -> str | None:
        """The workflow's ``case_type`` rule for this input, where its package has one."""
        if workflow not in self._classifying:
            return None
        values = self._ask(workflow, CLASSIFY_RULE, input_)
        return _case_type(values[0] if values else None, package_of(workflow))
