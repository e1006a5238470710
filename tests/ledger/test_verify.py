"""The offline verifier catches every kind of tampering and names the right ``seq``.

Exports come from a real ``Ledger`` on SQLite with a checkpoint every 7 entries. Each test edits a
copy of an export the way someone hiding something would, then checks that both the verifier
API (``VerificationError.seq``) and the regulator's command (the first line it prints) name the
entry where the tampering is.

Every test runs three ways (``verify_mode``): in this process with the whole export in one chunk,
in this process in chunks of a few lines, and with two worker processes on such chunks. The tests
at the end compare those ways with ``ExportVerifier.feed`` line by line (the reference) on a
larger export tampered at and around chunk boundaries: same result, or same seq and message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.verify
from ledger import merkle
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cli import main as ledger_cli
from ledger.cosignature import CosignatureVerifier, Cosigner, add_cosignature
from ledger.database import create_engine
from ledger.entry import GENESIS_PREV, encode_entry
from ledger.errors import LedgerError, VerificationError
from ledger.export import checkpoint_line, write_export
from ledger.note import NoteSigner, NoteVerifier, parse_note
from ledger.store import Ledger, Record
from ledger.verify import ExportVerifier, VerifyResult, verify_export

ORIGIN = "test.mandate.example/ledger"
EVERY = 7
# The verify_mode fixture replaces it in every test; the tests of the choice itself call this.
AUTO_WORKERS = ledger.verify._auto_workers
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


# -- the ways to verify --------------------------------------------------------------------------

# workers, chunk bytes (None: the default, which holds these small exports whole)
MODES = {"serial": (1, None), "serial-chunked": (1, 300), "parallel": (2, 300)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Each test runs in every mode, except those that compare the modes themselves.
    if "verify_mode" in metafunc.fixturenames and not getattr(
        metafunc.function, "compares_modes", False
    ):
        metafunc.parametrize("verify_mode", list(MODES), indirect=True)


@pytest.fixture(autouse=True)
def verify_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``verify_export`` and the command (which leave ``workers`` to it) use this mode."""
    mode = getattr(request, "param", "serial")
    workers, chunk = MODES[mode]
    monkeypatch.setattr(ledger.verify, "_auto_workers", lambda size: workers)
    if chunk is not None:
        monkeypatch.setattr(ledger.verify, "CHUNK_BYTES", chunk)
    return str(mode)


def compares_modes(test: Any) -> Any:
    test.compares_modes = True
    return test


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
    assert kept.to_json() == {
        "valid": True,
        "size": 35,
        "root": result.root.hex(),
        "checkpoints": 5,
        "keys": [export.signers[0].vkey],
        "final_key": export.signers[0].vkey,
        "anchored_at": 35,
        "tail_unanchored": False,
        "witnesses": [],
        "witnessed_at": None,
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"checkpoint": ', "the closing checkpoint line is not JSON"),
        (b'{"checkpoint": 7}', 'a checkpoint line is {"checkpoint": "<signed note>"}'),
        (b'{"checkpoint": "x", "more": 1}', 'a checkpoint line is {"checkpoint": "<signed note>"}'),
        (b'{"checkpoint":["x"]}', 'a checkpoint line is {"checkpoint": "<signed note>"}'),
    ],
)
def test_a_closing_line_that_is_not_a_checkpoint_line(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: bytes, problem: str
) -> None:
    failed = assert_names(write(tmp_path, [*export.entries, line]), export, 35, "", capsys)
    assert failed.problem == problem


