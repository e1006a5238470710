"""docs/VERIFYING.md's worked example holds: every number in it is recomputed from its text.

The page shows a 3-entry export and the hashes, key ids and signatures a reader can recompute by
hand. These tests recompute each from the page alone (with hashlib and an Ed25519 library, as a
reader would), check that the export verifies, and that a ``Ledger`` given the page's key, times
and records writes exactly the page's export: if the code's bytes or the page drift apart, a
test says which number.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.database import create_engine, sqlite_url
from ledger.entry import GENESIS_PREV
from ledger.export import write_export
from ledger.note import NoteSigner, NoteVerifier
from ledger.store import Ledger
from ledger.verify import verify_export

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "VERIFYING.md"
ROW = re.compile(r"^\| `([^`]+)` \| [^|]* \| `([^`]+)` \|$")


@cache
def text() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


@cache
def values() -> dict[str, str]:
    """The page's tables: ``| `name` | how | `value` |``, name to value."""
    found: dict[str, str] = {}
    for line in text().splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} is in two rows"
            found[match.group(1)] = match.group(2)
    return found


def value(name: str) -> str:
    assert name in values(), f"docs/VERIFYING.md has no row for {name}"
    return values()[name]


@cache
def export_lines() -> list[bytes]:
    """The example export as the page shows it, one line each, without newlines."""
    found = re.search(r"<!-- example export -->\n```text\n(.*?)```", text(), re.DOTALL)
    assert found, "docs/VERIFYING.md lost its example export block"
    lines = found.group(1).encode().split(b"\n")
    assert lines.pop() == b""
    return lines


def entry(line: bytes) -> dict[str, object]:
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def raw_public_key(seed_hex: str) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def vkey_line(name: str, key_id: bytes, kind: int, public: bytes) -> str:
    """A signed-note verifier key: name+key id+base64(signature type ‖ public key)."""
    return f"{name}+{key_id.hex()}+{base64.b64encode(bytes([kind]) + public).decode()}"


def checkpoint_note() -> str:
    note = entry(export_lines()[-1])["checkpoint"]
    assert isinstance(note, str)
    return note


def checkpoint_text() -> str:
    note = checkpoint_note()
    return note[: note.index("\n\n") + 1]


def test_the_example_key_and_its_key_id() -> None:
    public = raw_public_key(value("seed"))
    assert public.hex() == value("public key")
    name = value("name")
    key_id = sha256(name.encode() + b"\n\x01" + public)[:4]
    assert key_id.hex() == value("key id")
    assert value("vkey") == vkey_line(name, key_id, 0x01, public)
    signer = NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(value("seed"))))
    assert signer.vkey == value("vkey")


def test_the_entries_are_canonical_and_chained() -> None:
    lines = export_lines()
    assert len(lines) == 4  # three entries and the closing checkpoint
    prev = GENESIS_PREV
    for seq, line in enumerate(lines[:-1]):
        obj = entry(line)
        assert rfc8785.dumps(json.loads(line)) == line, f"line {seq} is not in JCS form"
        assert list(obj) == ["actor", "body", "kind", "prev", "seq", "subject", "time"]
        assert (obj["seq"], obj["prev"]) == (seq, prev)
        prev = sha256(b"\x00" + line).hex()
    first = entry(lines[0])
    assert first["kind"] == "key"
    assert first["body"] == {"from_size": 1, "vkey": value("vkey")}
    assert rfc8785.dumps({"checkpoint": checkpoint_note()}) == lines[-1]


def test_the_leaf_node_and_root_hashes() -> None:
    lines = export_lines()
    leaves = [sha256(b"\x00" + line) for line in lines[:3]]
    for i, leaf in enumerate(leaves):
        assert leaf.hex() == value(f"leaf {i}")
    node = sha256(b"\x01" + leaves[0] + leaves[1])
    assert node.hex() == value("node 0-1")
    root = sha256(b"\x01" + node + leaves[2])
    assert root.hex() == value("root")
    assert base64.b64encode(root).decode() == value("root (base64)")
    assert checkpoint_text().split("\n")[:3] == [value("name"), "3", value("root (base64)")]


def test_the_checkpoint_signature() -> None:
    body = checkpoint_text().encode()
    said = re.search(r"checkpoint's text is the (\d+) bytes", text())
    assert said
    assert int(said.group(1)) == len(body)
    signature_line = checkpoint_note()[len(body) + 1 :]
    assert signature_line.startswith(f"— {value('name')} ")
    raw = base64.b64decode(signature_line.split(" ")[-1])
    assert len(raw) == 68
    assert raw[:4].hex() == value("signature key id") == value("key id")
    assert raw[4:].hex() == value("signature")
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(value("public key")))
    public.verify(raw[4:], body)  # raises if it does not verify


def test_the_cosignature() -> None:
    public = raw_public_key(value("witness seed"))
    assert public.hex() == value("witness public key")
    name = value("witness name")
    key_id = sha256(name.encode() + b"\n\x04" + public)[:4]
    assert key_id.hex() == value("witness key id")
    assert vkey_line(name, key_id, 0x04, public) == value("witness vkey")
    timestamp = int(value("timestamp"))
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text().encode()
    witness = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(value("witness seed")))
    signature = witness.sign(message)  # Ed25519 is deterministic: the page's bytes again
    line = (
        f"— {name} " + base64.b64encode(key_id + timestamp.to_bytes(8, "big") + signature).decode()
    )
    assert line == value("cosignature line")


def test_the_example_export_verifies_with_the_example_key(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in export_lines()))
    result = verify_export(path, [NoteVerifier.from_vkey(value("vkey"))])
    assert result.size == 3
    assert result.root.hex() == value("root")


def test_a_ledger_writes_exactly_the_example_export(tmp_path: Path) -> None:
    lines = export_lines()
    entries = [entry(line) for line in lines[:3]]
    times = [dt.datetime.fromisoformat(str(e["time"])) for e in entries]
    clock = iter([*times, times[-1] + dt.timedelta(seconds=1)])
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(value("seed")))
    engine = create_engine(sqlite_url(tmp_path / "example.db"))
    try:
        with Ledger(
            engine,
            origin=value("name"),
            signer=NoteSigner(value("name"), key),
            checkpoint_interval=None,
            clock=lambda: next(clock),
        ).open() as ledger:
            for e in entries[1:]:
                body = e["body"]
                assert isinstance(body, dict)
                ledger.append(
                    str(e["kind"]), actor=str(e["actor"]), subject=str(e["subject"]), body=body
                )
            path = tmp_path / "written.jsonl"
            with path.open("wb") as out:
                write_export(ledger, out)
    finally:
        engine.dispose()
    assert path.read_bytes().split(b"\n")[:-1] == lines


def test_the_pages_python_recomputes_the_root(tmp_path: Path) -> None:
    snippet = re.search(r"```python\n(.*?)```", text(), re.DOTALL)
    assert snippet, "docs/VERIFYING.md lost its Python snippet"
    (tmp_path / "export.jsonl").write_bytes(b"".join(line + b"\n" for line in export_lines()))
    done = subprocess.run(
        [sys.executable, "-c", snippet.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("spec", ["RFC 8785", "RFC 9162", "signed-note", "tlog-cosignature"])
def test_the_page_names_the_specifications(spec: str) -> None:
    assert spec in text()
