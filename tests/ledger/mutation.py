"""``make mutation``: mutmut 3.8 on the verifier's core, each module against its own test file.

Run it with the mutation venv's Python from the repository root (``make mutation`` does)::

    .venv-mutation/bin/python -m tests.ledger.mutation [--only merkle|note|verify]...

mutmut reads its configuration from the directory it runs in, and takes one test selection per
run, so each module gets a work directory of its own, ``.mutation/<module>/``: links to
``ledger/`` and ``tests/``, and a ``pyproject.toml`` holding the repository's pytest settings
and a ``[tool.mutmut]`` section that mutates that one module and runs only its own test file.
For ``verify.py`` (some 1,200 mutants, each run against a test file that builds real ledgers) a
sample of three in ten runs: in every function, the mutants whose number ends in 1, 4 or 7.

Counted as killed: a test failed, or the tests hung (mutmut's timeout). Not counted: the
mutants ``docs/MUTATION.md`` lists as equivalent or message-only. The script prints, per
module, the figures and every survivor not listed there with its diff, and exits 1 when a
module kills less than 95 % of what is counted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".mutation"
NOTES = ROOT / "docs" / "MUTATION.md"
MUTMUT = Path(sys.executable).with_name("mutmut")
THRESHOLD = 0.95
# mutmut's exit codes (mutmut.stats.status_by_exit_code) as this script counts them.
KILLED = {1, 3, 24, -24, 36, 152, 255}  # a test failed, or the tests hung (timeout)
SURVIVED = {0}


@dataclass(frozen=True)
class Target:
    module: str
    tests: str
    patterns: tuple[str, ...] = ()  # mutant name globs to run; none: all of the module's

    @property
    def source(self) -> str:
        return f"ledger/{self.module}.py"


TARGETS = (
    Target("merkle", "tests/ledger/test_merkle.py"),
    Target("note", "tests/ledger/test_note.py"),
    # Three in ten: the mutants numbered ...1, ...4 and ...7 in each function.
    Target("verify", "tests/ledger/test_verify.py", ("ledger.verify.*__mutmut_*[147]",)),
)


def _pytest_settings() -> str:
    """The ``[tool.pytest.ini_options]`` section of the repository's pyproject.toml, verbatim."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r"^\[tool\.pytest\.ini_options\]\n(?:(?!\[).*\n|\n)*", text, re.M)
    if found is None:
        raise SystemExit("pyproject.toml has no [tool.pytest.ini_options] section")
    return found.group(0)


def _prepare(target: Target) -> Path:
    work = WORK / target.module
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "ledger").symlink_to(ROOT / "ledger")
    (work / "tests").symlink_to(ROOT / "tests")
    settings = {
        "source_paths": ["ledger"],
        "only_mutate": [target.source],
        "pytest_add_cli_args_test_selection": [target.tests],
        # Hypothesis derandomized, so a mutant is killed or not the same way every run.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "--hypothesis-seed=0"],
        "timeout_multiplier": 5.0,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    pyproject = _pytest_settings() + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n"
    (work / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return work


def _excluded() -> dict[str, str]:
    """The mutants docs/MUTATION.md lists (by name, in backticks), with the row's reason."""
    listed: dict[str, str] = {}
    for line in NOTES.read_text(encoding="utf-8").splitlines():
        for name in re.findall(r"`(ledger\.[^`\s]+__mutmut_\d+)`", line):
            listed[name] = line
    return listed


def _run(target: Target, children: int) -> dict[str, int | None]:
    work = _prepare(target)
    log = work / "run.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(children), *target.patterns],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"mutmut failed on {target.source}; see {log}")
    meta = json.loads((work / "mutants" / f"{target.source}.meta").read_text(encoding="utf-8"))
    codes: dict[str, int | None] = meta["exit_code_by_key"]
    if target.patterns:
        codes = {
            name: code
            for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in target.patterns)
        }
    return codes


def _diff(target: Target, name: str) -> str:
    shown = subprocess.run(
        [str(MUTMUT), "show", name],
        cwd=WORK / target.module,
        capture_output=True,
        text=True,
        check=False,
    )
    return "\n".join(
        line
        for line in shown.stdout.splitlines()
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    )


def _report(target: Target, codes: dict[str, int | None], excluded: dict[str, str]) -> bool:
    outcome = Counter(
        "killed" if code in KILLED else "survived" if code in SURVIVED else "other"
        for code in codes.values()
    )
    timeouts = sum(1 for code in codes.values() if code in KILLED - {1, 3})
    survivors = sorted(name for name, code in codes.items() if code in SURVIVED)
    listed = [name for name in survivors if name in excluded]
    unlisted = [name for name in survivors if name not in excluded]
    counted = len(codes) - len(listed)
    rate = outcome["killed"] / counted if counted else 1.0
    print(
        f"{target.source}: {len(codes)} mutants run, {outcome['killed']} killed "
        f"({timeouts} by timeout), {len(survivors)} survived ({len(listed)} listed as "
        f"equivalent or message-only), {outcome['other']} not run (no tests, skipped); "
        f"killed {outcome['killed']}/{counted} = {rate:.1%} of those counted"
    )
    for name in unlisted:
        print(f"  survived: {name}")
        for line in _diff(target, name).splitlines():
            print(f"    {line}")
    for name in excluded:
        if name in codes and codes[name] not in SURVIVED:
            print(f"  listed in docs/MUTATION.md, but not a survivor now: {name}")
    return rate >= THRESHOLD


def main(argv: list[str] | None = None) -> int:
    """Run the targets; exit 1 if one kills less than 95 % of its counted mutants."""
    parser = argparse.ArgumentParser(prog="python -m tests.ledger.mutation")
    parser.add_argument("--only", action="append", choices=[t.module for t in TARGETS])
    parser.add_argument(
        "--max-children", type=int, default=os.cpu_count() or 1, help="mutants run at once"
    )
    args = parser.parse_args(argv)
    if not MUTMUT.exists():
        raise SystemExit(f"no mutmut next to {sys.executable}: run `make mutation`")
    excluded = _excluded()
    ok = True
    for target in TARGETS:
        if args.only and target.module not in args.only:
            continue
        ok = _report(target, _run(target, args.max_children), excluded) and ok
        sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
