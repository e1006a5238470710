"""Every module imports on its own, and the ledger stands alone.

- Every module of ``ledger``, ``gateway`` and ``adapters`` imports in a fresh interpreter; each
  one that could be in an import cycle (by its source), and each ledger module, is also
  imported first thing in an interpreter state of its own, so a cycle shows wherever it starts.
- A regulator's machine has no gateway, FastAPI or Casbin: ``ledger.verify`` and ``ledger.cli``
  import, and ``python -m ledger verify`` runs, with those made unimportable.
- An executor's machine needs only the SDK: ``gateway.client`` imports, and its clients and
  ``@governed`` run, with FastAPI, SQLAlchemy, the policy engines, the ledger and every gateway
  module outside the SDK, ``gateway.schemas`` and ``gateway.errors`` made unimportable.
- No module under ``ledger/`` imports ``gateway`` or ``adapters`` (read from the source).
"""

from __future__ import annotations

import ast
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ledger", "gateway", "adapters")  # what pyproject.toml ships
FORBIDDEN_IN_LEDGER = ("gateway", "adapters")


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees this checkout first, outside the repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def module_files() -> dict[str, Path]:
    """Every module of the shipped packages and its file (``__main__`` left out: importing it
    runs it)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Which of our modules each one may import, read from the source (any import statement,
    wherever it stands, counts: a superset of what runs at import time)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                if not node.level:
                    parts = []
                if node.module:
                    parts = [*parts, node.module]
                module = ".".join(parts)
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
        # Importing a module runs every package above it first.
        targets.add(name.rpartition(".")[0])
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                above = ".".join(parts[:i])
                if above in modules and above != name:
                    edges.add(above)
        graph[name] = edges
    return graph


def modules_in_cycles(graph: dict[str, set[str]]) -> set[str]:
    """Modules in a strongly connected component of more than one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.update(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# One forked child imports every module (any failure shows); then each module that could be
# part of an import cycle, and every ledger module, is imported first thing in a child of its
# own, so a cycle shows wherever it starts. The parent imports none of ours: each child starts
# from a clean slate. To keep that fast, the parent first imports the third-party modules that
# ours pull in (learnt from the first child).
IMPORT_EACH = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback

    OURS = {"ledger", "gateway", "adapters"}
    split = sys.argv.index("--")
    EVERY, FIRST = sys.argv[1:split], sys.argv[split + 1:]

    def ours(name):
        return name.split(".")[0] in OURS

    def start(work):
        # Run work() in a forked child, which reports back as JSON through a pipe.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                message = work()
            except BaseException:
                message = "FAILED " + traceback.format_exc()
            os.write(write, json.dumps(message).encode())
            os._exit(0)
        os.close(write)
        return pid, read

    def finish(child):
        pid, read = child
        with os.fdopen(read, "rb") as pipe:
            message = json.loads(pipe.read().decode())
        os.waitpid(pid, 0)
        return message

    def everything():
        failed = {}
        for name in EVERY:
            try:
                importlib.import_module(name)
            except BaseException:
                failed[name] = traceback.format_exc()
        return {"failed": failed, "others": sorted(m for m in sys.modules if not ours(m))}

    first = finish(start(everything))
    failures = {f"{name} (after the others)": tb for name, tb in first["failed"].items()}
    for name in first["others"]:
        try:
            importlib.import_module(name)
        except BaseException:
            pass
    assert not [m for m in sys.modules if ours(m)], "a third-party module imported ours"

    def importer(name):
        def work():
            importlib.import_module(name)
            return ""
        return work

    running = []
    names = list(FIRST)
    while names or running:
        while names and len(running) < max(2, os.cpu_count() or 1):
            name = names.pop(0)
            running.append((name, start(importer(name))))
        name, child = running.pop(0)
        message = finish(child)
        if message:
            failures[f"{name} (imported first)"] = message
    print(json.dumps(failures))
    """
)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"f"}}
    assert modules_in_cycles(graph) == {"a", "b", "c"}


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter(tmp_path: Path) -> None:
    modules = module_files()
    assert "ledger.verify" in modules
    assert "ledger.store" in modules
    graph = import_graph(modules)
    assert "ledger.errors" in graph["ledger.verify"]
    assert "ledger" in graph["ledger.verify"]
    first = sorted(modules_in_cycles(graph) | {m for m in modules if m.startswith("ledger")})
    done = python(IMPORT_EACH, *modules, "--", *first, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.splitlines()[-1])
    assert failures == {}, "\n\n".join(f"{name}:\n{tb}" for name, tb in failures.items())


# -- the regulator's machine -----------------------------------------------------------------

REFUSE = textwrap.dedent(
    """
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class Refuse:
        '''A meta path finder standing for packages that are not installed.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    del sys.argv[1]
    """
)

WITHOUT_GATEWAY = ("gateway", "adapters", "fastapi", "starlette", "casbin", "uvicorn", "typer")
# The verifier needs no database either (``ledger/__init__``: the store side is loaded lazily).
WITHOUT_DATABASE = (*WITHOUT_GATEWAY, "sqlalchemy", "sqlmodel", "psycopg", "pydantic")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ledger.database import create_engine
    from ledger.export import write_export
    from ledger.note import NoteSigner
    from ledger.store import Ledger

    directory = tmp_path_factory.mktemp("regulator")
    signer = NoteSigner("test.mandate.example/ledger", Ed25519PrivateKey.generate())
    engine = create_engine(f"sqlite:///{directory / 'mandate.db'}")
    with Ledger(engine, origin="test.mandate.example/ledger", signer=signer).open() as ledger:
        for i in range(5):
            ledger.append("decision", actor="a", subject=f"s{i}", body={"n": i})
        path = directory / "export.jsonl"
        with path.open("wb") as out:
            write_export(ledger, out)
    engine.dispose()
    key = directory / "mandate.pub"
    key.write_text(signer.vkey + "\n")
    return path, key


@pytest.mark.parametrize("blocked", [WITHOUT_GATEWAY, WITHOUT_DATABASE], ids=["gateway", "db"])
def test_the_verifier_imports_without_the_gateway(tmp_path: Path, blocked: tuple[str, ...]) -> None:
    code = REFUSE + textwrap.dedent(
        """
        import importlib

        for name in BLOCKED:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit(f"{name} was importable: the test proves nothing")

        import ledger.verify, ledger.cli
        import ledger.merkle, ledger.note, ledger.checkpoint

        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("leaked:", leaked)
        """
    )
    done = python(code, ",".join(blocked), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaked: []"


@pytest.mark.parametrize("blocked", [WITHOUT_GATEWAY, WITHOUT_DATABASE], ids=["gateway", "db"])
def test_python_m_ledger_verify_runs_without_the_gateway(
    export: tuple[Path, Path], tmp_path: Path, blocked: tuple[str, ...]
) -> None:
    path, key = export
    code = REFUSE + textwrap.dedent(
        """
        import runpy

        sys.argv = ["python -m ledger", *sys.argv[1:]]
        runpy.run_module("ledger", run_name="__main__", alter_sys=True)
        """
    )
    done = python(
        code, ",".join(blocked), "verify", str(path), "--public-key", str(key), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("VALID: 6 entries, root ")  # the key entry and 5


# -- the SDK on an executor's machine -------------------------------------------------------------

# What an executor that only proposes and reports does not install, or does not run: the
# server's libraries and every module of ours outside the SDK and the models it shares.
SDK_LACKS = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "alembic",
    "uvicorn",
    "casbin",
    "regorus",
    "jinja2",
    "prometheus_client",
    "typer",
    "ledger",
    "adapters",
)
SDK_NEEDS = ("gateway", "gateway.client", "gateway.schemas", "gateway.errors")

SDK_ALONE = textwrap.dedent(
    """
    import asyncio, socket, sys

    BLOCKED = set(sys.argv[1].split(","))
    MAY = set(sys.argv[2].split(","))
    SDK = "gateway.client"

    def refused(name):
        if name.split(".")[0] in BLOCKED:
            return True
        ours = name in MAY or name.startswith(SDK + ".")
        return name.split(".")[0] == "gateway" and not ours

    class Refuse:
        '''A meta path finder standing for what an executor's machine lacks.'''

        def find_spec(self, name, path=None, target=None):
            if refused(name):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())

    for name in [*BLOCKED, "gateway.server.app", "gateway.decision.decider"]:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"{name} was importable: the test proves nothing")

    from gateway.client import AsyncMandateClient, MandateClient, Unreachable, governed

    # A port nothing listens on: the gateway is "nothing".
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    said = []
    with MandateClient(url, "mdt_unknown", retries=1, backoff=0) as mandate:
        try:
            mandate.propose(workflow="parking", action_type="refund.issue", resource="b/1")
        except Unreachable as exc:
            said.append(type(exc).__name__)

        ran = []

        @governed(mandate, workflow="parking", action_type="refund.issue", resource="b/1")
        def refund(amount):
            ran.append(amount)

        try:
            refund("20.00")
        except Unreachable as exc:
            said.append(f"governed {type(exc).__name__}, ran {ran}")

    async def aio():
        async with AsyncMandateClient(url, "mdt_unknown", retries=0) as mandate:
            try:
                await mandate.get_action("act_1")
            except Unreachable as exc:
                said.append(f"async {type(exc).__name__}")

    asyncio.run(aio())
    print("; ".join(said))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in {"gateway", "ledger", "adapters"})
    print("ours:", ",".join(m for m in ours if m != SDK and not m.startswith(SDK + ".")))
    print("leaked:", sorted(m for m in sys.modules if refused(m)))
    """
)


def test_the_sdk_imports_and_runs_without_the_server(tmp_path: Path) -> None:
    done = python(SDK_ALONE, ",".join(SDK_LACKS), ",".join(SDK_NEEDS), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "Unreachable; governed Unreachable, ran []; async Unreachable",
        "ours: gateway,gateway.errors,gateway.schemas",
        "leaked: []",
    ]


# -- the verifier installed alone ----------------------------------------------------------------

VERIFIER = REPO / "packaging" / "mandate-ledger"
VERIFIER_NEEDS = {"cryptography", "rfc8785", "orjson"}
NOT_ON_A_REGULATORS_MACHINE = ("fastapi", "starlette", "sqlalchemy", "sqlmodel", "psycopg")


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_verifier_distribution_asks_what_mandate_asks() -> None:
    # One source tree, two distributions: the same version, the same requirement lines.
    mandate = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    alone = tomllib.loads((VERIFIER / "pyproject.toml").read_text())["project"]
    assert alone["version"] == mandate["version"]
    assert {requirement_name(r) for r in alone["dependencies"]} == VERIFIER_NEEDS
    for extra in alone["optional-dependencies"].values():
        assert set(extra) <= set(mandate["dependencies"])
    assert set(alone["dependencies"]) <= set(mandate["dependencies"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_verifier_installs_alone_with_one_pip_command_and_verifies(
    export: tuple[Path, Path], tmp_path: Path
) -> None:
    path, key = export
    # The distribution builds from the checkout's layout; a copy keeps its build files out of
    # the checkout.
    source = tmp_path / "checkout"
    shutil.copytree(VERIFIER, source / "packaging" / "mandate-ledger")
    shutil.copytree(
        REPO / "ledger", source / "ledger", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = tmp_path / "regulator"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANDATE_", "PYTHON"))}

    def run(*args: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=180,
            check=False,
        )

    made = run(sys.executable, "-m", "venv", str(venv))
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    installed = run(python, "-m", "pip", "install", "-q", str(source / "packaging/mandate-ledger"))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    listed = run(python, "-m", "pip", "list", "--format=json")
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "mandate-ledger" in names
    assert names >= VERIFIER_NEEDS
    assert not names & set(NOT_ON_A_REGULATORS_MACHINE)
    where = run(python, "-c", "import ledger; print(ledger.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    valid = run(python, "-m", "ledger", "verify", str(path), "--public-key", str(key))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.startswith("VALID: 6 entries, root ")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(path.read_bytes().replace(b'"n":3', b'"n":4'))
    caught = run(python, "-m", "ledger", "verify", str(tampered), "--public-key", str(key))
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert caught.stdout.startswith("TAMPERED: seq ")
    # On a terminal the progress bar would need rich, which the verifier goes without.
    leader, follower = pty.openpty()
    try:
        on_tty = run(
            python, "-m", "ledger", "verify", str(path), "--public-key", str(key), stderr=follower
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert on_tty.returncode == 0, on_tty.stdout
    assert on_tty.stdout.startswith("VALID: 6 entries, root ")


# -- the source --------------------------------------------------------------------------------


def forbidden_imports(source: str, filename: str) -> list[str]:
    """Where ``source`` imports gateway or adapters, or reaches outside its own package."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                found.append((node.lineno, "relative import above the package"))
            if node.level == 0 and node.module:
                names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            value = first.value if isinstance(first, ast.Constant) else None
            if called in {"import_module", "__import__"} and isinstance(value, str):
                names = [value]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_IN_LEDGER:
                found.append((getattr(node, "lineno", 0), f"imports {name}"))
    return [f"{filename}:{line}: {problem}" for line, problem in sorted(found)]


