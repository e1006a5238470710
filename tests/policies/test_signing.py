"""Signed bundles: ``mandate policy sign`` writes OPA's ``.signatures.json``, and a gateway with a
bundle key activates only bundles whose every file is the one signed (through the API, the
CLI, and at start), recording who signed in the ``policy`` ledger entry."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.policy.bundle import load_bundle, read_bundle_files
from gateway.policy.signing import (
    SignatureError,
    file_hash,
    load_private_key,
    read_public_key,
    sign_files,
    verify_files,
)
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from tests.approvals.conftest import Launch
from tests.approvals.harness import assert_problem, settings_for, start
from tests.conftest import Database
from tests.policies.support import (
    POLICIES,
    activate,
    bundle_copy,
    clean_env,
    keypair,
    mandate,
    policy_entries,
    raised_review,
    sign,
)

VECTORS = Path(__file__).parent / "testdata" / "opa-hashes"


def claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified."""
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert isinstance(payload, dict)
    return payload


def signed_upload(root: Path) -> dict[str, Any]:
    """A bundle directory as ``POST /v1/policies`` takes it, with its signature."""
    return {
        "files": {p: c.decode() for p, c in read_bundle_files(root).items()},
        "signatures": (root / ".signatures.json").read_text(),
        "reason": "signed",
    }


def test_data_json_is_hashed_as_opa_hashes_it() -> None:
    # expected.txt was computed with Go's encoding/json by OPA's rule for structured documents
    # (bundle/hash.go: decoded with UseNumber, object keys sorted, strings encoded without HTML
    # escaping): numbers as written, escapes, U+2028, a BOM, a lone surrogate, keys twice.
    for line in (VECTORS / "expected.txt").read_text().splitlines():
        expected, name = line.split()
        assert file_hash("data.json", (VECTORS / name).read_bytes()) == expected, name
    # Indentation does not change it; any other file is hashed byte for byte.
    data = (POLICIES / "data.json").read_bytes()
    compact = orjson.dumps(orjson.loads(data))
    assert file_hash("data.json", compact) == file_hash("data.json", data)
    assert file_hash("rego/claims.rego", b"x") == hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_sign_writes_opas_signature_format(tmp_path: Path, kind: str) -> None:
    secret, _ = keypair(tmp_path / "keys", kind)
    root = bundle_copy(tmp_path / "bundle")
    sign(root, secret, "--key-id", "policy-team-2026")

    text = (root / ".signatures.json").read_text()
    document = json.loads(text)
    assert list(document) == ["signatures"]
    (token,) = document["signatures"]
    assert text == json.dumps(document, indent=1)  # as opa sign indents it
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256" if kind == "rsa" else "ES256", "kid": "policy-team-2026"}
    payload = claims(token)
    files = read_bundle_files(root)
    assert payload["keyid"] == "policy-team-2026"
    assert [f["name"] for f in payload["files"]] == list(files)
    for entry in payload["files"]:
        assert entry["algorithm"] == "SHA-256"
        assert entry["hash"] == file_hash(entry["name"], files[entry["name"]])
    # The signature is not part of the bundle: the digest is the unsigned one's.
    assert load_bundle(root).digest == load_bundle(POLICIES).digest


