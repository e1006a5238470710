"""A policy bundle: a directory of Rego modules, a Casbin model and policy, data and tests.

Its digest is SHA-256 over its files in sorted path order (each as path, NUL, length, NUL,
bytes), so a decision that names a digest names exactly the files that made it. The same files
make the same bundle wherever they come from: a directory (``load_bundle``), or the database and
an upload (``bundle_from_files``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

__all__ = [
    "DEFAULT_AMOUNT_SCALE",
    "MAX_AMOUNT_SCALE",
    "MAX_FILES",
    "Bundle",
    "BundleError",
    "PersonalData",
    "WorkflowConfig",
    "bundle_digest",
    "bundle_from_files",
    "check_file_path",
    "digest_files",
    "file_manifest",
    "load_bundle",
    "read_bundle_files",
]

MODEL_FILE = Path("casbin/model.conf")
POLICY_FILE = Path("casbin/policy.csv")
DATA_FILE = Path("data.json")
REGO_DIR = Path("rego")
CASES_DIR = "tests"
MAX_FILES = 500
MAX_PATH = 256


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message says which file and what to fix.

    ``path`` is the file inside the bundle that is wrong, when one is (``rego/claims.rego``).
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


DEFAULT_AMOUNT_SCALE = 2
MAX_AMOUNT_SCALE = 18
# A field a workflow seals: params.x or context.x, down nested objects (params.customer.email).
_FIELD_PATH = re.compile(r"(params|context)(\.[A-Za-z0-9_-]{1,64}){1,8}")


@dataclass(frozen=True)
class PersonalData:
    """The fields of a workflow's proposals that hold personal data, and whose it is.

    ``data_subject`` is the path of the field that holds the data subject's id (a customer
    number, say); ``sealed`` the paths of the other fields that hold their data. Every one of
    them, the id included, is sealed in the ledger and erased with the subject
    (``gateway.decision.personal``).
    """

    data_subject: str
    sealed: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every sealed path, the data subject's first."""
        return (self.data_subject, *self.sealed)