def test_the_scanner_finds_what_it_looks_for() -> None:
    source = textwrap.dedent(
        """
        import os
        import gateway.cli.main
        from adapters import webhook
        from ..gateway import app
        import importlib
        importlib.import_module("gateway.settings")
        __import__("adapters")
        from ledger.gateway_like import x
        """
    )
    assert forbidden_imports(source, "x.py") == [
        "x.py:3: imports gateway.cli.main",
        "x.py:4: imports adapters",
        "x.py:5: relative import above the package",
        "x.py:7: imports gateway.settings",
        "x.py:8: imports adapters",
    ]


def test_no_ledger_module_imports_gateway_or_adapters() -> None:
    sources = sorted((REPO / "ledger").rglob("*.py"))
    assert len(sources) > 10
    found = [
        problem
        for path in sources
        for problem in forbidden_imports(
            path.read_text(encoding="utf-8"), str(path.relative_to(REPO))
        )
    ]
    assert found == []


def explicit_import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Which of our modules each one imports by name, anywhere in its source (under
    ``TYPE_CHECKING`` too): the module named and the packages above it that are not already
    above the importer (those are running when it imports)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*(base if node.level else []), *filter(None, [node.module])])
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    above = ".".join(parts[:i])
                    if above in modules and above != name and above not in ancestors:
                        edges.add(above)
        graph[name] = edges
    return graph


def test_the_gateway_has_no_import_cycles_type_checking_included() -> None:
    modules = {n: p for n, p in module_files().items() if n.split(".")[0] == "gateway"}
    graph = explicit_import_graph(modules)
    assert graph["gateway.decision.decider"] >= {"gateway.decision.steps", "gateway.errors"}
    assert modules_in_cycles(graph) == set()
