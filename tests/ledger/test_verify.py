"""The offline verifier catches every kind of tampering and names the right ``seq``.

Exports come from a real ``Ledger`` on SQLite with a checkpoint every 7 entries. Each test edits a
copy of an export the way someone hiding something would, then checks that both the verifier
API (``VerificationError.seq``) and the regulator's command (the first line it prints) name the
entry where the tampering is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cli import main as ledger_cli
from ledger.database import create_engine
from ledger.entry import GENESIS_PREV
from ledger.errors import VerificationError
from ledger.export import checkpoint_line, write_export
from ledger.note import NoteSigner, NoteVerifier, parse_note
from ledger.store import Ledger
from ledger.verify import VerifyResult, verify_export

ORIGIN = "test.mandate.example/ledger"
EVERY = 7
# The entry most tests tamper with: inside the span 8..14, between the checkpoints at 7 and 15.
K = 10


def new_signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


@dataclass(frozen=True)
class Export:
    """An export's lines (without newlines; the last is the closing checkpoint) and its keys."""

    lines: list[bytes]
    signers: tuple[NoteSigner, ...]
    key_file: Path

    @property
    def entries(self) -> list[bytes]:
        return self.lines[:-1]

    @property
    def closing_note(self) -> str:
        note = json.loads(self.lines[-1])["checkpoint"]
        assert isinstance(note, str)
        return note

    @property
    def keys(self) -> list[NoteVerifier]:
        return [NoteVerifier.from_vkey(s.vkey) for s in self.signers]

    def checkpoint_seqs(self) -> list[int]:
        return [i for i, line in enumerate(self.entries) if entry(line)["kind"] == "checkpoint"]


def build_export(
    directory: Path, subjects: list[str], *, rotate_after: int | None = None
) -> Export:
    directory.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{directory / 'mandate.db'}")
    signers = [new_signer()]
    try:
        with Ledger(
            engine,
            origin=ORIGIN,
            signer=signers[0],
            checkpoint_every=EVERY,
            checkpoint_interval=None,
        ).open() as ledger:
            for i, subject in enumerate(subjects):
                if i == rotate_after:
                    signers.append(new_signer())
                    ledger.rotate_key(signers[-1])
                body = {"amount": f"{i}.00", "note": f"payment {i}", "n": i}
                ledger.append("decision", actor="agent-7", subject=subject, body=body)
            path = directory / "export.jsonl"
            with path.open("wb") as out:
                write_export(ledger, out)
    finally:
        engine.dispose()
    key_file = directory / "mandate.pub"
    key_file.write_text("".join(f"{s.vkey}\n" for s in signers[:1]))
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    return Export(lines, tuple(signers), key_file)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    built = build_export(tmp_path_factory.mktemp("plain"), [f"change-{i}" for i in range(30)])
    # The layout the tests rely on: checkpoints at 7, 15, 23, 31, and entries after the last.
    assert built.checkpoint_seqs() == [7, 15, 23, 31]
    assert len(built.entries) == 35
    return built


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Export:
    return build_export(
        tmp_path_factory.mktemp("rotated"), [f"change-{i}" for i in range(24)], rotate_after=12
    )


@pytest.fixture(scope="module")
def other_history(tmp_path_factory: pytest.TempPathFactory) -> Export:
    return build_export(tmp_path_factory.mktemp("other"), [f"other-{i}" for i in range(30)])


# -- helpers -------------------------------------------------------------------------------------


def entry(line: bytes) -> dict[str, Any]:
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


def encode(obj: dict[str, Any]) -> bytes:
    return rfc8785.dumps(obj)


def leaf(line: bytes) -> str:
    return hashlib.sha256(b"\x00" + line).hexdigest()


def rechain(entries: list[bytes], start: int) -> list[bytes]:
    """Recompute every prev from ``start`` on, as someone covering their tracks would."""
    out = list(entries[:start])
    prev = leaf(out[-1]) if out else GENESIS_PREV
    for line in entries[start:]:
        obj = entry(line)
        obj["prev"] = prev
        data = encode(obj)
        out.append(data)
        prev = leaf(data)
    return out