@dataclass(frozen=True)
class WorkflowConfig:
    """What the bundle's data says about one workflow.

    ``action_types`` maps each action type an executor may propose in the workflow to the case
    types it may be (the unit of autonomy: its level, quorum and audit rate). The bundle decides
    the case type, never the proposer: see ``gateway.decision.steps.classify``.
    ``amount_scale`` is the most decimals an amount (``params.amount``) may carry;
    ``signed_amounts`` lets amounts be negative (they are positive otherwise).
    ``resource_arguments`` names, per action type that is an MCP tool, the tool argument whose
    value the MCP proxy proposes as the resource (``"mcp": {"resource": "path"}``), so that
    approvers see what the call acts on.
    ``personal_data`` names the fields that hold personal data, sealed in the ledger.
    """

    name: str
    case_types: dict[str, dict[str, Any]]
    action_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    resource_arguments: dict[str, str] = field(default_factory=dict)
    approval_ttl_hours: float = 24.0
    amount_scale: int = DEFAULT_AMOUNT_SCALE
    signed_amounts: bool = False
    personal_data: PersonalData | None = None

    def initial_level(self, case_type: str) -> int:
        """The autonomy level a case type starts at (1, advisory, when the data is silent)."""
        return int(self.case_types.get(case_type, {}).get("initial_level", 1))

    def quorum(self, case_type: str) -> int:
        """How many approvals a held action of this case type needs (default 1)."""
        return int(self.case_types.get(case_type, {}).get("quorum", 1))


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle. ``modules`` and ``tests`` map relative paths to Rego source; ``cases``
    maps ``tests/*.yaml`` paths to decision cases (YAML text); ``files`` holds every file's
    bytes, as digested."""

    root: Path
    digest: str
    modules: dict[str, str]
    tests: dict[str, str]
    data: dict[str, Any]
    casbin_model: str
    casbin_policy: str
    workflows: dict[str, WorkflowConfig] = field(default_factory=dict)
    cases: dict[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)


def _order(path: str) -> tuple[str, ...]:
    """Sorted path order: by path components, as ``sorted()`` orders ``pathlib.Path``s (so the
    digest of a directory is the one it always had)."""
    return tuple(path.split("/"))


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def digest_files(files: Mapping[str, bytes]) -> str:
    """SHA-256 (hex) over files given as relative POSIX path → bytes, in the defined order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=_order):
        content = files[path]
        digest.update(path.encode() + b"\0")
        digest.update(str(len(content)).encode() + b"\0")
        digest.update(content)
    return digest.hexdigest()


def bundle_digest(root: Path) -> str:
    """SHA-256 (hex) over the bundle's files in a defined order."""
    return digest_files(read_bundle_files(root))


def read_bundle_files(root: Path) -> dict[str, bytes]:
    """Every file of a bundle directory (hidden ones left out), by relative POSIX path."""
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory (a bundle holds rego/, casbin/, data.json)")
    files: dict[str, bytes] = {}
    for path in _files(root):
        relative = path.relative_to(root).as_posix()
        try:
            files[relative] = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read: {exc}", relative) from None
    return files


def file_manifest(files: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """The files of a bundle as a ledger entry lists them: path, SHA-256 and size, in order."""
    return [
        {"path": path, "sha256": hashlib.sha256(files[path]).hexdigest(), "bytes": len(files[path])}
        for path in sorted(files, key=_order)
    ]


def check_file_path(path: str) -> str | None:
    """Why ``path`` cannot name a file in a bundle (relative, POSIX, no ``..``, nothing hidden),
    or None when it can."""
    if not path or len(path) > MAX_PATH:
        return f"a file path has 1 to {MAX_PATH} characters"
    if "\\" in path or "\0" in path or path.startswith("/"):
        return "a file path is relative, with / between its parts"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a file path has no empty, '.' or '..' parts"
    if any(part.startswith(".") for part in parts):
        return "hidden files are not part of a bundle"
    if PurePosixPath(path).as_posix() != path:
        return "a file path must be in normal form"
    return None


def _text(files: Mapping[str, bytes], where: Path, relative: str) -> str:
    content = files.get(relative)
    if content is None:
        raise BundleError(f"{where}: missing {relative}", relative)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where / relative}: not UTF-8 text: {exc}", relative) from None


def load_bundle(root: Path) -> Bundle:
    """Read a bundle directory; raise BundleError naming the file that is wrong."""
    return bundle_from_files(read_bundle_files(root), root)


def bundle_from_files(files: Mapping[str, bytes], root: Path | None = None) -> Bundle:
    """Make a bundle of files given as relative POSIX path → bytes (from a directory, the
    database or an upload); raise BundleError naming the file that is wrong. ``root`` names
    where the files came from in messages."""
    files = dict(files)
    digest = digest_files(files)
    where = root if root is not None else Path(f"bundle {digest[:12]}")
    if len(files) > MAX_FILES:
        raise BundleError(f"{where}: {len(files)} files; a bundle has at most {MAX_FILES}")
    for path in files:
        problem = check_file_path(path)
        if problem is not None:
            raise BundleError(f"{where}: {path!r}: {problem}", path)
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    cases: dict[str, str] = {}
    for path in sorted(files, key=_order):
        pure = PurePosixPath(path)
        if pure.parent.as_posix() == REGO_DIR.as_posix() and pure.suffix == ".rego":
            target = tests if pure.stem.endswith("_test") else modules
            target[path] = _text(files, where, path)
        elif pure.parent.as_posix() == CASES_DIR and pure.suffix in (".yaml", ".yml"):
            cases[path] = _text(files, where, path)
    if not modules:
        raise BundleError(f"{where}: no Rego modules in {REGO_DIR}/", REGO_DIR.as_posix())
    data_path = DATA_FILE.as_posix()
    try:
        data = orjson.loads(_text(files, where, data_path))
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{where / DATA_FILE}: not JSON: {exc}", data_path) from None
    if not isinstance(data, dict) or not isinstance(data.get("workflows"), dict):
        raise BundleError(
            f"{where / DATA_FILE}: needs an object with a 'workflows' object", data_path
        )
    workflows = {
        name: _workflow(name, config, where / DATA_FILE, data_path)
        for name, config in data["workflows"].items()
    }
    return Bundle(
        root=where,
        digest=digest,
        modules=modules,
        tests=tests,
        data=data,
        casbin_model=_text(files, where, MODEL_FILE.as_posix()),
        casbin_policy=_text(files, where, POLICY_FILE.as_posix()),
        workflows=workflows,
        cases=cases,
        files=files,
    )


def _workflow(name: str, config: Any, where: Path, data_path: str) -> WorkflowConfig:
    """One workflow of ``data.json``, checked: every action type lists the case types it may be,
    each of them one the workflow knows."""

    def wrong(key: str, problem: str) -> BundleError:
        return BundleError(f"{where}: workflows.{name}.{key} {problem}", data_path)

    if not isinstance(config, dict) or not isinstance(config.get("case_types", {}), dict):
        raise BundleError(f"{where}: workflows.{name} must be an object", data_path)
    case_types: dict[str, dict[str, Any]] = config.get("case_types", {})
    listed = config.get("action_types")
    if not isinstance(listed, dict) or not listed:
        raise wrong(
            "action_types",
            "must list the action types executors may propose, each with the case types it "
            'may be: {"refund.issue": {"case_types": ["refund.issue"]}} (policies/README.md)',
        )
    action_types: dict[str, tuple[str, ...]] = {}
    resource_arguments: dict[str, str] = {}
    for action_type, entry in listed.items():
        names = entry.get("case_types") if isinstance(entry, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise wrong(f"action_types.{action_type}.case_types", "must be a non-empty list")
        unknown = sorted(set(names) - set(case_types))
        if unknown:
            raise wrong(
                f"action_types.{action_type}.case_types",
                f"names {', '.join(unknown)}, not in workflows.{name}.case_types",
            )
        action_types[action_type] = tuple(dict.fromkeys(names))
        mcp = entry.get("mcp", {})
        argument = mcp.get("resource") if isinstance(mcp, dict) else None
        if not isinstance(mcp, dict) or not isinstance(argument, str | None) or argument == "":
            raise wrong(
                f"action_types.{action_type}.mcp",
                'must be an object naming the argument that is the resource: {"resource": "path"}',
            )
        if argument is not None:
            resource_arguments[action_type] = argument
    scale = config.get("amount_scale", DEFAULT_AMOUNT_SCALE)
    if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale <= MAX_AMOUNT_SCALE:
        raise wrong("amount_scale", f"must be a whole number from 0 to {MAX_AMOUNT_SCALE}")
    signed = config.get("signed_amounts", False)
    if not isinstance(signed, bool):
        raise wrong("signed_amounts", "must be true or false")
    ttl = config.get("approval_ttl_hours", 24)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool):
        raise wrong("approval_ttl_hours", "must be a number")
    return WorkflowConfig(
        name=name,
        case_types=case_types,
        action_types=action_types,
        resource_arguments=resource_arguments,
        approval_ttl_hours=float(ttl),
        amount_scale=scale,
        signed_amounts=signed,
        personal_data=_personal_data(config.get("personal_data"), wrong),
    )


def _personal_data(given: Any, wrong: Callable[[str, str], BundleError]) -> PersonalData | None:
    """A workflow's ``personal_data``, checked: a data subject field and the other sealed
    fields, each a path into params or context, none inside another."""
    if given is None:
        return None
    shape = '{"data_subject": "params.customer", "sealed": ["params.customer_email"]}'
    if not isinstance(given, dict):
        raise wrong("personal_data", f"must be an object such as {shape}")
    unknown = sorted(set(given) - {"data_subject", "sealed"})
    if unknown:
        raise wrong(f"personal_data.{unknown[0]}", f"is not a key of personal_data ({shape})")
    subject = given.get("data_subject")
    if not isinstance(subject, str):
        raise wrong(
            "personal_data.data_subject",
            "must name the field that holds the data subject's id, such as params.customer",
        )
    sealed = given.get("sealed", [])
    if not isinstance(sealed, list) or not all(isinstance(p, str) for p in sealed):
        raise wrong("personal_data.sealed", "must be a list of field paths")
    keys = [
        "personal_data.data_subject",
        *(f"personal_data.sealed[{i}]" for i in range(len(sealed))),
    ]
    paths = [subject, *sealed]
    for key, path in zip(keys, paths, strict=True):
        if not _FIELD_PATH.fullmatch(path):
            raise wrong(
                key,
                f"is {path!r}: a path into params or context, such as params.customer_email "
                "(names of letters, digits, _ and -, joined by dots)",
            )
    for key, path in zip(keys, paths, strict=True):
        for other in paths:
            if other != path and other.startswith(f"{path}."):
                raise wrong(key, f"{path} holds {other}, which is listed too: list one of them")
    seen: set[str] = set()
    for key, path in zip(keys, paths, strict=True):
        if path in seen:
            raise wrong(key, f"lists {path} twice (the data subject's field is sealed too)")
        seen.add(path)
    return PersonalData(subject, tuple(sealed))
