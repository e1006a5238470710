"""Bundles as files: one digest wherever the files come from, paths that cannot escape, errors
that name the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.policy.bundle import (
    BundleError,
    bundle_from_files,
    check_file_path,
    digest_files,
    file_manifest,
    load_bundle,
    read_bundle_files,
)
from tests.policies.support import POLICIES, bundle_copy


def _digest_as_paths_sort(root: Path) -> str:
    """The digest as first written: pathlib's sort over the directory (kept by every ledger
    that names a bundle)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(str(len(content)).encode() + b"\0")
        digest.update(content)
    return digest.hexdigest()


def test_a_directory_and_its_files_have_one_digest(tmp_path: Path) -> None:
    # Paths that sort differently as strings and as path components ("rego-x/" vs "rego/").
    root = bundle_copy(tmp_path / "b")
    (root / "rego-x").mkdir()
    (root / "rego-x" / "notes.txt").write_text("x")
    (root / "rego" / "a.rego.orig").write_text("y")
    files = read_bundle_files(root)
    assert load_bundle(root).digest == digest_files(files) == _digest_as_paths_sort(root)
    assert bundle_from_files(files).digest == load_bundle(root).digest
    assert load_bundle(POLICIES).digest == _digest_as_paths_sort(POLICIES)


def test_the_manifest_lists_every_file_with_its_hash() -> None:
    files = read_bundle_files(POLICIES)
    manifest = file_manifest(files)
    assert [m["path"] for m in manifest] == sorted(files, key=lambda p: tuple(p.split("/")))
    for item in manifest:
        assert item["sha256"] == hashlib.sha256(files[item["path"]]).hexdigest()
        assert item["bytes"] == len(files[item["path"]])
    assert "tests/verdicts.yaml" in files


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../x", "rego/../../x", "rego//x.rego", ".git/config", "rego/.hidden",
     "rego\\x.rego", "", "./data.json", "a" * 300],
)  # fmt: skip
def test_a_path_that_could_escape_or_hide_is_refused(path: str) -> None:
    assert check_file_path(path) is not None
    files = {**read_bundle_files(POLICIES), path: b"x"}
    with pytest.raises(BundleError) as raised:
        bundle_from_files(files)
    assert raised.value.path == path


def test_a_file_that_is_wrong_is_named() -> None:
    files = read_bundle_files(POLICIES)
    for path, content in (("data.json", b"{"), ("rego/claims.rego", b"\xff\xfe")):
        with pytest.raises(BundleError) as raised:
            bundle_from_files({**files, path: content})
        assert raised.value.path == path
    without = {p: c for p, c in files.items() if p != "casbin/model.conf"}
    with pytest.raises(BundleError, match=r"missing casbin/model\.conf"):
        bundle_from_files(without)


def test_an_action_types_mcp_resource_argument_is_read_and_checked() -> None:
    files = read_bundle_files(POLICIES)
    files_workflow = bundle_from_files(files).workflows["files"]
    assert files_workflow.resource_arguments["move_file"] == "source"
    assert "list_allowed_directories" not in files_workflow.resource_arguments
    for wrong in ('"mcp": "path"', '"mcp": {"resource": 7}', '"mcp": {"resource": ""}'):
        data = files["data.json"].replace(b'"mcp": {"resource": "source"}', wrong.encode(), 1)
        with pytest.raises(BundleError, match=r"workflows\.files\.action_types\.move_file\.mcp"):
            bundle_from_files({**files, "data.json": data})


def test_the_shipped_workflows_name_their_personal_data() -> None:
    workflows = load_bundle(POLICIES).workflows
    parking, claims = workflows["parking"].personal_data, workflows["claims"].personal_data
    assert parking is not None
    assert claims is not None
    assert parking.paths == ("params.customer", "params.customer_email", "params.customer_name")
    assert claims.paths == ("params.claimant", "params.claimant_email", "params.claimant_name")


@pytest.mark.parametrize(
    ("personal_data", "key"),
    [
        (["params.customer"], "personal_data"),
        ({"sealed": ["params.customer_email"]}, "personal_data.data_subject"),
        ({"data_subject": "customer"}, "personal_data.data_subject"),
        ({"data_subject": "params.customer", "sealed": "params.email"}, "personal_data.sealed"),
        ({"data_subject": "params.customer", "sealed": ["resource"]}, "personal_data.sealed[0]"),
        ({"data_subject": "params.customer", "sealed": ["params..x"]}, "personal_data.sealed[0]"),
        ({"data_subject": "params.customer", "sealed": ["params.customer"]},
         "personal_data.sealed[0]"),
        ({"data_subject": "params.customer", "sealed": ["params.customer.email"]},
         "personal_data.data_subject"),
        ({"data_subject": "params.customer", "seal": []}, "personal_data.seal"),
    ],
)  # fmt: skip
def test_personal_data_that_cannot_be_sealed_is_named(personal_data: object, key: str) -> None:
    files = read_bundle_files(POLICIES)
    data = json.loads(files["data.json"])
    data["workflows"]["parking"]["personal_data"] = personal_data
    with pytest.raises(BundleError) as raised:
        bundle_from_files({**files, "data.json": json.dumps(data).encode()})
    assert raised.value.path == "data.json"
    assert f"workflows.parking.{key} " in str(raised.value)