def renumber(entries: list[bytes], start: int, by: int) -> list[bytes]:
    """Shift the seq of every entry from ``start`` on (prev left alone)."""
    out = list(entries[:start])
    for line in entries[start:]:
        obj = entry(line)
        obj["seq"] += by
        out.append(encode(obj))
    return out


def with_body(line: bytes, **changes: Any) -> bytes:
    obj = entry(line)
    obj["body"] = {**obj["body"], **changes}
    return encode(obj)


def forge_root(note: str) -> str:
    """The same note and signature over a different root."""
    text, sigs = note.split("\n\n", 1)
    origin, size, root = text.split("\n")
    other = bytearray(base64.b64decode(root))
    other[0] ^= 0x01
    return f"{origin}\n{size}\n{base64.b64encode(bytes(other)).decode()}\n\n{sigs}"


def resign(note: str, signer: NoteSigner) -> str:
    return signer.sign(parse_note(note).text)


def closing(note: str) -> bytes:
    return checkpoint_line(note).rstrip(b"\n")


def write(tmp_path: Path, lines: list[bytes], name: str = "tampered.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def verify(path: Path, export: Export, trusted: str | None = None) -> VerifyResult:
    return verify_export(path, export.keys[:1], trusted_checkpoint=trusted)


def assert_names(
    path: Path,
    export: Export,
    seq: int,
    match: str,
    capsys: pytest.CaptureFixture[str],
    trusted: str | None = None,
) -> VerificationError:
    """Verification fails at ``seq``, by the API and on the first line the CLI prints."""
    with pytest.raises(VerificationError) as failed:
        verify(path, export, trusted)
    assert failed.value.seq == seq, failed.value.diagnostics()
    assert re.search(match, failed.value.problem), failed.value.problem

    args = ["verify", str(path), "--public-key", str(export.key_file)]
    if trusted is not None:
        kept = path.with_name("kept.note")
        kept.write_text(trusted)
        args += ["--trusted-checkpoint", str(kept)]
    capsys.readouterr()
    assert ledger_cli(args) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert re.match(rf"TAMPERED: seq {seq}: ", first), first
    return failed.value


def span_of(problem: str) -> tuple[int, int]:
    found = re.search(r"seq (\d+)\.\.(\d+)", problem)
    assert found, problem
    return int(found.group(1)), int(found.group(2))


# -- the untouched export ----------------------------------------------------------------------


def test_the_export_as_written_verifies(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, export.lines)
    result = verify(path, export)
    assert result.size == 35
    assert not result.anchored
    # Four inline checkpoints and the closing one.
    assert result.checkpoints == 5
    kept = verify(path, export, trusted=export.closing_note)
    assert kept.anchored_at == 35
    # A checkpoint the auditor kept from earlier, in the middle of the export.
    earlier = entry(export.entries[15])["body"]["note"]
    assert verify(path, export, trusted=earlier).anchored_at == 15

    assert ledger_cli(["verify", str(path), "--public-key", str(export.key_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"VALID: 35 entries, root {result.root.hex()}")


# -- entries -------------------------------------------------------------------------------------


def test_a_flipped_byte_in_a_body_string_names_that_entry(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    assert b'"payment 8"' in lines[K]  # seq 10 is the 9th append (n = 8)
    lines[K] = lines[K].replace(b'"payment 8"', b'"paymEnt 8"')  # one bit: 0x65 -> 0x45
    assert lines[K] == encode(entry(lines[K]))  # still canonical
    assert_names(write(tmp_path, lines), export, K, "altered", capsys)


def test_a_flipped_byte_in_the_entry_before_a_checkpoint_names_its_span(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Seq 14 is followed by the checkpoint at 15, whose prev then no longer links.
    lines = list(export.lines)
    lines[14] = lines[14].replace(b'"payment 12"', b'"paymEnt 12"')
    assert_names(write(tmp_path, lines), export, 14, "altered", capsys)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"actor":', b'"actor" '),  # not JSON any more
        (b'{"amount":', b'{"zmount":'),  # JSON, but keys out of order
        (b'"n":8', b'"n":8.0'),  # a float
        (b'"payment 8"', b'"payment\\u00208"'),  # an escape JCS would not write
    ],
    ids=["not-json", "key-order", "float", "escape"],
)
def test_a_byte_that_breaks_canonical_form_names_that_entry(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str], old: bytes, new: bytes
) -> None:
    lines = list(export.lines)
    assert old in lines[K]
    lines[K] = lines[K].replace(old, new, 1)
    assert_names(write(tmp_path, lines), export, K, "canonical", capsys)


def test_a_body_rewritten_with_the_chain_recomputed_is_caught_at_the_next_checkpoint(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = list(export.entries)
    entries[K] = with_body(entries[K], amount="9000.00")
    lines = [*rechain(entries, K), export.lines[-1]]
    # Every link holds; only the signed root at 15 shows it.
    failed = assert_names(write(tmp_path, lines), export, 15, "altered", capsys)
    low, high = span_of(failed.problem)
    assert low <= K <= high
    assert (low, high) == (7, 14)


def test_a_rewrite_after_the_last_inline_checkpoint_is_caught_by_the_closing_one(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = list(export.entries)
    entries[33] = with_body(entries[33], amount="9000.00")
    lines = [*rechain(entries, 33), export.lines[-1]]
    failed = assert_names(write(tmp_path, lines), export, 35, "altered", capsys)
    low, high = span_of(failed.problem)
    assert low <= 33 <= high


def test_an_entry_deleted_without_renumbering(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [line for i, line in enumerate(export.lines) if i != K]
    assert_names(write(tmp_path, lines), export, K, "missing", capsys)


def test_an_entry_deleted_with_renumbering(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [line for i, line in enumerate(export.entries) if i != K]
    lines = [*renumber(entries, K, -1), export.lines[-1]]
    assert_names(write(tmp_path, lines), export, K, "removed, inserted or rewritten", capsys)


def test_an_entry_deleted_with_renumbering_and_the_chain_recomputed(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [line for i, line in enumerate(export.entries) if i != K]
    lines = [*rechain(renumber(entries, K, -1), K), export.lines[-1]]
    # The checkpoint entry that stood at 15 now stands at 14, signing a tree it is not in.
    assert_names(write(tmp_path, lines), export, 14, "size 15", capsys)


def _forged(export: Export, seq: int) -> bytes:
    """A plausible entry to slip in at ``seq``: right seq, linked to the entry before it."""
    obj = entry(export.entries[seq])
    obj["subject"] = "change-that-never-happened"
    obj["body"] = {"amount": "1000000.00", "note": "backdated", "n": 999}
    obj["prev"] = leaf(export.entries[seq - 1])
    return encode(obj)


def test_an_entry_inserted(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    lines.insert(K, _forged(export, K))
    assert_names(write(tmp_path, lines), export, K, "inserted", capsys)


def test_an_entry_inserted_with_the_rest_renumbered(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = list(export.entries)
    entries.insert(K, _forged(export, K))
    lines = [*renumber(entries, K + 1, +1), export.lines[-1]]
    assert_names(write(tmp_path, lines), export, K, "inserted", capsys)


def test_an_exact_copy_of_an_entry_inserted_after_it(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    lines.insert(K + 1, lines[K])
    assert_names(write(tmp_path, lines), export, K + 1, "out of order", capsys)


def test_two_entries_swapped(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    lines[K], lines[K + 1] = lines[K + 1], lines[K]
    assert_names(write(tmp_path, lines), export, K, "swapped", capsys)


def test_two_entries_swapped_and_renumbered(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    first, second = entry(lines[K]), entry(lines[K + 1])
    first["seq"], second["seq"] = K + 1, K
    lines[K], lines[K + 1] = encode(second), encode(first)
    assert_names(write(tmp_path, lines), export, K, "prev", capsys)


# -- the tail ------------------------------------------------------------------------------------


def test_a_cut_tail_is_valid_but_unanchored_and_caught_against_a_kept_checkpoint(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Cut back to the checkpoint at 23, and close with that checkpoint's own signed note.
    note = entry(export.entries[23])["body"]["note"]
    path = write(tmp_path, [*export.entries[:23], closing(note)])
    result = verify(path, export)
    assert result.size == 23
    assert not result.anchored
    assert ledger_cli(["verify", str(path), "--public-key", str(export.key_file)]) == 0
    assert "unanchored" in capsys.readouterr().out

    # The auditor kept the closing checkpoint of the full export: the first missing seq is 23.
    assert_names(path, export, 23, "cut", capsys, trusted=export.closing_note)


def test_an_export_without_a_closing_checkpoint(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The entries from the last inline checkpoint (31) on are covered by no signature.
    assert_names(write(tmp_path, export.entries), export, 31, "unsigned", capsys)


def test_lines_after_the_closing_checkpoint(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = entry(export.entries[-1])
    extra["seq"] = 35
    extra["prev"] = leaf(export.entries[-1])
    lines = [*export.lines, encode(extra)]
    assert_names(write(tmp_path, lines), export, 35, "follows the export's closing", capsys)


# -- checkpoints and keys ----------------------------------------------------------------------


def test_an_inline_checkpoint_forged(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    obj = entry(lines[15])
    obj["body"]["note"] = forge_root(obj["body"]["note"])
    lines[15] = encode(obj)
    assert_names(write(tmp_path, lines), export, 15, "forged", capsys)


def test_the_closing_checkpoint_forged(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [*export.entries, closing(forge_root(export.closing_note))]
    assert_names(write(tmp_path, lines), export, 35, "forged", capsys)


def test_a_checkpoint_signed_by_an_unknown_key(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = new_signer()  # same name, another key
    lines = [*export.entries, closing(resign(export.closing_note, stranger))]
    assert_names(write(tmp_path, lines), export, 35, "unknown key", capsys)

    lines = list(export.lines)
    obj = entry(lines[23])
    obj["body"]["note"] = resign(obj["body"]["note"], stranger)
    lines[23] = encode(obj)
    assert_names(write(tmp_path, lines), export, 23, "unknown key", capsys)


def test_a_rotated_export_verifies(rotated: Export, tmp_path: Path) -> None:
    path = write(tmp_path, rotated.lines)
    old, new = rotated.keys
    for keys in ([old], [new]):
        result = verify_export(path, keys)
        assert result.final_key == new.vkey
        assert result.keys == (old.vkey, new.vkey)


def test_a_key_used_outside_its_range(
    rotated: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_signer = rotated.signers[0]
    size = len(rotated.entries)
    lines = [*rotated.entries, closing(resign(rotated.closing_note, old_signer))]
    assert_names(write(tmp_path, lines), rotated, size, "outside that key's range", capsys)

    # An inline checkpoint after the handover, signed by the old key.
    after = [
        seq
        for seq in rotated.checkpoint_seqs()
        if seq > _key_entry_seq(rotated) + 1  # past the old key's last checkpoint
    ]
    assert after
    lines = list(rotated.lines)
    obj = entry(lines[after[0]])
    obj["body"]["note"] = resign(obj["body"]["note"], old_signer)
    lines[after[0]] = encode(obj)
    assert_names(write(tmp_path, lines), rotated, after[0], "outside that key's range", capsys)


def _key_entry_seq(export: Export) -> int:
    keys = [i for i, line in enumerate(export.entries) if entry(line)["kind"] == "key"]
    assert keys[0] == 0
    assert len(keys) == 2
    return keys[1]


def test_a_trusted_checkpoint_from_a_different_history(
    export: Export, other_history: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same origin, another log: the checkpoint at 15 of another ledger, signed by its own key
    # (which the auditor trusts too) and, separately, by this ledger's key.
    elsewhere = entry(other_history.entries[15])["body"]["note"]
    path = write(tmp_path, export.lines)
    own_key = export.signers[0]
    forked = resign(elsewhere, own_key)
    assert_names(path, export, 15, "not consistent with the trusted checkpoint", capsys, forked)
    with pytest.raises(VerificationError) as failed:
        verify(path, export, trusted=elsewhere)
    assert failed.value.seq == 15
