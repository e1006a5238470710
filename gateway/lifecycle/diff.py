"""What differs between two bundles, for the people who review a change (``mandate policy
diff A B``).

- **Rules.** Each rule of the Rego modules (unit tests left out), named by its package, its
  name and the reason code it gives (``hold contains {"code": "high_value", ...}``), as
  ``mandate policy test`` names it in coverage, is compared by what it says: its syntax tree
  as regorus parses it, without positions, so layout and comments do not count. Rules with one
  name and code are compared as a group (a rule may be written in several parts).
- **Data.** The JSON paths of ``data.json`` whose values differ, old → new (a list is one
  value).
- **Case types.** Per workflow, the case types added or removed, and the settings of the others
  that changed: the initial level and the quorum (with their defaults), and any other.
- **Files.** Every path added, removed or changed, Casbin and decision cases included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.policy.bundle import Bundle
from gateway.policy.rego import RegorusEngine

__all__ = ["BundleDiff", "CaseTypeChange", "DataChange", "RuleChange", "diff_bundles"]

Change = Literal["added", "removed", "changed"]
_ABSENT = object()  # a path or setting that is not there
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RuleChange:
    """A rule (or the parts of one) added, removed or changed; ``where`` is its file and line
    (in B, or in A when it was removed)."""

    change: Change
    package: str
    name: str
    code: str | None
    where: str

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "package": self.package,
            "name": self.name,
            "code": self.code,
            "where": self.where,
        }


@dataclass(frozen=True)
class DataChange:
    """One JSON path of data.json: its value in A and in B (absent: None, with ``change``)."""

    change: Change
    path: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "path": self.path, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class CaseTypeChange:
    """A case type added or removed, or its settings that changed (name → (old, new))."""

    change: Change
    workflow: str
    case_type: str
    settings: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "workflow": self.workflow,
            "case_type": self.case_type,
            "settings": {k: {"old": o, "new": n} for k, (o, n) in self.settings.items()},
        }


@dataclass(frozen=True)
class BundleDiff:
    """Everything that differs from bundle A to bundle B."""

    digests: tuple[str, str]
    rules: list[RuleChange]
    data: list[DataChange]
    case_types: list[CaseTypeChange]
    files: list[tuple[Change, str]]

    @property
    def same(self) -> bool:
        """True when the two bundles are the same files."""
        return self.digests[0] == self.digests[1]

    def to_json(self) -> dict[str, Any]:
        """As ``mandate policy diff --json`` prints it."""
        return {
            "a": self.digests[0],
            "b": self.digests[1],
            "rules": [r.to_json() for r in self.rules],
            "data": [d.to_json() for d in self.data],
            "case_types": [c.to_json() for c in self.case_types],
            "files": [{"change": change, "path": path} for change, path in self.files],
        }


def diff_bundles(a: Bundle, b: Bundle) -> BundleDiff:
    """What differs from ``a`` to ``b``; EngineError when a module does not parse."""
    return BundleDiff(
        digests=(a.digest, b.digest),
        rules=_rule_changes(_rules(a), _rules(b)),
        data=list(_data_changes(a.data, b.data, "")),
        case_types=_case_type_changes(a, b),
        files=_file_changes(a, b),
    )


# -- rules -----------------------------------------------------------------------------------

_RuleKey = tuple[str, str, str | None]  # package, name, reason code


def _rules(bundle: Bundle) -> dict[_RuleKey, tuple[list[str], str]]:
    """The bundle's rules by package, name and code (as coverage names them): what each part
    says, and where the first one is."""
    found: dict[_RuleKey, tuple[list[str], str]] = {}
    for rule in RegorusEngine(bundle).rules():
        key = (rule.package, rule.name, rule.code)
        parts, where = found.get(key, ([], f"{rule.module}:{rule.line}"))
        parts.append(rule.meaning)
        found[key] = (parts, where)
    return found


def _rule_changes(
    a: dict[_RuleKey, tuple[list[str], str]], b: dict[_RuleKey, tuple[list[str], str]]
) -> list[RuleChange]:
    changes = []
    for key in sorted(set(a) | set(b), key=lambda k: (k[0], k[1], k[2] or "")):
        if key not in b:
            changes.append(RuleChange("removed", *key, a[key][1]))
        elif key not in a:
            changes.append(RuleChange("added", *key, b[key][1]))
        elif sorted(a[key][0]) != sorted(b[key][0]):
            changes.append(RuleChange("changed", *key, b[key][1]))
    return changes


# -- data, case types, files -----------------------------------------------------------------


def _path(parent: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{orjson.dumps(key).decode()}]"


def _data_changes(old: Any, new: Any, path: str) -> Iterator[DataChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _data_changes(old.get(key, _ABSENT), new.get(key, _ABSENT), _path(path, key))
    elif old is _ABSENT:
        yield DataChange("added", path, new=new)
    elif new is _ABSENT:
        yield DataChange("removed", path, old=old)
    elif old != new or type(old) is not type(new):
        yield DataChange("changed", path, old, new)


def _case_type_changes(a: Bundle, b: Bundle) -> list[CaseTypeChange]:
    changes = []
    for workflow in sorted(set(a.workflows) | set(b.workflows)):
        before, after = a.workflows.get(workflow), b.workflows.get(workflow)
        old = {} if before is None else before.case_types
        new = {} if after is None else after.case_types
        for case_type in sorted(set(old) - set(new)):
            changes.append(CaseTypeChange("removed", workflow, case_type))
        for case_type in sorted(set(new) - set(old)):
            changes.append(CaseTypeChange("added", workflow, case_type))
        if before is None or after is None:
            continue
        for case_type in sorted(set(old) & set(new)):
            settings: dict[str, tuple[Any, Any]] = {
                "initial_level": (before.initial_level(case_type), after.initial_level(case_type)),
                "quorum": (before.quorum(case_type), after.quorum(case_type)),
            }
            for name in sorted((set(old[case_type]) | set(new[case_type])) - set(settings)):
                settings[name] = (old[case_type].get(name), new[case_type].get(name))
            differ = {k: (o, n) for k, (o, n) in settings.items() if o != n}
            if differ:
                changes.append(CaseTypeChange("changed", workflow, case_type, differ))
    return changes


def _file_changes(a: Bundle, b: Bundle) -> list[tuple[Change, str]]:
    changes: list[tuple[Change, str]] = []
    for path in sorted(set(a.files) | set(b.files)):
        if path not in b.files:
            changes.append(("removed", path))
        elif path not in a.files:
            changes.append(("added", path))
        elif a.files[path] != b.files[path]:
            changes.append(("changed", path))
    return changes
