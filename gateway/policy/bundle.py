"""A policy bundle: a directory of Rego modules, a Casbin model and policy, data and tests.

Its digest is SHA-256 over its files in sorted path order (each as path, NUL, length, NUL,
bytes), so a decision that names a digest names exactly the files that made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Bundle", "BundleError", "WorkflowConfig", "bundle_digest", "load_bundle"]

MODEL_FILE = Path("casbin/model.conf")
POLICY_FILE = Path("casbin/policy.csv")
DATA_FILE = Path("data.json")
REGO_DIR = Path("rego")


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message says which file and what to fix."""


@dataclass(frozen=True)
class WorkflowConfig:
    """What the bundle's data says about one workflow."""

    name: str
    case_types: dict[str, dict[str, Any]]
    approval_ttl_hours: float = 24.0

    def initial_level(self, case_type: str) -> int:
        """The autonomy level a case type starts at (1, advisory, when the data is silent)."""
        return int(self.case_types.get(case_type, {}).get("initial_level", 1))

    def quorum(self, case_type: str) -> int:
        """How many approvals a held action of this case type needs (default 1)."""
        return int(self.case_types.get(case_type, {}).get("quorum", 1))


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle. ``modules`` and ``tests`` map relative paths to Rego source."""

    root: Path
    digest: str
    modules: dict[str, str]
    tests: dict[str, str]
    data: dict[str, Any]
    casbin_model: str
    casbin_policy: str
    workflows: dict[str, WorkflowConfig] = field(default_factory=dict)


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def bundle_digest(root: Path) -> str:
    """SHA-256 (hex) over the bundle's files in a defined order."""
    digest = hashlib.sha256()
    for path in _files(root):
        content = path.read_bytes()
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(str(len(content)).encode() + b"\0")
        digest.update(content)
    return digest.hexdigest()


def _read(root: Path, relative: Path) -> str:
    path = root / relative
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{root}: missing {relative}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None


def load_bundle(root: Path) -> Bundle:
    """Read a bundle directory; raise BundleError naming the file that is wrong."""
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory (a bundle holds rego/, casbin/, data.json)")
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    for path in sorted((root / REGO_DIR).glob("*.rego")):
        target = tests if path.stem.endswith("_test") else modules
        target[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    if not modules:
        raise BundleError(f"{root}: no Rego modules in {REGO_DIR}/")
    try:
        data = orjson.loads(_read(root, DATA_FILE))
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{root / DATA_FILE}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("workflows"), dict):
        raise BundleError(f"{root / DATA_FILE}: needs an object with a 'workflows' object")
    workflows = {}
    for name, config in data["workflows"].items():
        if not isinstance(config, dict) or not isinstance(config.get("case_types", {}), dict):
            raise BundleError(f"{root / DATA_FILE}: workflows.{name} must be an object")
        workflows[name] = WorkflowConfig(
            name=name,
            case_types=config.get("case_types", {}),
            approval_ttl_hours=float(config.get("approval_ttl_hours", 24)),
        )
    return Bundle(
        root=root,
        digest=bundle_digest(root),
        modules=modules,
        tests=tests,
        data=data,
        casbin_model=_read(root, MODEL_FILE),
        casbin_policy=_read(root, POLICY_FILE),
        workflows=workflows,
    )
