"""Which workflow packages regorus's compiled VM (RVM) may answer, and for which inputs.

The VM answers like the interpreter for what it can express, but not when evaluation goes
wrong. The interpreter raises on a runtime error (``to_number("abc")``, a division by zero,
two values for one rule, iterating over a string), and the gateway fails closed on it. The VM
of regorus 0.13 does as OPA does by default, with no switch for it in the Python binding: the
failing expression is undefined, and evaluation goes on, so that a ``deny`` whose body fails
that way is silently not there. It also lets a body go on past ``x := <undefined>``, and leaves
an undefined value in a collection (a reason whose ``sprintf`` has an argument missing comes out
as ``"<undefined>"``).

So the VM answers only packages made of what cannot go wrong in either engine, checked on their
syntax tree here: comparisons, type checks, references into ``input``, ``data`` and the
package's own rules, ``sprintf`` with ``%v`` verbs and a literal list of as many arguments, and
``to_number`` of a number ``data.json`` holds or of an ``input`` field. Those fields are checked
on each input (``VmPlan.admits``): one that does not read as a number sends that input to the
interpreter, which answers it exactly (an ``EngineError`` if it fails). Anything else in a
package (arithmetic, iteration, assignments in bodies, helper sets, functions, other builtins,
imports) leaves the whole package to the interpreter.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["VmPlan", "plan_packages"]

REASON_RULES = frozenset({"deny", "hold", "warn"})
CLASSIFY_RULE = "case_type"
_TYPE_CHECKS = frozenset(
    {"is_number", "is_string", "is_boolean", "is_null", "is_array", "is_object", "is_set"}
)
_COMPARISONS = frozenset({"Eq", "Ne", "Lt", "Le", "Gt", "Ge"})
_SCALARS = frozenset({"String", "RawString", "Number", "Bool", "Null"})
_IMPORTS = ("rego.v1", "future.keywords")
# What both engines read as a number without fail. Narrower than what they accept: a string
# outside it is only evaluated by the interpreter, never wrongly.
_NUMBER = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?")
_VERB = re.compile(r"%.")


def reads_as_number(value: Any) -> bool:
    """Whether ``to_number`` surely succeeds on this JSON value in both engines."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and _NUMBER.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class VmPlan:
    """How the VM answers one package.

    ``numeric``: the ``input`` fields the package passes to ``to_number``; an input where one
    is present and does not read as a number goes to the interpreter. ``recheck``: the rules
    with several definitions, which the VM leaves undefined where they disagree (where the
    interpreter raises), so an undefined answer of theirs is asked of the interpreter again.
    """

    numeric: tuple[tuple[str, ...], ...] = ()
    recheck: frozenset[str] = frozenset()

    def admits(self, input_: Mapping[str, Any]) -> bool:
        """Whether the VM's answer for this input is the interpreter's."""
        for path in self.numeric:
            value: Any = input_
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None and not reads_as_number(value):
                return False
        return True


class _Unsafe(Exception):
    """Something in the package the VM may answer differently."""


def plan_packages(
    modules: Iterable[dict[str, Any]], data: Mapping[str, Any], packages: Iterable[str]
) -> tuple[dict[str, VmPlan], dict[str, str]]:
    """For each of ``packages`` (``data.mandate.workflows.parking``): its plan, or why the
    interpreter answers it. ``modules``: the regorus syntax trees of the bundle's modules."""
    by_package: dict[str, list[dict[str, Any]]] = {}
    for module in modules:
        by_package.setdefault(f"data.{_path_of(module['ast']['package']['refr'])}", []).append(
            module["ast"]
        )
    roots = {package.split(".")[1] for package in by_package}
    plans: dict[str, VmPlan] = {}
    reasons: dict[str, str] = {}
    for package in sorted(packages):
        try:
            plans[package] = _Package(by_package.get(package, []), data, roots).plan()
        except _Unsafe as exc:
            reasons[package] = str(exc)
    return plans, reasons


