"""Witness cosignatures: a real witness network's checkpoint, round trips, and every forgery.

The known answer is a checkpoint of a public CT log with the cosignatures of three public
witnesses (C2SP tlog-cosignature, made by Go): verifying it checks the key id derivation with
signature type 0x04, the signed message and the timestamp encoding against an implementation
that is not ours.
"""

from __future__ import annotations

import base64
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cosignature import (
    CosignatureVerifier,
    Cosigner,
    add_cosignature,
    cosigned_message,
    open_cosignature,
    verify_cosignatures,
)
from ledger.errors import KeyFileError, NoteError, SignatureError
from ledger.keys import generate_witness_key, load_witness_key
from ledger.note import NoteSigner, NoteVerifier, open_note, parse_note

# A checkpoint of arche2025h1.staging.ct.transparency.dev with two signatures by the log (an
# RFC 6962 one and an Ed25519 one) and four witness cosignatures, as the witness network served
# it; the witnesses' published verifier keys (stagemole's is left out on purpose).
REAL_NOTE = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
"""  # noqa: E501
REAL_LOG_VKEY = (
    "arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f"
)
REAL_WITNESSES = [
    "transparency.dev/DEV:witness-little-garden+d8042a87+BCtusOxINQNUTN5Oj8HObRkh2yHf/MwYaGX4CPdiVEPM",
    "witness1.smartit.nu/witness1+a48c820f+BPSFWg9G6KPiO7QPryYO5Xq4oYJJ+kAvLKLSimDhoxMO",
    "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
]
REAL_TIME = 0x6A122120  # the timestamp the three cosigned at
SHORT_SEED = base64.b64encode(b"\x04" * 32).decode()

ORIGIN = "example.com/log"
TEXT = f"{ORIGIN}\n42\n{base64.b64encode(bytes(range(32))).decode()}\n"


def real_witnesses() -> list[CosignatureVerifier]:
    return [CosignatureVerifier.from_vkey(v) for v in REAL_WITNESSES]


def new_cosigner(name: str = "witness.example/w1") -> Cosigner:
    return Cosigner(name, Ed25519PrivateKey.generate())


def verifier_of(cosigner: Cosigner) -> CosignatureVerifier:
    return CosignatureVerifier.from_vkey(cosigner.vkey)


def log_note() -> str:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).sign(TEXT)


def with_blob(line: str, edit: int, *, bit: int = 0) -> str:
    """Flip ``bit`` of byte ``edit`` of a signature line's blob (0-3 key id, 4-11 time)."""
    head, _, encoded = line.rpartition(" ")
    blob = bytearray(base64.b64decode(encoded))
    blob[edit] ^= 1 << bit
    return f"{head} {base64.b64encode(bytes(blob)).decode()}"


# --- known answers -------------------------------------------------------------------------


def test_a_real_witness_networks_cosignatures_verify() -> None:
    found, others = verify_cosignatures(REAL_NOTE, real_witnesses())
    assert [c.witness.vkey for c in found] == REAL_WITNESSES
    assert {c.timestamp for c in found} == {REAL_TIME}
    # The log's two signatures and stagemole's cosignature are by keys not given: ignored.
    assert others == [
        "arche2025h1.staging.ct.transparency.dev+cd333cb1",
        "arche2025h1.staging.ct.transparency.dev+ba2f06c0",
        "witness.stagemole.eu+67f7aea0",
    ]
    # The cosignature lines do not get in the way of the log's own signature.
    assert open_note(REAL_NOTE, [NoteVerifier.from_vkey(REAL_LOG_VKEY)])[0].text.endswith("=\n")


def test_the_real_cosignatures_cover_size_root_and_time() -> None:
    remora = real_witnesses()[2]
    sig = parse_note(REAL_NOTE).signatures[4]
    text = parse_note(REAL_NOTE).text
    assert remora.verify(text, sig.signature) == REAL_TIME
    assert remora.verify(text.replace("1432088532", "1432088533"), sig.signature) is None
    later = struct.pack(">Q", REAL_TIME + 1) + sig.signature[8:]
    assert remora.verify(text, later) is None
    with pytest.raises(SignatureError, match=r"remora\.n621\.de\+da77ade7.*does not verify"):
        verify_cosignatures(REAL_NOTE.replace("1432088532", "1432088533"), [remora])


