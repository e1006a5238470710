"""docs/SECURITY.md names the tests that show each claim: every one it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "SECURITY.md"
# `tests/some/path.py` or `tests/dir/`, optionally followed by -k "expression" or -k word.
REFERENCE = re.compile(r'`(tests/[\w/.]+?)(?: -k (?:"([^"]+)"|([\w]+)))?`')


def _references() -> list[tuple[str, str | None]]:
    text = " ".join(DOCUMENT.read_text().split())  # a reference may wrap across lines
    return [(path, quoted or bare or None) for path, quoted, bare in REFERENCE.findall(text)]


def _test_names(path: Path) -> list[str]:
    files = sorted(path.rglob("test_*.py")) if path.is_dir() else [path]
    names = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test"
            ):
                names.append(node.name)
    return names


def test_the_document_names_tests() -> None:
    assert len(_references()) >= 20


@pytest.mark.parametrize(("path", "expression"), _references())
def test_every_named_test_exists(path: str, expression: str | None) -> None:
    target = ROOT / path
    assert target.exists(), f"docs/SECURITY.md names {path}, which does not exist"
    names = _test_names(target)
    assert names, f"{path} holds no tests"
    if expression is None:
        return
    # As pytest's -k does: each word matches a test whose name contains it.
    compiled = Expression.compile(expression)

    def selects(name: str) -> bool:
        return compiled.evaluate(lambda word, /, **_: word in name)

    selected = [name for name in names if selects(name)]
    assert selected, f'docs/SECURITY.md: `{path} -k "{expression}"` selects no test'
