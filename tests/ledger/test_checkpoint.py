"""Checkpoints: a real sum.golang.org checkpoint, round trips, and malformed bodies."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_body, sign_checkpoint
from ledger.errors import NoteError, SignatureError
from ledger.note import NoteSigner, NoteVerifier, parse_note

# A checkpoint signed by sum.golang.org (Go's checksum database) and its published verifier key.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_BODY = "go.sum database tree\n49189689\nftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4=\n"
SUMDB_NOTE = (
    SUMDB_BODY
    + "\n— sum.golang.org Az3grlKZssqRoMNPpZfKt0TphbbcF+pzXqElURJKRNFKfaUAgqeI5k2AORH0QAhg"
    + "/ebRwyIqD/OqP4oLtLnNumvOBAM=\n"
)
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()


def new_signer(name: str = "example.com/log") -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.generate())


def test_sumdb_checkpoint_opens():
    sumdb = NoteVerifier.from_vkey(SUMDB_VKEY)
    cp, verifier = open_checkpoint(SUMDB_NOTE, [sumdb], origin="go.sum database tree")
    assert cp == Checkpoint(
        origin="go.sum database tree",
        size=49189689,
        root=base64.b64decode("ftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4="),
    )
    assert verifier == sumdb
    assert cp.body() == SUMDB_BODY


def test_sumdb_checkpoint_with_wrong_origin_is_refused():
    with pytest.raises(NoteError, match=r"origin is 'go.sum database tree'; want 'other'"):
        open_checkpoint(SUMDB_NOTE, [NoteVerifier.from_vkey(SUMDB_VKEY)], origin="other")


def test_sumdb_checkpoint_with_changed_size_is_refused():
    tampered = SUMDB_NOTE.replace("49189689", "49189690")
    with pytest.raises(SignatureError, match=r"sum\.golang\.org\+033de0ae"):
        open_checkpoint(tampered, [NoteVerifier.from_vkey(SUMDB_VKEY)])


def test_body_format():
    cp = Checkpoint(origin="example.com/log", size=0, root=ROOT)
    assert cp.body() == f"example.com/log\n0\n{ROOT_B64}\n"
    assert parse_checkpoint_body(cp.body()) == cp


@pytest.mark.parametrize("size", [0, 1, 10, 2**63, 2**64 - 1])
def test_round_trip(size):
    signer = new_signer()
    cp = Checkpoint(origin="example.com/log", size=size, root=ROOT)
    note = sign_checkpoint(cp, signer)
    assert parse_note(note).text == cp.body()
    verifier = NoteVerifier.from_vkey(signer.vkey)
    assert open_checkpoint(note, [verifier], origin="example.com/log") == (cp, verifier)
    assert open_checkpoint(note, [verifier]) == (cp, verifier)


def test_first_verifier_that_signed_is_returned():
    first, second = new_signer("a"), new_signer("b")
    cp = Checkpoint(origin="o", size=3, root=ROOT)
    note = sign_checkpoint(cp, first) + sign_checkpoint(cp, second).split("\n\n")[1]
    vs = [NoteVerifier.from_vkey(second.vkey), NoteVerifier.from_vkey(first.vkey)]
    assert open_checkpoint(note, vs)[1] == NoteVerifier.from_vkey(first.vkey)
    assert open_checkpoint(note, vs[:1])[1] == NoteVerifier.from_vkey(second.vkey)


def test_extension_lines_are_parsed_but_never_signed():
    body = f"o\n5\n{ROOT_B64}\next one\next two\n"
    cp = parse_checkpoint_body(body)
    assert cp.extensions == ("ext one", "ext two")
    assert cp.body() == body
    with pytest.raises(NoteError, match="extension"):
        sign_checkpoint(cp, new_signer())


def test_signed_checkpoint_with_extension_lines_opens():
    signer = new_signer()
    body = f"o\n5\n{ROOT_B64}\next\n"
    cp, _ = open_checkpoint(signer.sign(body), [NoteVerifier.from_vkey(signer.vkey)])
    assert cp.extensions == ("ext",)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (f"\n5\n{ROOT_B64}\n", "origin is empty"),
        (f"o\n05\n{ROOT_B64}\n", "'05'"),
        (f"o\n00\n{ROOT_B64}\n", "'00'"),
        (f"o\n-1\n{ROOT_B64}\n", "'-1'"),
        (f"o\n+1\n{ROOT_B64}\n", r"'\+1'"),
        (f"o\n 1\n{ROOT_B64}\n", "' 1'"),
        (f"o\n1_000\n{ROOT_B64}\n", "'1_000'"),
        (f"o\n\u0661\n{ROOT_B64}\n", "size"),  # ARABIC-INDIC DIGIT ONE: int() would take it
        (f"o\n0x1\n{ROOT_B64}\n", "'0x1'"),
        (f"o\n\n{ROOT_B64}\n", "size is ''"),
        (f"o\n{2**64}\n{ROOT_B64}\n", "want 0 to"),
        (f"o\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes; want 32"),
        (f"o\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes; want 32"),
        ("o\n5\n\n", "0 bytes; want 32"),
        ("o\n5\nnot base64!\n", "not valid base64"),
        (f"o\n5\n{ROOT_B64[:-1]}\n", "not valid base64"),  # padding missing
        (f"o\n5\n{ROOT_B64[:-2]}9=\n", "not canonical"),  # "8=" with a non-zero unused bit
        (f"o\n5\n{ROOT_B64}", "newline"),
        ("o\n5\n", "2 lines; want at least 3"),
        ("", "newline"),
        (f"o\n5\n{ROOT_B64}\n\n", "extension line is empty"),
        (f"o\n5\n{ROOT_B64}\next\n\n", "extension line is empty"),
        (f"o\t\n5\n{ROOT_B64}\n", "control character"),
    ],
)
def test_malformed_bodies_are_refused(body, problem):
    with pytest.raises(NoteError, match=problem):
        parse_checkpoint_body(body)


def test_malformed_body_in_a_validly_signed_note_is_refused():
    signer = new_signer()
    note = signer.sign(f"o\n05\n{ROOT_B64}\n")
    with pytest.raises(NoteError, match="leading zeros"):
        open_checkpoint(note, [NoteVerifier.from_vkey(signer.vkey)])


@pytest.mark.parametrize(
    "fields",
    [
        {"origin": "", "size": 1, "root": ROOT},
        {"origin": "a\nb", "size": 1, "root": ROOT},
        {"origin": "o", "size": -1, "root": ROOT},
        {"origin": "o", "size": 2**64, "root": ROOT},
        {"origin": "o", "size": True, "root": ROOT},
        {"origin": "o", "size": 1, "root": ROOT[:31]},
        {"origin": "o", "size": 1, "root": ROOT, "extensions": ("",)},
        {"origin": "o", "size": 1, "root": ROOT, "extensions": ("a\nb",)},
    ],
)
def test_invalid_checkpoints_cannot_be_built(fields):
    with pytest.raises(NoteError):
        Checkpoint(**fields)


def test_tampered_checkpoint_notes_are_refused():
    signer = new_signer()
    verifier = NoteVerifier.from_vkey(signer.vkey)
    note = sign_checkpoint(Checkpoint(origin="example.com/log", size=7, root=ROOT), signer)
    text, sig_line = note.split("\n\n")
    name, b64 = sig_line.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(b64))
    for position in (0, 3, 4, 40, 67):  # key id bytes, then signature bytes
        flipped = bytearray(blob)
        flipped[position] ^= 0x01
        tampered = f"{text}\n\n{name} {base64.b64encode(bytes(flipped)).decode()}\n"
        with pytest.raises(SignatureError):
            open_checkpoint(tampered, [verifier])
    with pytest.raises(SignatureError):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), [verifier])
    other_root = base64.b64encode(bytes(32)).decode()
    with pytest.raises(SignatureError):
        open_checkpoint(note.replace(ROOT_B64, other_root), [verifier])


def test_checkpoint_signed_by_unknown_key_is_refused_naming_it():
    stranger = new_signer("stranger.example/log")
    note = sign_checkpoint(Checkpoint(origin="example.com/log", size=1, root=ROOT), stranger)
    with pytest.raises(SignatureError, match=rf"stranger\.example/log\+{stranger.key_id.hex()}"):
        open_checkpoint(note, [NoteVerifier.from_vkey(SUMDB_VKEY)])


def test_wrong_origin_is_refused():
    signer = new_signer()
    note = sign_checkpoint(Checkpoint(origin="example.com/log", size=1, root=ROOT), signer)
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(note, [NoteVerifier.from_vkey(signer.vkey)], origin="example.com/other")