def test_key_ids_use_signature_type_4() -> None:
    remora = CosignatureVerifier.from_vkey(REAL_WITNESSES[2])
    assert remora.key_id == bytes.fromhex("da77ade7")
    assert remora.vkey == REAL_WITNESSES[2]
    # The same key as an ordinary (type 0x01) note key has another id, and is refused here.
    raw = base64.b64decode(REAL_WITNESSES[2].split("+", 2)[2])[1:]
    plain = NoteVerifier(remora.name, remora._public_key)
    assert plain.key_id != remora.key_id
    with pytest.raises(NoteError, match="algorithm is 0x01; want 0x04"):
        CosignatureVerifier.from_vkey(plain.vkey)
    assert base64.b64decode(plain.vkey.split("+", 2)[2])[1:] == raw


def test_the_signed_message_is_the_spec_s() -> None:
    assert cosigned_message(TEXT, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + TEXT.encode()
    )
    assert cosigned_message(TEXT, 0).startswith(b"cosignature/v1\ntime 0\n")
    assert cosigned_message(TEXT, (1 << 63) - 1).startswith(b"cosignature/v1\ntime 9223372036")
    for bad in (-1, 1 << 63):
        with pytest.raises(NoteError, match="cosignature time"):
            cosigned_message(TEXT, bad)


# --- round trips -----------------------------------------------------------------------------


def test_cosign_verify_round_trip() -> None:
    cosigner = new_cosigner()
    note = log_note()
    line = cosigner.cosign(TEXT, 1_700_000_000)
    assert line.startswith("— witness.example/w1 ")
    blob = base64.b64decode(line.rpartition(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert blob[:4] == cosigner.key_id
    assert blob[4:12] == struct.pack(">Q", 1_700_000_000)
    cosigned = add_cosignature(note, line)
    found, others = verify_cosignatures(cosigned, [verifier_of(cosigner)])
    assert [(c.witness, c.timestamp) for c in found] == [(verifier_of(cosigner), 1_700_000_000)]
    assert len(others) == 1  # the log's own signature
    assert open_cosignature(note, line, [verifier_of(cosigner)]).timestamp == 1_700_000_000


def test_a_secret_key_line_round_trips_and_keeps_the_key_id() -> None:
    cosigner = new_cosigner()
    skey = cosigner.skey()
    assert skey.startswith(f"PRIVATE+KEY+witness.example/w1+{cosigner.key_id.hex()}+B")
    again = Cosigner.from_skey(skey)
    assert again.vkey == cosigner.vkey
    assert again.cosign(TEXT, 5) == cosigner.cosign(TEXT, 5)  # Ed25519 is deterministic
    assert "PRIVATE" not in repr(cosigner)


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda head, key: f"PRIVATE+KEY-{head[12:]}+{key}", "does not start with"),
        (lambda head, key: head, "parts"),
        (lambda head, key: f"{head}+{key[:-1]}!", "not valid base64"),
        (lambda head, key: f"{head}+AQ{key[2:]}", "0x04"),  # type 0x01
        (lambda head, key: f"{head}+{SHORT_SEED}", "0x04"),  # a 31-byte seed
    ],
)
def test_malformed_secret_key_lines_are_refused(
    mangle: Callable[[str, str], str], problem: str
) -> None:
    skey = new_cosigner().skey()
    head, key = skey[: skey.index("+", 12 + len("witness.example/w1+"))], skey.split("+", 4)[4]
    assert f"{head}+{key}" == skey
    with pytest.raises(NoteError, match=problem):
        Cosigner.from_skey(mangle(head, key))


def test_a_secret_key_line_with_another_key_id_is_refused() -> None:
    skey = new_cosigner().skey()
    name, kid, key = skey.removeprefix("PRIVATE+KEY+").split("+", 2)
    other = f"{int(kid, 16) ^ 1:08x}"
    with pytest.raises(NoteError, match=f"key id is '{other}'"):
        Cosigner.from_skey(f"PRIVATE+KEY+{name}+{other}+{key}")


# --- forgeries -------------------------------------------------------------------------------


@pytest.mark.parametrize("edit", [4, 11, 12, 75])
def test_a_flipped_time_or_signature_bit_is_a_forgery(edit: int) -> None:
    cosigner = new_cosigner()
    line = with_blob(cosigner.cosign(TEXT, 1_700_000_000), edit)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignatures(add_cosignature(log_note(), line), [verifier_of(cosigner)])


def test_a_flipped_key_id_bit_makes_the_cosignature_unknown() -> None:
    cosigner = new_cosigner()
    line = with_blob(cosigner.cosign(TEXT, 1), 0)
    found, others = verify_cosignatures(add_cosignature(log_note(), line), [verifier_of(cosigner)])
    assert found == []
    assert f"witness.example/w1+{bytes([cosigner.key_id[0] ^ 1]).hex()}" in others[-1]