def _path_of(node: dict[str, Any]) -> str:
    """``a.b.c`` of a reference made of a variable and literal fields, else ``_Unsafe``."""
    return ".".join(_fields(node))


def _fields(node: dict[str, Any]) -> list[str]:
    kind, body = next(iter(node.items()))
    if kind == "Var":
        return [body["value"]]
    if kind == "RefDot":
        return [*_fields(body["refr"]), body["field"][1]]
    raise _Unsafe(f"a reference through {kind}")


class _Package:
    """The check of one package's rules (from every module that declares it)."""

    def __init__(
        self, modules: list[dict[str, Any]], data: Mapping[str, Any], roots: set[str]
    ) -> None:
        self._modules = modules
        self._data = data
        self._roots = roots  # first names of the bundle's packages: data.<root> is rules
        self._numeric: set[tuple[str, ...]] = set()
        self._used: set[str] = set()  # the package's rules that its rules refer to
        self._rules: dict[str, list[dict[str, Any]]] = {}
        for module in modules:
            for rule in module["rules"]:
                kind, body = next(iter(rule.items()))
                head = body if kind == "Default" else next(iter(body["head"].values()))
                self._rules.setdefault(_path_of(head["refr"]), []).append(rule)

    def plan(self) -> VmPlan:
        for module in self._modules:
            for item in module["imports"]:
                path = _path_of(item["refr"])
                if not path.startswith(_IMPORTS):
                    raise _Unsafe(f"it imports {path}")
        for rules in self._rules.values():
            for rule in rules:
                self._rule(rule)
        definitions = Counter(
            name
            for name, rules in self._rules.items()
            for rule in rules
            if "Compr" in rule.get("Spec", {}).get("head", {})
        )
        recheck = {name for name, n in definitions.items() if n > 1}
        if recheck - {CLASSIFY_RULE} or recheck & self._used:
            name = sorted(recheck - {CLASSIFY_RULE} or recheck & self._used)[0]
            raise _Unsafe(f"rule {name} has several definitions that may disagree")
        return VmPlan(tuple(sorted(self._numeric)), frozenset(recheck))

    def _rule(self, rule: dict[str, Any]) -> None:
        kind, body = next(iter(rule.items()))
        if kind == "Default":
            if body["args"]:
                raise _Unsafe("a default function")
            self._constant(body["value"])
            return
        head_kind, head = next(iter(body["head"].items()))
        name = _path_of(head["refr"])
        if head_kind == "Set" and name in REASON_RULES:
            self._value(head["key"])
        elif head_kind == "Compr" and "." not in name:
            if head["assign"] is not None:  # None: ``name if …``, whose value is true
                self._expr(head["assign"]["value"])
        else:
            raise _Unsafe(f"rule {name} is a {head_kind} rule other than deny, hold or warn")
        for query in body["bodies"]:
            if query["is_else"] or query["assign"] is not None:
                raise _Unsafe(f"rule {name} has an else")
            for stmt in query["query"]["stmts"]:
                if stmt.get("with_mods"):
                    raise _Unsafe(f"rule {name} uses with")
                literal_kind, literal = next(iter(stmt["literal"].items()))
                if literal_kind not in ("Expr", "NotExpr"):
                    raise _Unsafe(f"rule {name} has a {literal_kind} statement")
                self._expr(literal["expr"])

    def _constant(self, node: dict[str, Any]) -> None:
        """A literal, made only of literals."""
        kind, body = next(iter(node.items()))
        if kind in _SCALARS:
            return
        if kind in ("Array", "Set"):
            for item in body["items"]:
                self._constant(item)
        elif kind == "Object":
            for _, key, value in body["fields"]:
                self._constant(key)
                self._constant(value)
        else:
            raise _Unsafe(f"a default value that is a {kind}")

    def _value(self, node: dict[str, Any]) -> None:
        """A reason: a literal collection may hold any expression, since an undefined part
        shows in the VM's answer (as ``"<undefined>"``), which then goes to the interpreter."""
        kind, body = next(iter(node.items()))
        if kind in ("Array", "Set"):
            for item in body["items"]:
                self._value(item)
        elif kind == "Object":
            keys = [_literal_string(key) for _, key, _ in body["fields"]]
            if len(set(keys)) != len(keys):
                raise _Unsafe("an object with a key twice")
            for _, _, value in body["fields"]:
                self._value(value)
        else:
            self._expr(node)

    def _expr(self, node: dict[str, Any]) -> None:
        kind, body = next(iter(node.items()))
        if kind in _SCALARS:
            return
        if kind in ("Var", "RefDot"):
            self._reference(_fields(node))
        elif kind == "BoolExpr" and body["op"] in _COMPARISONS:
            self._expr(body["lhs"])
            self._expr(body["rhs"])
        elif kind == "Call":
            self._call(_path_of(body["fcn"]), body["params"])
        else:
            raise _Unsafe(f"a {kind} expression")

    def _reference(self, fields: list[str]) -> None:
        root = fields[0]
        if root == "input":
            return
        if root == "data":
            if len(fields) < 2 or fields[1] in self._roots:
                raise _Unsafe("a reference to rules through data")
            return
        if root not in self._rules:
            raise _Unsafe(f"a reference to {root}, not a rule of the package")
        if root in REASON_RULES:  # the VM may hold an undefined part the answer then shows
            raise _Unsafe(f"a reference to {root} in a rule")
        self._used.add(root)

    def _call(self, name: str, params: list[dict[str, Any]]) -> None:
        if name in _TYPE_CHECKS and len(params) == 1:
            self._expr(params[0])
        elif name == "to_number" and len(params) == 1:
            self._number(params[0])
        elif name == "sprintf" and len(params) == 2:
            text = _literal_string(params[0])
            verbs = _VERB.findall(text)
            items = params[1].get("Array", {}).get("items")
            plain = all(v in ("%v", "%%") for v in verbs) and "%" not in _VERB.sub("", text)
            if items is None or not plain or len(items) != verbs.count("%v"):
                raise _Unsafe("a sprintf other than of %v verbs and a literal list to match")
            for item in items:
                self._expr(item)
        else:
            raise _Unsafe(f"a call of {name}")

    def _number(self, node: dict[str, Any]) -> None:
        """An argument of ``to_number``: a number, an input field (checked on each input) or
        a value of ``data.json`` (checked now), directly or through a rule naming it."""
        kind, _ = next(iter(node.items()))
        if kind == "Number":
            return
        if kind not in ("Var", "RefDot"):
            raise _Unsafe(f"to_number of a {kind}")
        fields = self._through_alias(_fields(node))
        if fields[0] == "input":
            self._numeric.add(tuple(fields[1:]))
            return
        if fields[0] != "data":
            raise _Unsafe(f"to_number of {'.'.join(fields)}")
        self._reference(fields)
        value: Any = self._data
        for key in fields[1:]:
            value = value.get(key) if isinstance(value, dict) else None
        if not reads_as_number(value):
            raise _Unsafe(f"to_number of {'.'.join(fields)}, which is not a number")

    def _through_alias(self, fields: list[str]) -> list[str]:
        """``cfg.limit`` as ``data.workflows.parking.limit`` where ``cfg := data.workflows.
        parking`` is the rule's one definition; other references as they are."""
        rules = self._rules.get(fields[0], [])
        if len(rules) != 1 or "Spec" not in rules[0]:
            return fields
        spec = rules[0]["Spec"]
        compr = spec["head"].get("Compr")
        if spec["bodies"] or compr is None or compr["assign"] is None:
            return fields
        self._used.add(fields[0])
        return [*_fields(compr["assign"]["value"]), *fields[1:]]


def _literal_string(node: dict[str, Any]) -> str:
    kind, body = next(iter(node.items()))
    if kind not in ("String", "RawString"):
        raise _Unsafe(f"a {kind} where a literal string is needed")
    value = body["value"]
    assert isinstance(value, str)
    return value