def test_a_signature_vouches_only_for_the_files_signed(tmp_path: Path) -> None:
    secret, public = keypair(tmp_path / "keys", "rsa")
    _, stranger = keypair(tmp_path / "other", "rsa")
    key = load_private_key(secret.read_bytes(), "key")
    verifying = read_public_key(public)
    files = read_bundle_files(POLICIES)
    signed = sign_files(files, key, algorithm="RS256", key_id="k1")
    signer = verify_files(files, signed, verifying)
    assert (signer.key_id, signer.algorithm) == ("k1", "RS256")

    def refused(files: dict[str, bytes], signatures: bytes | None, key: object = verifying) -> str:
        with pytest.raises(SignatureError) as caught:
            verify_files(files, signatures, key)  # type: ignore[arg-type]
        return f"{caught.value.path}: {caught.value}"

    altered = {**files, "rego/claims.rego": files["rego/claims.rego"] + b"\n# x\n"}
    assert refused(altered, signed).startswith("rego/claims.rego: rego/claims.rego: not the file")
    assert "added after signing" in refused({**files, "rego/extra.rego": b"package x"}, signed)
    fewer = {p: c for p, c in files.items() if p != "casbin/policy.csv"}
    assert "casbin/policy.csv: casbin/policy.csv: signed, but not" in refused(fewer, signed)
    assert "unsigned" in refused(files, None)
    assert "does not verify" in refused(files, signed, read_public_key(stranger))
    # Algorithm confusion: a token "signed" with HS256, the public key as the secret.
    forged = jwt.PyJWS().encode(
        orjson.dumps({"files": []}), b"a secret of thirty-two bytes at least", algorithm="HS256"
    )
    assert "signed with 'HS256'" in refused(files, json.dumps({"signatures": [forged]}).encode())
    unsigned = jwt.PyJWS().encode(orjson.dumps({"files": []}), "", algorithm="none")
    assert "signed with 'none'" in refused(files, json.dumps({"signatures": [unsigned]}).encode())
    # What OPA refuses too: two JWTs, a scope it was not configured with.
    two = json.dumps({"signatures": [forged, forged]}).encode()
    assert "exactly one JWT" in refused(files, two)
    listed = claims(json.loads(signed)["signatures"][0])["files"]
    scoped = jwt.PyJWS().encode(
        orjson.dumps({"files": listed, "scope": "write"}), key, algorithm="RS256"
    )
    assert "scope mismatch" in refused(files, json.dumps({"signatures": [scoped]}).encode())

    # OPA signs hidden files such as .manifest too: they are not part of a bundle, not checked.
    with_manifest = sign_files({**files, ".manifest": b"{}"}, key, algorithm="RS256")
    assert verify_files(files, with_manifest, verifying).key_id is None