@pytest.mark.parametrize("size", [4 + 8 + 63, 4 + 8 + 65, 4 + 64, 5])
def test_a_cosignature_of_the_wrong_length_does_not_verify(size: int) -> None:
    cosigner = new_cosigner()
    blob = base64.b64decode(cosigner.cosign(TEXT, 1).rpartition(" ")[2])
    blob = (blob + bytes(8))[:size]
    line = f"— {cosigner.name} {base64.b64encode(blob).decode()}"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignatures(add_cosignature(log_note(), line), [verifier_of(cosigner)])


def test_a_timestamp_above_2_63_does_not_verify() -> None:
    cosigner = new_cosigner()
    sig = parse_note(add_cosignature(log_note(), cosigner.cosign(TEXT, 1))).signatures[-1]
    huge = struct.pack(">Q", 1 << 63) + sig.signature[8:]
    assert verifier_of(cosigner).verify(TEXT, huge) is None


def test_a_cosignature_made_over_other_text_is_a_forgery() -> None:
    cosigner = new_cosigner()
    line = cosigner.cosign(TEXT.replace("\n42\n", "\n43\n"), 1)
    with pytest.raises(SignatureError, match="forged, or the checkpoint was altered"):
        open_cosignature(log_note(), line, [verifier_of(cosigner)])


def test_a_cosignature_by_a_witness_not_given_is_refused_naming_it() -> None:
    cosigner, other = new_cosigner(), new_cosigner("witness.example/w2")
    line = cosigner.cosign(TEXT, 1)
    with pytest.raises(SignatureError, match=r"witness\.example/w1\+[0-9a-f]{8}, which is not"):
        open_cosignature(log_note(), line, [verifier_of(other)])


@pytest.mark.parametrize("line", ["", "— w1", "— w1 !!!!", "no dash", "— w1 AAAA\n— w2 AAAA"])
def test_a_malformed_cosignature_line_is_refused(line: str) -> None:
    with pytest.raises(NoteError):
        open_cosignature(log_note(), line, [verifier_of(new_cosigner())])


def test_each_witness_counts_once() -> None:
    cosigner = new_cosigner()
    note = log_note() + cosigner.cosign(TEXT, 1) + "\n" + cosigner.cosign(TEXT, 2) + "\n"
    found, _ = verify_cosignatures(note, [verifier_of(cosigner)] * 2)
    assert [c.timestamp for c in found] == [1]


# --- adding cosignatures to a note -----------------------------------------------------------


def test_add_cosignature_keeps_one_line_per_witness_the_latest() -> None:
    w1, w2 = new_cosigner(), new_cosigner("witness.example/w2")
    note = log_note()
    log_line = note.splitlines()[-1]
    note = add_cosignature(note, w1.cosign(TEXT, 1))
    note = add_cosignature(note, w2.cosign(TEXT, 2))
    note = add_cosignature(note, w1.cosign(TEXT, 3))
    assert note.startswith(TEXT + "\n")
    assert note.splitlines()[-3:] == [log_line, w2.cosign(TEXT, 2), w1.cosign(TEXT, 3)]
    found, _ = verify_cosignatures(note, [verifier_of(w1), verifier_of(w2)])
    assert [c.timestamp for c in found] == [2, 3]


def test_add_cosignature_refuses_a_note_that_would_have_too_many_signatures() -> None:
    note = log_note()
    for i in range(99):
        note = add_cosignature(note, new_cosigner(f"w{i}").cosign(TEXT, 1))
    assert len(parse_note(note).signatures) == 100
    with pytest.raises(NoteError, match="101 signatures; want at most 100"):
        add_cosignature(note, new_cosigner("one-too-many").cosign(TEXT, 1))


# --- key files -------------------------------------------------------------------------------


def test_a_witness_key_file_is_0600_one_line_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "witness.key"
    cosigner = generate_witness_key(path, "witness.example/w1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == cosigner.skey() + "\n"
    assert load_witness_key(path).vkey == cosigner.vkey
    with pytest.raises(KeyFileError, match="already exists"):
        generate_witness_key(path, "witness.example/w1")
    assert load_witness_key(path).vkey == cosigner.vkey  # not overwritten


def test_unsafe_or_broken_witness_key_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "witness.key"
    with pytest.raises(KeyFileError, match="no witness key file"):
        load_witness_key(path)
    path.write_text(new_cosigner().skey() + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="mode 0644"):
        load_witness_key(path)
    for data in (b"\xff\xfe", b"PRIVATE+KEY+w+00000000+AAAA\n"):
        path.write_bytes(data)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError, match="is not a witness key"):
            load_witness_key(path)
    with pytest.raises(NoteError, match="malformed"):
        generate_witness_key(tmp_path / "other.key", "bad name")
    assert not (tmp_path / "other.key").exists()