def test_a_kept_checkpoint_whose_signature_does_not_verify(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = entry(export.entries[15])["body"]["note"]
    path = write(tmp_path, export.lines)
    problem = "the trusted checkpoint's signature does not verify"
    failed = assert_names(path, export, 15, "", capsys, trusted=forge_root(earlier))
    assert failed.problem == problem
    # The log's own signature, relabelled with another key name: a signature counts only for
    # the key its name and key id name.
    text, _, line = earlier.rstrip("\n").rpartition("\n")
    relabelled = f"{text}\n{line.replace(ORIGIN, 'someone.else/log', 1)}\n"
    failed = assert_names(path, export, 15, "", capsys, trusted=relabelled)
    assert failed.problem == problem


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
    # The last entry (34) is named: with the chain recomputed it differs from the one signed.
    failed = assert_names(write(tmp_path, lines), export, 34, "altered", capsys)
    assert span_of(failed.problem) == (31, 34)


def test_the_last_entry_altered_is_named_not_the_seq_after_it(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No entry follows the last one to break the chain: only the closing checkpoint's root shows
    # it, and the report names that entry (seq 34 of 35), not the closing line's place (35).
    lines = list(export.lines)
    assert entry(lines[34])["kind"] == "decision"
    lines[34] = with_body(lines[34], amount="9000.00")
    failed = assert_names(write(tmp_path, lines), export, 34, "altered", capsys)
    assert "35" not in failed.problem.split(":")[0]


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
    failed = assert_names(write(tmp_path, lines), export, K, "inserted", capsys)
    assert failed.problem == f"entry was inserted: the next entry links past it, to seq {K - 1}"

    # Before the first entry: it links to nothing but the start of the log.
    first = entry(export.entries[0])
    forged = encode({**first, "kind": "decision", "subject": "slipped-in", "body": {"n": -1}})
    failed = assert_names(write(tmp_path, [forged, *export.lines]), export, 0, "", capsys)
    assert (
        failed.problem
        == "entry was inserted: the next entry links past it, to the start of the log"
    )


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


def test_a_seq_of_true_is_not_seq_1(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON true is not 1, though Python says True == 1.
    entries = list(export.entries)
    entries[1] = encode({**entry(entries[1]), "seq": True})
    lines = [*rechain(entries, 1), export.lines[-1]]
    assert_names(write(tmp_path, lines), export, 1, "seq must be an integer, got True", capsys)


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


# -- keys, built entry by entry ------------------------------------------------------------------
#
# Logs a ledger never writes, built line by line: what someone holding a key, or the database,
# could try.


def built(*steps: tuple[Any, ...]) -> list[bytes]:
    """An export from steps: ("entry",), ("key", signer, from_size[, previous signer]),
    ("checkpoint", signer[, size]), ("closing", signer[, size]): each line canonical and chained,
    each checkpoint over the entries before it (or signing ``size``, with the right root)."""
    lines: list[bytes] = []
    leaves: list[bytes] = []
    prev = GENESIS_PREV
    for step in steps:
        kind, seq = step[0], len(leaves)
        if kind in ("checkpoint", "closing"):
            size = step[2] if len(step) > 2 else seq
            tree = Checkpoint(ORIGIN, size, merkle.root_hash(leaves[:size]))
            note = sign_checkpoint(tree, step[1])
            if kind == "closing":
                lines.append(closing(note))
                continue
            body: dict[str, Any] = {"note": note}
        elif kind == "key":
            body = {"vkey": step[1].vkey, "from_size": step[2]}
            if len(step) > 3:
                body["previous"] = step[3].vkey
        else:
            body = {"n": seq}
        obj = {
            "actor": "ledger",
            "body": body,
            "kind": "decision" if kind == "entry" else kind,
            "prev": prev,
            "seq": seq,
            "subject": "s",
            "time": "2026-01-01T00:00:00.000000Z",
        }
        data = encode(obj)
        lines.append(data)
        leaves.append(merkle.leaf_hash(data))
        prev = leaves[-1].hex()
    return lines


def verified(tmp_path: Path, lines: list[bytes], *trusted: NoteSigner) -> VerifyResult:
    keys = [NoteVerifier.from_vkey(s.vkey) for s in trusted]
    return verify_export(write(tmp_path, lines, "built.jsonl"), keys)


def refused(tmp_path: Path, lines: list[bytes], *trusted: NoteSigner) -> VerificationError:
    with pytest.raises(VerificationError) as failed:
        verified(tmp_path, lines, *trusted)
    return failed.value


def test_a_log_built_as_a_ledger_builds_it_verifies(tmp_path: Path) -> None:
    # The steps the tests below depart from: a rotation from k0 to k1 at seq 5.
    k0, k1 = new_signer(), new_signer()
    lines = built(
        ("key", k0, 1),
        ("entry",),
        ("entry",),
        ("checkpoint", k0),
        ("entry",),
        ("key", k1, 7, k0),
        ("checkpoint", k0),  # the handover: k0 signs the tree holding k1's key entry
        ("entry",),
        ("checkpoint", k1),
        ("closing", k1),
    )
    for trusted in ([k0], [k1], [k0, k1]):
        result = verified(tmp_path, lines, *trusted)
        assert (result.size, result.checkpoints, result.final_key) == (9, 4, k1.vkey)
        assert result.keys == (k0.vkey, k1.vkey)


def test_a_key_entry_the_previous_key_never_signed_into_a_tree_is_refused(tmp_path: Path) -> None:
    # An attacker with write access adds their own key and signs with it: no checkpoint by k0
    # holds the key entry. Refused at the key entry even if the auditor was told to trust the
    # attacker's key too (say, from a key list the attacker edited).
    k0, attacker = new_signer(), new_signer()
    head = [("key", k0, 1), ("entry",), ("checkpoint", k0), ("key", attacker, 5, k0), ("entry",)]
    never = (
        "key entry was never signed into a tree by the key before it; a key counts only after "
        "its predecessor vouches for it"
    )
    for tail in ([("closing", attacker)], [("checkpoint", attacker), ("closing", attacker)]):
        for trusted in ([k0], [k0, attacker], [attacker]):
            failed = refused(tmp_path, built(*head, *tail), *trusted)
            assert (failed.seq, failed.problem) == (3, never)

    # A checkpoint by k0 before the key entry does not vouch for it either.
    lines = built(
        ("key", k0, 1),
        ("entry",),
        ("checkpoint", k0),
        ("entry",),
        ("key", attacker, 6, k0),
        ("entry",),
        ("closing", attacker),
    )
    failed = refused(tmp_path, lines, k0, attacker)
    assert (failed.seq, failed.problem) == (4, never)


def test_a_checkpoint_with_no_key_entry_before_it_is_refused(tmp_path: Path) -> None:
    k0 = new_signer()
    failed = refused(tmp_path, built(("entry",), ("entry",), ("checkpoint", k0)), k0)
    assert (failed.seq, failed.problem) == (2, "no key entry precedes this checkpoint")
    failed = refused(tmp_path, built(("entry",), ("closing", k0)), k0)
    assert (failed.seq, failed.problem) == (1, "no key entry precedes this closing checkpoint")
    # A key entry later on does not cover the checkpoints before it.
    failed = refused(tmp_path, built(("entry",), ("key", k0, 1)), k0)
    assert (failed.seq, failed.problem) == (1, "the first key entry must be seq 0, from size 1")


@pytest.mark.parametrize(
    ("steps", "seq", "problem"),
    [
        ([("key", "k0", 2)], 0, "the first key entry must be seq 0, from size 1"),
        ([("key", "k0", 0)], 0, "the first key entry must be seq 0, from size 1"),
        (
            [("key", "k0", 1), ("entry",), ("key", "k1", 3, "k0")],
            2,
            "a new key may sign from size 4 at the earliest, not 3",
        ),
        (
            [("key", "k0", 1), ("entry",), ("key", "k1", 4, "k1")],
            2,
            "key entry does not name the current key as previous",
        ),
        (
            [("key", "k0", 1), ("entry",), ("key", "k1", 4)],
            2,
            "key entry does not name the current key as previous",
        ),
    ],
)
def test_key_entries_that_break_the_rules_are_refused(
    tmp_path: Path, steps: list[tuple[Any, ...]], seq: int, problem: str
) -> None:
    signers = {"k0": new_signer(), "k1": new_signer()}
    named = [tuple(signers.get(x, x) if isinstance(x, str) else x for x in s) for s in steps]
    failed = refused(tmp_path, built(*named, ("closing", signers["k0"])), signers["k0"])
    assert (failed.seq, failed.problem) == (seq, problem)


def test_a_new_key_may_sign_from_two_entries_on(tmp_path: Path) -> None:
    # The earliest: the key entry, then the handover checkpoint, then the new key's range.
    k0, k1 = new_signer(), new_signer()
    lines = built(("key", k0, 1), ("key", k1, 3, k0), ("checkpoint", k0), ("closing", k1))
    assert verified(tmp_path, lines, k0).final_key == k1.vkey


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("key", "key entry body must be an object"),
        ({"vkey": 1, "from_size": 1}, "key entry needs vkey (string) and from_size (integer)"),
        ({"vkey": "x+00000000+AA==", "from_size": "1"}, "key entry needs vkey (string) and"),
        ({"vkey": "x+00000000+AA==", "from_size": 1}, "key entry holds a bad verifier key: "),
    ],
)
def test_malformed_key_entries_are_refused(tmp_path: Path, body: Any, problem: str) -> None:
    k0 = new_signer()
    lines = built(("key", k0, 1), ("entry",), ("closing", k0))
    obj = entry(lines[0])
    obj["body"] = body
    lines = [*rechain([encode(obj), *lines[1:-1]], 0), lines[-1]]
    failed = refused(tmp_path, lines, k0)
    assert failed.seq == 0
    assert failed.problem.startswith(problem)


def test_a_checkpoint_that_signs_another_size_is_refused(tmp_path: Path) -> None:
    k0 = new_signer()
    start = [("key", k0, 1), ("entry",), ("entry",)]
    for size in (2, 4):
        failed = refused(tmp_path, built(*start, ("checkpoint", k0, size), ("closing", k0)), k0)
        assert (failed.seq, failed.problem) == (
            3,
            f"checkpoint entry signs size {size} but stands at seq 3",
        )
    failed = refused(tmp_path, built(*start, ("closing", k0, 2)), k0)
    assert (failed.seq, failed.problem) == (
        3,
        "the closing checkpoint signs size 2 but the export holds 3 entries",
    )


def test_trust_passes_only_from_a_trusted_key(tmp_path: Path) -> None:
    k0, k1, stranger = new_signer(), new_signer(), new_signer()
    lines = built(
        ("key", k0, 1), ("entry",), ("key", k1, 4, k0), ("checkpoint", k0), ("closing", k1)
    )
    failed = refused(tmp_path, lines, stranger)
    assert (failed.seq, failed.problem) == (
        4,
        f"the closing checkpoint is signed by {k1.vkey}, which is neither a key you trust nor "
        "one a trusted key vouched for",
    )
    # k0 trusted, k1 learnt from k0's signed tree; the stranger's key does not vouch for k0.
    assert verified(tmp_path, lines, k0, stranger).final_key == k1.vkey


def test_a_checkpoint_signed_by_a_trusted_key_the_log_does_not_name_for_it(
    tmp_path: Path,
) -> None:
    k0, other = new_signer(), new_signer()
    lines = built(("key", k0, 1), ("entry",), ("closing", other))
    failed = refused(tmp_path, lines, k0, other)
    assert (failed.seq, failed.problem) == (
        2,
        f"closing checkpoint of size 2 is signed by {ORIGIN}+{other.key_id.hex()}, outside that "
        f"key's range; the ledger's key for this size is {k0.vkey}",
    )
    failed = refused(tmp_path, lines, k0)
    assert (failed.seq, failed.problem) == (
        2,
        f"closing checkpoint is signed by unknown key {ORIGIN}+{other.key_id.hex()}",
    )


def test_malformed_and_foreign_checkpoints(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = export.signers[0]
    cases = [
        ("not a note", "malformed checkpoint: note has no blank line before its signatures"),
        (
            sign_checkpoint(Checkpoint("other.example/log", 15, bytes(32)), signer),
            f"checkpoint origin 'other.example/log', expected '{ORIGIN}'",
        ),
    ]
    for note, problem in cases:
        entries = list(export.entries)
        entries[15] = with_body(entries[15], note=note)
        lines = [*rechain(entries, 15), export.lines[-1]]
        failed = assert_names(write(tmp_path, lines), export, 15, "", capsys)
        assert failed.problem == problem
    closing_line = closing("x\n\n— y AAAA\n")
    failed = assert_names(write(tmp_path, [*export.entries, closing_line]), export, 35, "", capsys)
    assert (
        failed.problem
        == "malformed closing checkpoint: signature by y is 3 bytes; want a 4-byte key id and a "
        "signature"
    )


def test_a_prev_that_links_nowhere_names_its_entry(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = list(export.lines)
    lines[K] = encode({**entry(lines[K]), "prev": "ab" * 32})
    failed = assert_names(write(tmp_path, lines), export, K, "", capsys)
    assert failed.problem == (
        f"prev does not link to seq {K - 1}: an entry was removed, inserted or rewritten here"
    )
    lines = list(export.lines)
    lines[0] = encode({**entry(lines[0]), "prev": "ab" * 32})
    failed = assert_names(write(tmp_path, lines), export, 0, "", capsys)
    assert failed.problem == "the first entry's prev must be 64 zeros"


def test_the_last_entry_s_broken_link_names_the_entry_before_it(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing after it tells which of the two was changed: the report names the earlier one.
    lines = list(export.lines)
    lines[34] = encode({**entry(lines[34]), "prev": "ab" * 32})
    failed = assert_names(write(tmp_path, lines), export, 33, "", capsys)
    assert failed.problem == "entry was altered, or the prev of seq 34 was: their hashes differ"


def test_a_checkpoint_entry_without_a_note(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = list(export.entries)
    entries[15] = with_body(entries[15], note=15)
    lines = [*rechain(entries, 15), export.lines[-1]]
    failed = assert_names(write(tmp_path, lines), export, 15, "", capsys)
    assert failed.problem == "checkpoint entry has no note"


def test_feeding_lines_tells_progress_every_16384_lines_and_at_the_end(tmp_path: Path) -> None:
    # The path a pipe takes. Progress is in bytes done, after whole lines.
    k0 = new_signer()
    lines = [x + b"\n" for x in built(("key", k0, 1), *[("entry",)] * 16400, ("closing", k0))]
    told: list[int] = []
    verifier = ExportVerifier([NoteVerifier.from_vkey(k0.vkey)])
    verifier.feed_all(iter(lines), told.append)
    assert verifier.finish().size == 16401
    assert told == [sum(map(len, lines[:16384])), sum(map(len, lines))]
    quiet = ExportVerifier([NoteVerifier.from_vkey(k0.vkey)])
    quiet.feed_all(iter(lines), None)
    assert quiet.finish().size == 16401


def test_workers_are_chosen_by_size_and_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AUTO_WORKERS(0) == 1
    assert AUTO_WORKERS(ledger.verify.PARALLEL_MIN_BYTES - 1) == 1
    cpus = len(os.sched_getaffinity(0))
    want = max(1, min(cpus, ledger.verify.MAX_AUTO_WORKERS))
    assert AUTO_WORKERS(ledger.verify.PARALLEL_MIN_BYTES) == want
    assert AUTO_WORKERS(1 << 40) == want
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert AUTO_WORKERS(1 << 40) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS: all the CPUs count
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert AUTO_WORKERS(1 << 40) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert AUTO_WORKERS(1 << 40) == 1


def test_worker_processes_are_not_forked_from_a_process_with_threads() -> None:
    # A forked child gets copies of the locks other threads hold: with a thread running, the
    # workers start from a fresh interpreter.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert ledger.verify._start_method() == "forkserver"
    finally:
        stop.set()
        other.join()


# -- witnesses -----------------------------------------------------------------------------------

WITNESS_TIME = 1_700_000_000


@pytest.fixture(scope="module")
def witnesses() -> tuple[Cosigner, Cosigner, Cosigner]:
    w1, w2, w3 = (
        Cosigner(f"witness.example/w{i}", Ed25519PrivateKey.generate()) for i in (1, 2, 3)
    )
    return w1, w2, w3


def witnesses_extra() -> Cosigner:
    return Cosigner("witness.example/w4", Ed25519PrivateKey.generate())


def cosign(note: str, *by: Cosigner) -> str:
    for cosigner in by:
        note = add_cosignature(note, cosigner.cosign(parse_note(note).text, WITNESS_TIME))
    return note


def verifiers(*cosigners: Cosigner) -> list[CosignatureVerifier]:
    return [CosignatureVerifier.from_vkey(c.vkey) for c in cosigners]


def witnessed(
    path: Path, export: Export, known: list[Cosigner], want: int, trusted: str | None = None
) -> VerifyResult:
    return verify_export(
        path,
        export.keys[:1],
        trusted_checkpoint=trusted,
        witnesses=verifiers(*known),
        min_witnesses=want,
    )


def witness_cli(
    path: Path, export: Export, known: list[Cosigner], *extra: str, trusted: str | None = None
) -> int:
    args = ["verify", str(path), "--public-key", str(export.key_file), *extra]
    for i, cosigner in enumerate(known):
        key = path.with_name(f"witness-{i}.pub")
        key.write_text(f"# witness {i}\n{cosigner.vkey}\n")
        args += ["--witness-key", str(key)]
    if trusted is not None:
        kept = path.with_name("kept.note")
        kept.write_text(trusted)
        args += ["--trusted-checkpoint", str(kept)]
    return ledger_cli(args)


def assert_not_witnessed(
    path: Path,
    export: Export,
    known: list[Cosigner],
    want: int,
    seq: int,
    problem: str,
    capsys: pytest.CaptureFixture[str],
    trusted: str | None = None,
) -> None:
    """Too few or forged cosignatures: the API and the command say so, at ``seq``."""
    with pytest.raises(VerificationError) as failed:
        witnessed(path, export, known, want, trusted)
    assert failed.value.seq == seq
    assert failed.value.problem == problem
    capsys.readouterr()
    assert witness_cli(path, export, known, "--min-witnesses", str(want), trusted=trusted) == 1
    assert capsys.readouterr().out == f"TAMPERED: seq {seq}: {problem}\n"


def test_enough_witness_cosignatures_make_the_export_valid(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w1, w2, w3 = witnesses
    path = write(tmp_path, [*export.entries, closing(cosign(export.closing_note, w1, w2))])
    result = witnessed(path, export, [w1, w2, w3], 2)
    assert result.witnesses == (w1.vkey, w2.vkey)
    assert result.witnessed_at == 35
    assert witnessed(path, export, [w2], 1).witnesses == (w2.vkey,)
    # The cosignature lines change nothing else, and are ignored without witness keys.
    plain = verify(path, export)
    assert (plain.size, plain.checkpoints, plain.witnesses, plain.witnessed_at) == (35, 5, (), None)

    capsys.readouterr()
    assert witness_cli(path, export, [w1, w2, w3], "--min-witnesses", "2") == 0
    out = capsys.readouterr().out
    assert (
        f"cosigned by 2 witness(es) at the closing checkpoint (size 35): {w1.vkey}, {w2.vkey}"
        in out
    )
    assert witness_cli(path, export, [w3, w2], "--json") == 0  # one is enough by default
    shown = json.loads(capsys.readouterr().out)
    assert (shown["witnesses"], shown["witnessed_at"]) == ([w2.vkey], 35)


def test_too_few_witness_cosignatures_are_refused_naming_who_did(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w1, w2, _ = witnesses
    path = write(tmp_path, [*export.entries, closing(cosign(export.closing_note, w1))])
    problem = (
        "not witnessed: want 2 witness cosignatures, the closing checkpoint has 1 "
        "(witness.example/w1)"
    )
    assert_not_witnessed(path, export, [w1, w2], 2, 35, problem, capsys)

    # No cosignature at all, and one wanted by default as soon as witness keys are known.
    bare = write(tmp_path, export.lines, "bare.jsonl")
    problem = "not witnessed: want 1 witness cosignatures, the closing checkpoint has 0"
    assert_not_witnessed(bare, export, [w1], 1, 35, problem, capsys)
    assert witness_cli(bare, export, [w1]) == 1
    assert witness_cli(bare, export, [w1], "--min-witnesses", "0") == 0


def test_a_cosignature_by_a_key_not_given_does_not_count(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w1, w2, w3 = witnesses
    path = write(tmp_path, [*export.entries, closing(cosign(export.closing_note, w3, w1))])
    problem = (
        "not witnessed: want 2 witness cosignatures, the closing checkpoint has 1 "
        f"(witness.example/w1); ignored cosignatures by keys not given: "
        f"witness.example/w3+{w3.key_id.hex()}"
    )  # the log's own signature is not listed
    assert_not_witnessed(path, export, [w1, w2], 2, 35, problem, capsys)


@pytest.mark.parametrize("edit", ["time", "signature", "root"])
def test_a_forged_cosignature_is_refused(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: str,
) -> None:
    w1, w2, _ = witnesses
    text = parse_note(export.closing_note).text
    if edit == "root":  # a genuine cosignature, of another tree
        line = w2.cosign(parse_note(forge_root(export.closing_note)).text, WITNESS_TIME)
    else:
        head, _, encoded = w2.cosign(text, WITNESS_TIME).rpartition(" ")
        blob = bytearray(base64.b64decode(encoded))
        blob[11 if edit == "time" else 40] ^= 1
        line = f"{head} {base64.b64encode(bytes(blob)).decode()}"
    note = add_cosignature(cosign(export.closing_note, w1), line)
    path = write(tmp_path, [*export.entries, closing(note)])
    problem = (
        f"closing checkpoint: cosignature by {w2.vkey} does not verify: forged, or the "
        "checkpoint was altered after the witness signed it"
    )
    # Refused even though w1's cosignature alone would be enough.
    assert_not_witnessed(path, export, [w1, w2], 1, 35, problem, capsys)


def test_cosignatures_on_the_kept_checkpoint_count(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w1, w2, w3 = witnesses
    earlier = entry(export.entries[15])["body"]["note"]
    kept = cosign(earlier, w1, w2)
    path = write(tmp_path, [*export.entries, closing(cosign(export.closing_note, w3))])
    result = witnessed(path, export, [w1, w2, w3], 2, trusted=kept)
    assert (result.anchored_at, result.witnessed_at) == (15, 15)
    assert result.witnesses == (w1.vkey, w2.vkey)
    # The closing checkpoint comes first when both have enough.
    assert witnessed(path, export, [w1, w2, w3], 1, trusted=kept).witnessed_at == 35
    capsys.readouterr()
    assert witness_cli(path, export, [w1, w2], "--min-witnesses", "2", trusted=kept) == 0
    assert "at the trusted checkpoint (size 15)" in capsys.readouterr().out

    # Neither has enough alone; counts from the two are not added up.
    problem = (
        "not witnessed: want 2 witness cosignatures, the closing checkpoint has 1 "
        "(witness.example/w3), the trusted checkpoint 1 (witness.example/w1)"
    )
    one = cosign(earlier, w1)
    assert_not_witnessed(path, export, [w1, w3], 2, 35, problem, capsys, trusted=one)

    # Cosignatures by keys not given are named from both checkpoints, each once.
    problem = (
        "not witnessed: want 2 witness cosignatures, the closing checkpoint has 0, the trusted "
        "checkpoint 1 (witness.example/w1); ignored cosignatures by keys not given: "
        f"witness.example/w3+{w3.key_id.hex()}, witness.example/w2+{w2.key_id.hex()}"
    )
    both = cosign(earlier, w1, w2, w3)
    assert_not_witnessed(path, export, [w1, witnesses_extra()], 2, 35, problem, capsys, both)

    # A forged cosignature on the kept checkpoint names the kept checkpoint's size.
    forged = add_cosignature(earlier, w2.cosign(parse_note(forge_root(earlier)).text, 1))
    problem = (
        f"trusted checkpoint: cosignature by {w2.vkey} does not verify: forged, or the "
        "checkpoint was altered after the witness signed it"
    )
    assert_not_witnessed(path, export, [w1, w2], 2, 15, problem, capsys, trusted=forged)


def test_more_witnesses_wanted_than_keys_given_is_unusable(
    export: Export,
    witnesses: tuple[Cosigner, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w1, w2, _ = witnesses
    path = write(tmp_path, [*export.entries, closing(cosign(export.closing_note, w1, w2))])
    capsys.readouterr()
    for known, extra in (
        ([w1], ["--min-witnesses", "2"]),
        ([w1, w1], ["--min-witnesses", "2"]),  # the same witness twice is one witness
        ([], ["--min-witnesses", "1"]),
    ):
        assert witness_cli(path, export, known, *extra) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error: --min-witnesses ")
        assert len(captured.err.splitlines()) == 1
    with pytest.raises(
        ValueError, match=r"^2 witness cosignatures wanted but 1 distinct witness keys given$"
    ):
        witnessed(path, export, [w1, w1], 2)

    # A log key is not a witness key (another signature type).
    log_key = ["--witness-key", str(export.key_file)]
    assert ledger_cli(["verify", str(path), "--public-key", str(export.key_file), *log_key]) == 2
    assert "mandate.pub:1: verifier key algorithm is 0x01; want 0x04" in capsys.readouterr().err


# -- chunks and workers against the reference -----------------------------------------------------

BIG_ENTRIES = 1000
BIG_EVERY = 25


@dataclass(frozen=True)
class Big:
    """A larger export (with a key rotation, non-ASCII text and float-looking strings) and the
    chunk size that makes line ``boundary`` start exactly where the first chunk ends."""

    lines: list[bytes]  # with their newlines
    keys: list[NoteVerifier]
    chunk: int
    boundary: int
    signer: NoteSigner  # the first key's

    def kept(self, size: int, *, altered: bool = False) -> str:
        """A checkpoint of the first ``size`` entries, as an auditor may have kept one."""
        leaves = [merkle.leaf_hash(line.rstrip(b"\n")) for line in self.lines[:size]]
        root = merkle.root_hash(leaves)
        if altered:
            root = hashlib.sha256(root).digest()
        return sign_checkpoint(Checkpoint(ORIGIN, size, root), self.signer)

    def boundaries(self) -> list[int]:
        """Lines that start a chunk: the one starting exactly at the first chunk's edge, and
        the first to start after the edge of a chunk that ends inside a line."""
        starts, offset = [], 0
        for line in self.lines:
            starts.append(offset)
            offset += len(line)
        edge = 5 * self.chunk + self.chunk // 2
        assert edge not in starts
        return [self.boundary, next(i for i, start in enumerate(starts) if start > edge)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    directory = tmp_path_factory.mktemp("big")
    engine = create_engine(f"sqlite:///{directory / 'mandate.db'}")
    signers = [new_signer(), new_signer()]
    try:
        with Ledger(
            engine,
            origin=ORIGIN,
            signer=signers[0],
            checkpoint_every=BIG_EVERY,
            checkpoint_interval=None,
        ).open() as ledger:
            for batch in range(BIG_ENTRIES // 100):
                if batch == 6:
                    ledger.rotate_key(signers[1])
                records = [
                    Record(
                        "decision",
                        "agent-7",
                        f"change-{i}",
                        {
                            "amount": f"{i}.50",
                            # Non-ASCII text, and ASCII that looks like a float to the pre-test.
                            "note": "Zoë"
                            if i % 7 == 0
                            else "one:1.5, [e]"
                            if i % 11 == 0
                            else f"{i}",
                            "n": -i,
                            "list": [i, i + 1, {"k": "v"}],
                        },
                    )
                    for i in range(batch * 100, batch * 100 + 100)
                ]
                ledger.append_many(records)
            path = directory / "export.jsonl"
            with path.open("wb") as out:
                write_export(ledger, out)
    finally:
        engine.dispose()
    lines = path.read_bytes().splitlines(keepends=True)
    boundary = 120
    chunk = sum(map(len, lines[:boundary]))
    return Big(lines, [NoteVerifier.from_vkey(signers[0].vkey)], chunk, boundary, signers[0])


def outcome(
    path: Path, keys: list[NoteVerifier], trusted: str | None = None, workers: int | None = None
) -> tuple[Any, ...]:
    """What verifying says: the result, or the seq and message, or the error.

    ``workers`` None: the reference, ``ExportVerifier.feed`` line by line.
    """
    try:
        if workers is None:
            verifier = ExportVerifier(keys, trusted)
            with path.open("rb") as lines:
                verifier.feed_all(lines, None)
            result = verifier.finish()
        else:
            result = verify_export(path, keys, trusted_checkpoint=trusted, workers=workers)
    except VerificationError as exc:
        return ("tampered", exc.seq, exc.problem)
    except (LedgerError, OSError) as exc:
        return ("unusable", type(exc).__name__, str(exc))
    return ("valid", result)


def assert_same(
    tmp_path: Path,
    big: Big,
    lines: list[bytes],
    trusted: str | None = None,
    workers: tuple[int, ...] = (1, 2),
) -> tuple[Any, ...]:
    """Verifying ``lines`` in chunks, here and with workers, says what the reference says."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(lines))
    want = outcome(path, big.keys, trusted)
    for count in workers:
        got = outcome(path, big.keys, trusted, count)
        assert got == want, f"workers={count}: {got} != reference {want}"
    return want


def big_entry(line: bytes) -> dict[str, Any]:
    return entry(line.rstrip(b"\n"))


def reencode(obj: dict[str, Any]) -> bytes:
    return encode(obj) + b"\n"


@pytest.fixture
def chunked(big: Big, monkeypatch: pytest.MonkeyPatch) -> Big:
    monkeypatch.setattr(ledger.verify, "CHUNK_BYTES", big.chunk)
    return big


@compares_modes
def test_chunks_and_workers_agree_on_the_untouched_export(chunked: Big, tmp_path: Path) -> None:
    big = chunked
    assert sum(map(len, big.lines)) > 8 * big.chunk  # many chunks
    result = assert_same(tmp_path, big, big.lines)
    assert result[0] == "valid"
    assert result[1].size == len(big.lines) - 1
    assert len(result[1].keys) == 2
    # Kept checkpoints: the closing one, and inline ones including one at a chunk's edge.
    notes = [
        (i, big_entry(line)["body"]["note"])
        for i, line in enumerate(big.lines[:-1])
        if big_entry(line)["kind"] == "checkpoint"
    ]
    at_edge = [note for i, note in notes if i in (big.boundary, big.boundary - 1)]
    closing_note = json.loads(big.lines[-1])["checkpoint"]
    for trusted in (closing_note, notes[0][1], notes[len(notes) // 2][1], *at_edge):
        assert assert_same(tmp_path, big, big.lines, trusted)[0] == "valid"
    # Kept checkpoints of sizes no checkpoint entry has, on and off a chunk's edge.
    for size in (big.boundary - 1, big.boundary, big.boundary + 1, 333):
        assert big_entry(big.lines[size])["kind"] == "decision"
        result = assert_same(tmp_path, big, big.lines, big.kept(size))
        assert result[0] == "valid"
        assert result[1].anchored_at == size
        result = assert_same(tmp_path, big, big.lines, big.kept(size, altered=True))
        assert result[:2] == ("tampered", size)


def _tampers(big: Big) -> list[tuple[str, list[bytes]]]:
    """Ways to tamper with the export, each at lines on, before and after chunk edges."""
    out: list[tuple[str, list[bytes]]] = []
    lines = big.lines
    for at in {*(b + d for b in big.boundaries() for d in (-1, 0)), 1, len(lines) - 2}:
        # (the last line of a chunk and the first of the next; the second entry; the last one)
        obj = big_entry(lines[at])
        name = f"{at}-{obj['kind']}"
        flipped = list(lines)
        flipped[at] = lines[at].replace(b'"subject":"', b'"subject":"X', 1)
        out.append((f"altered@{name}", flipped))
        out.append((f"deleted@{name}", lines[:at] + lines[at + 1 :]))
        out.append((f"duplicated@{name}", lines[: at + 1] + lines[at:]))
        out.append((f"swapped@{name}", [*lines[:at], lines[at + 1], lines[at], *lines[at + 2 :]]))
        out.append((f"truncated@{name}", lines[:at]))
        out.append((f"cut-mid-line@{name}", [*lines[:at], lines[at][:20]]))
        out.append((f"merged@{name}", [*lines[:at], lines[at].rstrip(b"\n"), *lines[at + 1 :]]))
        out.append((f"blank@{name}", [*lines[:at], b"\n", *lines[at:]]))
        spaced = list(lines)
        spaced[at] = lines[at].replace(b'":', b'": ', 1)
        out.append((f"not-canonical@{name}", spaced))
        if obj["kind"] == "decision":
            floated = list(lines)
            floated[at] = lines[at].replace(b'"n":', b'"n":0.5,"o":', 1)
            out.append((f"float@{name}", floated))
            rewritten = [line.rstrip(b"\n") for line in lines[:-1]]
            body = {**obj["body"], "amount": "9000.00"}
            rewritten[at] = encode({**obj, "body": body})
            rewritten = rechain(rewritten, at)
            out.append((f"rewritten@{name}", [line + b"\n" for line in rewritten] + lines[-1:]))
            as_true = list(lines)
            as_true[at] = reencode({**obj, "seq": True})
            out.append((f"seq-true@{name}", as_true))
            # Renumbered in place, the chain untouched: only the seq check sees it.
            skipped = list(lines)
            skipped[at] = reencode({**obj, "seq": obj["seq"] + 1})
            out.append((f"seq-skipped@{name}", skipped))
        if at + 1 < len(lines) - 1:
            renumbered = [
                *lines[:at],
                *(
                    reencode({**big_entry(x), "seq": big_entry(x)["seq"] - 1})
                    for x in lines[at + 1 : -1]
                ),
                lines[-1],
            ]
            out.append((f"deleted-renumbered@{name}", renumbered))
    out.append(("no-trailing-newline", [*lines[:-1], lines[-1].rstrip(b"\n")]))
    out.append(("closing-twice", [*lines, lines[-1]]))
    out.append(("no-closing", lines[:-1]))
    out.append(("empty", []))
    return out


@pytest.mark.slow
@compares_modes
def test_chunks_and_workers_name_the_same_seq_for_every_tampering(
    chunked: Big, tmp_path: Path
) -> None:
    big = chunked
    tampered = _tampers(big)
    assert len(tampered) > 80
    for name, lines in tampered:
        try:
            # Workers only: the tests above run every tampering in chunks here too.
            result = assert_same(tmp_path, big, lines, workers=(2,))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        # Without its final newline, or closed twice, the export is as good as it was.
        valid = name in ("no-trailing-newline", "closing-twice")
        assert result[0] == ("valid" if valid else "tampered"), name


@pytest.mark.slow
@compares_modes
def test_chunks_and_workers_agree_on_random_byte_flips(chunked: Big, tmp_path: Path) -> None:
    big = chunked
    data = b"".join(big.lines)
    rng = random.Random(20261125)
    interesting = b'0159-+.eE"\\{}[]:, \nx\xc3\xff'
    for case in range(30):
        mutated = bytearray(data)
        for _ in range(1 + case % 3):
            at = rng.randrange(len(mutated))
            mutated[at] = rng.choice(interesting) if case % 2 else rng.randrange(256)
        lines = bytes(mutated).splitlines(keepends=True)
        try:
            assert_same(tmp_path, big, lines, workers=(1, 2) if case < 5 else (2,))
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from None


@compares_modes
def test_only_checkpoint_and_key_lines_take_the_line_by_line_path(
    chunked: Big, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = chunked
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(big.lines))
    fed: list[bytes] = []
    feed = ExportVerifier.feed

    def counting(self: ExportVerifier, line: bytes) -> None:
        fed.append(line)
        feed(self, line)

    monkeypatch.setattr(ExportVerifier, "feed", counting)
    special = [
        line.rstrip(b"\n")
        for line in big.lines
        if line.startswith(b'{"checkpoint":') or big_entry(line)["kind"] in ("checkpoint", "key")
    ]
    for workers in (1, 2):
        fed.clear()
        assert verify_export(path, big.keys, workers=workers).size == len(big.lines) - 1
        assert fed == special


@compares_modes
def test_progress_is_told_in_file_order_up_to_the_end(chunked: Big, tmp_path: Path) -> None:
    big = chunked
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(big.lines))
    for workers in (1, 2):
        told: list[int] = []
        verify_export(path, big.keys, workers=workers, progress=told.append)
        assert len(told) > 8
        assert told == sorted(told)
        assert told[-1] == path.stat().st_size


@compares_modes
def test_workers_from_a_fresh_interpreter_agree(
    chunked: Big, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where fork is not used (other systems, or threads running): spawned workers.
    monkeypatch.setattr(ledger.verify, "_start_method", lambda: "spawn")
    big = chunked
    lines = list(big.lines)
    lines[big.boundary] = lines[big.boundary].replace(b'"subject":"', b'"subject":"X', 1)
    assert assert_same(tmp_path, big, lines)[0] == "tampered"


@compares_modes
def test_the_workers_option(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, export.lines)
    args = ["verify", str(path), "--public-key", str(export.key_file)]
    for workers in ("1", "2", "3"):
        assert ledger_cli([*args, "--workers", workers]) == 0
        assert capsys.readouterr().out.startswith("VALID: 35 entries")
    for bad in ("0", "-1", "two"):
        assert ledger_cli([*args, "--workers", bad]) == 2
        assert "--workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers"):
        verify_export(path, export.keys, workers=0)


@compares_modes
@settings(max_examples=60, deadline=None)
@given(
    before=st.integers(min_value=0, max_value=300),
    length=st.integers(min_value=1, max_value=300),
)
def test_a_run_appended_whole_gives_the_tree_leaf_by_leaf(before: int, length: int) -> None:
    # A scanned run carries the complete subtrees over [before, before + length); appended to
    # the tree of the first ``before`` leaves they give the same tree as its leaves one by one.
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(before)]
    lines, prev = [], "ab" * 32
    for seq in range(before, before + length):
        line = encode_entry(
            seq=seq, time="t", kind="decision", actor="a", subject="s", body=b"{}", prev=prev
        )
        lines.append(line)
        leaves.append(merkle.leaf_hash(line))
        prev = leaves[-1].hex()
    (run,) = ledger.verify._scan(lines, 0, -1)
    assert isinstance(run, ledger.verify._Run)
    assert (run.first_seq, run.length, run.last_leaf) == (before, length, prev)
    frontier = ledger.verify._Frontier()
    for leaf in leaves[:before]:
        frontier.append_leaf(leaf)
    levels = ledger.verify._subtree_levels(before, before + length)
    assert len(levels) == len(run.hashes)
    for level, subtree in zip(levels, run.hashes, strict=True):
        frontier.append_subtree(level, subtree)
    assert frontier.size == before + length
    assert frontier.root() == merkle.root_hash(leaves)


@compares_modes
@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b"x" * 300]), max_size=40),
    block=st.sampled_from([1, 2, 5, 64, 1 << 16]),
    step=st.integers(min_value=1, max_value=700),
)
def test_chunks_cut_where_lines_start_and_hold_every_line_once(
    text: list[bytes], block: int, step: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = b"".join(text)
    path = tmp_path_factory.mktemp("lines") / "lines"
    path.write_bytes(data)
    want = data.split(b"\n")
    if want[-1] == b"":
        want.pop()  # as iterating over the file gives them
    got: list[bytes] = []
    done = 0
    with path.open("rb", buffering=0) as file, pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger.verify, "_BLOCK", block)
        for start in range(0, len(data), step):
            stop = min(start + step, len(data))
            first = ledger.verify._line_start(file, start)
            end = ledger.verify._line_start(file, stop) if first < stop else first
            assert first == done
            got += ledger.verify._read_lines(file, first, end)
            done = end
    assert done == len(data)
    assert got == want


@compares_modes
def test_an_export_read_from_a_pipe_is_verified_line_by_line(
    export: Export, tmp_path: Path
) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "export.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(
        target=fifo.write_bytes, args=(b"".join(x + b"\n" for x in export.lines),)
    )
    writer.start()
    told: list[int] = []
    try:
        result = verify_export(fifo, export.keys[:1], workers=2, progress=told.append)
    finally:
        writer.join()
    assert result == verify(write(tmp_path, export.lines), export)
    assert told == [sum(len(x) + 1 for x in export.lines)]  # once, at the end


@compares_modes
def test_a_daemonic_process_verifies_without_worker_processes(
    chunked: Big, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool's worker is daemonic and may not start processes: it scans every chunk itself.
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(chunked.lines))
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    result = verify_export(path, [NoteVerifier.from_vkey(chunked.signer.vkey)], workers=2)
    assert result.size == len(chunked.lines) - 1