def test_sign_refuses_what_it_cannot_sign_in_one_line(tmp_path: Path) -> None:
    secret, public = keypair(tmp_path / "keys", "ec")
    rsa_secret, _ = keypair(tmp_path / "keys", "rsa")
    root = bundle_copy(tmp_path / "bundle")
    encrypted = tmp_path / "keys" / "encrypted.pem"
    encrypted.write_bytes(
        load_private_key(secret.read_bytes(), "k").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    yaml_data = bundle_copy(tmp_path / "yaml")
    (yaml_data / "tests" / "data.yaml").write_text("a: 1\n")
    for args, said in [
        ((root, "--key", public), "not a PEM private key"),
        ((root, "--key", encrypted), "an encrypted key"),
        ((root, "--key", tmp_path / "none.pem"), "cannot read"),
        ((root, "--key", secret, "--alg", "RS256"), "RS256 signs with an RSA key"),
        ((root, "--key", rsa_secret, "--alg", "ES256"), "ES256 signs with an ECDSA key"),
        ((root, "--key", rsa_secret, "--alg", "HS256"), "one of RS256, ES256"),
        ((yaml_data, "--key", secret), "tests/data.yaml: OPA hashes data.yaml"),
        ((tmp_path / "nothing", "--key", secret), "not a directory"),
    ]:
        done = mandate("policy", "sign", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (root / ".signatures.json").exists()


def test_a_gateway_with_a_bundle_key_activates_only_signed_bundles(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    secret, public = keypair(tmp_path / "keys", "rsa")
    other_secret, _ = keypair(tmp_path / "other", "rsa")
    first = bundle_copy(tmp_path / "first")
    sign(first, secret, "--key-id", "start-key")
    live = launch(database, policies=first, bundle_key=public)
    (started,) = policy_entries(live)
    assert started["body"]["signature"]["key_id"] == "start-key"

    admin = live.as_role("policy-admin")
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    unsigned = activate(admin, candidate)
    problem = assert_problem(unsigned, 422)
    assert problem["errors"][0]["field"] == "signatures"
    assert "unsigned" in problem["errors"][0]["message"]

    sign(candidate, secret, "--key-id", "policy-team-2026")
    upload = signed_upload(candidate)
    files = dict(upload["files"])
    altered = {**files, "data.json": files["data.json"].replace("20000", "90000")}
    problem = assert_problem(admin.post("/v1/policies", json={**upload, "files": altered}), 422)
    assert problem["errors"][0]["field"] == "files.data.json"
    assert "not the file that was signed" in problem["errors"][0]["message"]
    # Re-indenting data.json changes the digest, not what OPA's hash (and so the signature) says.
    reindented = {**files, "data.json": json.dumps(json.loads(files["data.json"]))}
    assert admin.post("/v1/policies", json={**upload, "files": reindented}).status_code == 200
    assert activate(admin, POLICIES).status_code == 422  # back: the default is unsigned
    shadow = admin.post("/v1/policies", json={**upload, "mode": "shadow"})
    assert shadow.status_code == 200, shadow.text  # a shadow bundle needs a signature too
    answer = admin.post("/v1/policies", json=upload)
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"]["signature"]["key_id"] == "policy-team-2026"

    entry = policy_entries(live)[-1]
    signature = entry["body"]["signature"]
    assert signature["key_id"] == "policy-team-2026"
    assert signature["algorithm"] == "RS256"
    der = serialization.load_pem_public_key(public.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signature["key_sha256"] == hashlib.sha256(der).hexdigest()
    view = live.as_role("auditor").get("/v1/policies/active").json()
    assert view["signature"] == signature
    assert view["digest"] == load_bundle(candidate).digest

    # Signed with a key the gateway does not hold: refused.
    stranger = bundle_copy(tmp_path / "stranger")
    sign(stranger, other_secret)
    problem = assert_problem(admin.post("/v1/policies", json=signed_upload(stranger)), 422)
    assert "does not verify with the bundle key" in problem["errors"][0]["message"]


def test_the_cli_activates_signed_bundles_locally_and_through_a_gateway(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    secret, public = keypair(tmp_path / "keys", "ec")
    first = bundle_copy(tmp_path / "first")
    sign(first, secret)
    live = launch(sqlite_database, policies=first, bundle_key=public)
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    local = clean_env(MANDATE_DATABASE_URL=sqlite_database.url, MANDATE_BUNDLE_KEY=str(public))
    args = ("policy", "activate", candidate, "--reason", "raise review")
    here = ("--data-dir", live.settings.data_dir)

    # Unsigned: refused before anything is written, locally and by the gateway.
    done = mandate(*args, *here, cwd=tmp_path, env=local)
    assert done.returncode == 1, done.stderr
    assert "unsigned" in done.stderr
    remote = clean_env(MANDATE_TOKEN=live.token("policy-admin"))
    done = mandate(*args, "--url", live.url, cwd=tmp_path, env=remote)
    assert done.returncode == 1, done.stderr
    assert "signatures: unsigned" in done.stderr

    sign(candidate, secret, "--key-id", "ops-ec")
    done = mandate(*args, *here, cwd=tmp_path, env=local)
    assert done.returncode == 0, done.stderr
    assert "signed with key ops-ec" in done.stderr
    assert policy_entries(live)[-1]["body"]["signature"]["algorithm"] == "ES256"

    # Altered after signing: the file is named; through the gateway, the signature is sent.
    with (candidate / "rego" / "claims.rego").open("a") as rego:
        rego.write("\n# a comment changes no test, and is still a change\n")
    done = mandate(*args, *here, cwd=tmp_path, env=local)
    assert done.returncode == 1, done.stderr
    assert "rego/claims.rego: not the file that was signed" in done.stderr
    shutil.copy(first / "rego" / "claims.rego", candidate / "rego" / "claims.rego")
    done = mandate("policy", "activate", first, "--reason", "back", "--url", live.url,
                   cwd=tmp_path, env=remote)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert policy_entries(live)[-1]["body"]["signature"]["key_id"] is None


def test_a_start_with_a_bundle_key_refuses_a_directory_it_did_not_sign(
    sqlite_database: Database, tmp_path: Path
) -> None:
    secret, public = keypair(tmp_path / "keys", "rsa")
    unsigned = bundle_copy(tmp_path / "unsigned")
    env = clean_env(MANDATE_DATABASE_URL=sqlite_database.url, MANDATE_BUNDLE_KEY=str(public))
    args = ("serve", "--data-dir", tmp_path / "data", "--policies", unsigned, "--port", "9")
    done = mandate(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {unsigned}: unsigned"), done.stderr
    missing = clean_env(
        MANDATE_DATABASE_URL=sqlite_database.url, MANDATE_BUNDLE_KEY=str(tmp_path / "no.pem")
    )
    done = mandate(*args, cwd=tmp_path, env=missing)
    assert done.returncode == 2
    assert "bundle key" in done.stderr
    assert "cannot read" in done.stderr
    private = clean_env(MANDATE_DATABASE_URL=sqlite_database.url, MANDATE_BUNDLE_KEY=str(secret))
    done = mandate(*args, cwd=tmp_path, env=private)
    assert done.returncode == 2
    assert f"error: bundle key {secret}: not a PEM public key" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    # The process itself refuses too, and writes nothing.
    settings: Settings = settings_for(
        sqlite_database, tmp_path / "data", policies=unsigned, bundle_key=public
    )
    with pytest.raises(SignatureError, match="unsigned"):
        Runtime.start(settings)
    sign(unsigned, secret)
    live = start(settings)
    try:
        (entry,) = policy_entries(live)
        assert entry["body"]["signature"]["algorithm"] == "RS256"
    finally:
        live.stop()
