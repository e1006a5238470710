"""Signed notes: Go's published vectors, round trips, and every way a note can be broken."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.errors import NoteError, SignatureError
from ledger.note import (
    Note,
    NoteSigner,
    NoteVerifier,
    Signature,
    key_id,
    open_note,
    parse_note,
    parse_vkey,
    vkey_from_public_key,
)

# Vectors from golang.org/x/mod/sumdb/note (note.go package doc and note_test.go).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb"
    "6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33"
    "WWd1RvMc+QQ=\n"
)
PETER_NOTE = TEXT + "\n" + PETER_SIG


def peter_signer() -> NoteSigner:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]  # "PRIVATE+KEY+name+id+key"
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def new_signer(name: str = "example.com/log") -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.generate())


def verifier_of(signer: NoteSigner) -> NoteVerifier:
    return NoteVerifier.from_vkey(signer.vkey)


def with_sig_blob(note: str, edit: int, *, bit: int = 0) -> str:
    """Flip ``bit`` of byte ``edit`` of the last signature blob (byte 0-3: key id)."""
    head, _, tail = note.rstrip("\n").rpartition(" ")
    blob = bytearray(base64.b64decode(tail))
    blob[edit] ^= 1 << bit
    return f"{head} {base64.b64encode(bytes(blob)).decode()}\n"


# --- known answers -------------------------------------------------------------------------


def test_go_vkey_parses_and_key_id_is_computed_from_name_and_key():
    v = NoteVerifier.from_vkey(PETER_VKEY)
    assert v.name == "PeterNeumann"
    assert v.key_id == bytes.fromhex("c74f20a3")
    assert v.vkey == PETER_VKEY
    raw = base64.b64decode(PETER_VKEY.split("+", 2)[2])[1:]
    assert key_id("PeterNeumann", raw).hex() == "c74f20a3"
    assert vkey_from_public_key("PeterNeumann", raw) == PETER_VKEY


def test_go_note_opens():
    note, verified = open_note(PETER_NOTE, [NoteVerifier.from_vkey(PETER_VKEY)])
    assert note.text == TEXT
    assert verified == [NoteVerifier.from_vkey(PETER_VKEY)]
    assert note.signatures[0].name == "PeterNeumann"
    assert note.signatures[0].key_id.hex() == "c74f20a3"


def test_signing_with_go_private_key_reproduces_go_note_byte_for_byte():
    signer = peter_signer()
    assert signer.vkey == PETER_VKEY
    assert signer.key_id.hex() == "c74f20a3"
    assert signer.sign(TEXT) == PETER_NOTE


def test_go_doubly_signed_note():
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    peter, enoch = NoteVerifier.from_vkey(PETER_VKEY), NoteVerifier.from_vkey(ENOCH_VKEY)
    parsed, verified = open_note(note, [peter])
    assert verified == [peter]  # Enoch's signature is by an unknown key: ignored
    assert [s.name for s in parsed.signatures] == ["PeterNeumann", "EnochRoot"]
    assert open_note(note, [enoch, peter])[1] == [peter, enoch]  # in signature order
    assert open_note(note, [enoch])[1] == [enoch]


@pytest.mark.parametrize(
    "vkey",
    [
        # From Go's TestNewVerifier: wrong key length and unknown algorithm, each with a key id
        # adjusted to match, so only the length or algorithm check can catch them.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # id off by one
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case hex
        "PeterNeumann+c74f20a3",
        "PeterNeumann",
        "",
        "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T=",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW==",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!",
        "PeterNeumann+c74f20a3+",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+zz4f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_vkeys_are_refused(vkey):
    with pytest.raises(NoteError):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (b"\x01" + b"\x07" * 31, "32 bytes; want 33"),
        (b"\x01" + b"\x07" * 33, "34 bytes; want 33"),
        (b"\x01", "1 bytes; want 33"),
        (b"\x02" + b"\x07" * 32, "algorithm is 0x02"),
    ],
)
def test_vkey_with_matching_id_but_wrong_key_is_refused(key, problem):
    # The key id is right for these bytes, so only the algorithm and length checks catch them.
    kid = hashlib.sha256(b"n\n" + key).digest()[:4].hex()
    with pytest.raises(NoteError, match=problem):
        NoteVerifier.from_vkey(f"n+{kid}+{base64.b64encode(key).decode()}")


def test_every_substring_and_byte_change_of_a_vkey_is_refused():
    # Go's TestNewVerifier: no proper substring and no single-character change may parse.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteError):
                    NoteVerifier.from_vkey(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        mangled = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(mangled)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x\n",
        "a\n\nb\n",
        "ends with blank lines\n\n\n",
        "ünïcødé — ok\n",
        "\n",
        "— looks like a sig\n",
    ],
)
def test_round_trip(text):
    signer = new_signer()
    note = signer.sign(text)
    assert note.startswith(text + "\n— example.com/log ")
    parsed = parse_note(note)
    assert parsed.text == text
    assert parsed == Note(
        text=text,
        signatures=(Signature("example.com/log", signer.key_id, parsed.signatures[0].signature),),
    )
    assert len(parsed.signatures[0].signature) == 64
    assert open_note(note, [verifier_of(signer)]) == (parsed, [verifier_of(signer)])


def test_verifier_built_from_key_matches_vkey():
    key = Ed25519PrivateKey.generate()
    signer = NoteSigner("n", key)
    v = NoteVerifier("n", key.public_key())
    assert v == verifier_of(signer)
    assert hash(v) == hash(verifier_of(signer))
    assert v.vkey == signer.vkey
    assert v.key_id == signer.key_id


def test_verify_returns_false_rather_than_raising():
    signer = new_signer()
    v = verifier_of(signer)
    assert v.verify(b"hi\n", b"") is False
    assert v.verify(b"hi\n", b"\x00" * 64) is False
    assert v.verify(b"hi\n", b"\x00" * 65) is False


def test_repeated_signature_counts_once():
    signer = new_signer()
    note = signer.sign("x\n")
    doubled = note + note.split("\n\n")[1]
    assert open_note(doubled, [verifier_of(signer)])[1] == [verifier_of(signer)]


# --- malformed notes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "note",
    [
        TEXT,  # no signatures and no blank line
        TEXT + "\n",  # blank line, no signatures
        TEXT + "\n" + PETER_SIG[:-1],  # last signature line unterminated
        "\x01" + PETER_NOTE,  # control character
        TEXT.replace("\n", "\r\n", 1) + "\n" + PETER_SIG,  # carriage return
        "tab\there\n\n" + PETER_SIG,
        "del\x7f is allowed but \x1b is not\n\n" + PETER_SIG,
        TEXT
        + "\n"
        + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX=\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("—", "-"),  # hyphen, not em dash
        TEXT + "\n" + PETER_SIG.replace("— ", "—"),  # no space after the dash
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"),
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter\u00a0Neumann"),  # NBSP
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter\u2003Neumann"),  # EM SPACE
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", " "),  # empty name
        TEXT + "\n" + "— PeterNeumann\n",  # no signature
        TEXT + "\n" + "— PeterNeumann \n",  # empty signature
        TEXT + "\n" + PETER_SIG.replace("FupLL", "Fup!!"),  # not base64
        TEXT + "\n" + PETER_SIG.replace("AM=", "AM"),  # missing padding
        TEXT + "\n" + PETER_SIG.replace("AM=", "AN="),  # non-canonical trailing bits
        TEXT + "\n" + PETER_SIG.replace("x08g", "x0 8g"),
        TEXT + "\n" + "— PeterNeumann x08gog==\n",  # 4 bytes: key id, no signature
        TEXT + "\n" + "— PeterNeumann x08g\n",  # 3 bytes: not even a key id
        TEXT + "\n" + PETER_SIG * 101,  # too many signatures
        "\ud800 lone surrogate\n\n" + PETER_SIG,  # not valid UTF-8
        "x" * (1 << 20) + "\n\n" + PETER_SIG,  # over 1 MiB
        "é" * (1 << 19) + "\n\n" + PETER_SIG,  # over 1 MiB in UTF-8, not in characters
    ],
)
def test_malformed_notes_are_refused(note):
    with pytest.raises(NoteError):
        parse_note(note)
    with pytest.raises(NoteError):
        open_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])


def test_sixteen_signatures_are_accepted():
    # The spec: verifiers MUST accept at least 16 signatures.
    signers = [new_signer(f"s{i}") for i in range(16)]
    note = signers[0].sign("x\n")
    note += "".join(s.sign("x\n").split("\n\n")[1] for s in signers[1:])
    assert open_note(note, [verifier_of(s) for s in signers])[1] == [
        verifier_of(s) for s in signers
    ]


@pytest.mark.parametrize("text", ["", "no newline", "cr\r\n", "tab\t\n", "nul\x00\n", "\ud800\n"])
def test_sign_refuses_bad_text(text):
    with pytest.raises(NoteError):
        new_signer().sign(text)


def test_sign_refuses_text_that_would_make_an_oversized_note():
    with pytest.raises(NoteError):
        new_signer().sign("x" * (1 << 20) + "\n")


@pytest.mark.parametrize(
    "name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2028b", "a\x01b", "\ud800"]
)
def test_invalid_key_names_are_refused(name):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError):
        NoteSigner(name, key)
    with pytest.raises(NoteError):
        NoteVerifier(name, key.public_key())


@pytest.mark.parametrize("size", [0, 31, 33])
def test_public_key_of_wrong_size_is_refused(size):
    with pytest.raises(NoteError):
        key_id("n", b"\x01" * size)
    with pytest.raises(NoteError):
        vkey_from_public_key("n", b"\x01" * size)


# --- what each refusal says ----------------------------------------------------------------


def _stranger() -> NoteVerifier:
    return NoteVerifier("stranger", Ed25519PrivateKey.generate().public_key())


def _impostor() -> NoteVerifier:
    impostor = NoteVerifier("PeterNeumann", Ed25519PrivateKey.generate().public_key())
    impostor.key_id = bytes.fromhex("c74f20a3")  # a colliding key id, as in the test below
    return impostor


def _alg(kind: int, size: int = 33) -> str:
    return "a+c74f20a3+" + base64.b64encode(bytes([kind]) * size).decode()


REFUSALS = [
    (
        lambda: key_id("", b"\x01" * 32),
        "key name is empty; want a non-empty name such as example.com/log",
    ),
    (
        lambda: key_id("a b", b"\x01" * 32),
        "key name 'a b' is malformed; want no '+', whitespace or control characters",
    ),
    (
        lambda: key_id("\ud800", b"\x01" * 32),
        "key name is not valid UTF-8: surrogates not allowed at 0",
    ),
    (lambda: key_id("n", b"\x01" * 31), "Ed25519 public key is 31 bytes; want 32"),
    (
        lambda: new_signer().sign("x"),
        "note text does not end in a newline; want text ending in '\\n'",
    ),
    (
        lambda: new_signer().sign("a\tb\n"),
        "note text contains control character '\\t' at 1; want none other than '\\n'",
    ),
    (
        lambda: new_signer().sign("\ud800\n"),
        "note text is not valid UTF-8: surrogates not allowed at 0",
    ),
    (
        lambda: NoteVerifier.from_vkey("a+b"),
        "verifier key has 2 '+'-separated parts; want 3 (name+keyid+key)",
    ),
    (
        lambda: NoteVerifier.from_vkey("a+C74F20A3+AAAA"),
        "verifier key id 'C74F20A3' is not 8 lowercase hex digits",
    ),
    (
        lambda: NoteVerifier.from_vkey("a+c74f20a3+AA!A"),
        "verifier key is not valid base64: Only base64 data is allowed",
    ),
    (
        lambda: NoteVerifier.from_vkey("a+c74f20a3+AB=="),
        "verifier key is not canonical padded base64",
    ),
    (lambda: NoteVerifier.from_vkey("a+c74f20a3+"), "verifier key algorithm is nothing; want 0x01"),
    (lambda: NoteVerifier.from_vkey(_alg(2)), "verifier key algorithm is 0x02; want 0x01"),
    (lambda: NoteVerifier.from_vkey(_alg(1, 32)), "verifier key is 32 bytes; want 33"),
    (lambda: parse_vkey(_alg(1), 4), "verifier key algorithm is 0x01; want 0x04"),
    (
        lambda: NoteVerifier.from_vkey(PETER_VKEY.replace("c74f20a3", "c74f20a4")),
        "verifier key id is c74f20a4; want c74f20a3 (computed from the name and key)",
    ),
    (
        lambda: parse_note("a\x01\n\n" + PETER_SIG),
        "note contains control character '\\x01' at 1; want none other than '\\n'",
    ),
    (lambda: parse_note(TEXT), "note has no blank line before its signatures"),
    (lambda: parse_note(TEXT + "\n"), "note has no signatures after its blank line"),
    (
        lambda: parse_note(TEXT + "\n" + PETER_SIG[:-1]),
        "note's last signature line does not end in a newline",
    ),
    (
        lambda: parse_note(TEXT + "\n- " + "x" * 60 + "\n"),
        "signature line '- " + "x" * 38 + "' does not start with '— '",
    ),
    (
        lambda: parse_note(TEXT + "\n— " + "x" * 60 + "\n"),
        "signature line '— " + "x" * 38 + "' has no signature; want '— <name> <b64>'",
    ),
    (
        lambda: parse_note(TEXT + "\n— PeterNeumann \n"),
        "signature line '— PeterNeumann ' has no signature; want '— <name> <b64>'",
    ),
    (
        lambda: parse_note(TEXT + "\n— PeterNeumann AA!A\n"),
        "signature by PeterNeumann is not valid base64: Only base64 data is allowed",
    ),
    (
        lambda: parse_note(TEXT + "\n— PeterNeumann x08g og==\n"),
        "signature by PeterNeumann is not valid base64: Only base64 data is allowed",
    ),
    (
        # Exactly 1 MiB, all ASCII: within the limit, refused for what it lacks.
        lambda: parse_note("x" * ((1 << 20) - 1) + "\n"),
        "note has no blank line before its signatures",
    ),
    (
        lambda: parse_note(TEXT + "\n— PeterNeumann x08gog==\n"),
        "signature by PeterNeumann is 4 bytes; want a 4-byte key id and a signature",
    ),
    (
        lambda: open_note(with_sig_blob(PETER_NOTE, 30), [NoteVerifier.from_vkey(PETER_VKEY)]),
        "invalid signature for key PeterNeumann+c74f20a3: the note was altered or the signature "
        "forged",
    ),
    (
        lambda: open_note(PETER_NOTE, []),
        "note is not signed by any trusted key; signed by unknown key(s): PeterNeumann+c74f20a3 "
        "(trusted: none)",
    ),
    (
        lambda: open_note(
            TEXT + "\n" + PETER_SIG + ENOCH_SIG + PETER_SIG, [_stranger(), _stranger()]
        ),
        "note is not signed by any trusted key; signed by unknown key(s): PeterNeumann+c74f20a3, "
        "EnochRoot+af0cfe78 (trusted: stranger+",
    ),
    (
        lambda: open_note(PETER_NOTE, [NoteVerifier.from_vkey(PETER_VKEY), _impostor()]),
        f"ambiguous verifier keys: {PETER_VKEY} and ",
    ),
]


# --- tampering and trust -------------------------------------------------------------------


@pytest.mark.parametrize("byte", [4, 20, 67])
@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_signature_bit_is_a_forgery(byte, bit):
    with pytest.raises(SignatureError, match=r"PeterNeumann\+c74f20a3"):
        open_note(with_sig_blob(PETER_NOTE, byte, bit=bit), [NoteVerifier.from_vkey(PETER_VKEY)])


@pytest.mark.parametrize("position", range(len(TEXT.encode())))
def test_flipped_text_bit_does_not_verify(position):
    raw = bytearray(PETER_NOTE.encode())
    raw[position] ^= 0x02
    try:
        tampered = raw.decode()
    except UnicodeDecodeError:
        return  # cannot be a str note at all
    with pytest.raises((SignatureError, NoteError)):
        open_note(tampered, [NoteVerifier.from_vkey(PETER_VKEY)])


@pytest.mark.parametrize("byte", range(4))
def test_flipped_key_id_bit_makes_the_key_unknown(byte):
    tampered = with_sig_blob(PETER_NOTE, byte)
    kid = base64.b64decode(tampered.rsplit(" ", 1)[1])[:4].hex()
    with pytest.raises(SignatureError, match=rf"unknown key\(s\): PeterNeumann\+{kid}"):
        open_note(tampered, [NoteVerifier.from_vkey(PETER_VKEY)])


def test_note_signed_by_unknown_key_is_refused_naming_the_key():
    stranger = new_signer("stranger.example/log")
    note = stranger.sign("hello\n")
    with pytest.raises(SignatureError) as err:
        open_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])
    assert f"stranger.example/log+{stranger.key_id.hex()}" in str(err.value)
    assert "unknown key" in err.value.diagnostics()


def test_no_trusted_keys_at_all_is_refused():
    with pytest.raises(SignatureError, match="PeterNeumann"):
        open_note(PETER_NOTE, [])


def test_same_name_other_key_is_unknown_not_forged():
    # The spec: signatures sharing a name (but not an id) with a known key are ignored.
    impostor = new_signer("PeterNeumann")
    note = impostor.sign(TEXT)
    with pytest.raises(SignatureError, match="unknown key"):
        open_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])
    both = note + PETER_SIG
    assert open_note(both, [NoteVerifier.from_vkey(PETER_VKEY)])[1] == [
        NoteVerifier.from_vkey(PETER_VKEY)
    ]


def test_one_forged_signature_rejects_the_whole_note():
    signer = new_signer()
    good = signer.sign(TEXT).split("\n\n")[1]
    forged = with_sig_blob(PETER_NOTE, 30).split("\n\n")[1]
    verifiers = [verifier_of(signer), NoteVerifier.from_vkey(PETER_VKEY)]
    with pytest.raises(SignatureError, match="invalid signature for key PeterNeumann"):
        open_note(TEXT + "\n" + good + forged, verifiers)
    # A bad repeat of an already verified signature is still a forgery.
    with pytest.raises(SignatureError):
        open_note(PETER_NOTE + forged, verifiers)


def test_signature_over_other_text_is_refused():
    signer = new_signer()
    sig_line = signer.sign("one\n").split("\n\n")[1]
    with pytest.raises(SignatureError):
        open_note("two\n\n" + sig_line, [verifier_of(signer)])


def test_ambiguous_verifiers_are_refused():
    # Two different keys whose name and key id collide cannot be told apart by a signature.
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    impostor = NoteVerifier("PeterNeumann", Ed25519PrivateKey.generate().public_key())
    impostor.key_id = peter.key_id  # collide the id, as an attacker can by trying keys
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(PETER_NOTE, [peter, impostor])
    # The same key listed twice is harmless.
    assert open_note(PETER_NOTE, [peter, NoteVerifier.from_vkey(PETER_VKEY)])[1] == [peter]


@pytest.mark.parametrize(("refused", "message"), REFUSALS)
def test_each_refusal_says_what_was_got_and_wanted(refused: Any, message: str) -> None:
    """The messages are what a person acts on: each names the part that is wrong, exactly."""
    with pytest.raises((NoteError, SignatureError)) as failed:
        refused()
    assert str(failed.value).startswith(message)
    if message.endswith("stranger+"):  # two trusted keys, each with a fresh key id
        assert re.fullmatch(
            r"stranger\+[0-9a-f]{8}, stranger\+[0-9a-f]{8}\)", str(failed.value)[len(message) - 9 :]
        )
    elif not message.endswith(" and "):
        assert str(failed.value) == message


# --- limits, at the limit ------------------------------------------------------------------

LIMIT = 1 << 20  # bytes in a note, as Go's note.Open


def _filled(size: int, *, char: str = "x") -> str:
    """A well-formed (unverified) note of exactly ``size`` bytes in UTF-8."""
    rest = size - len(f"\n\n{PETER_SIG}".encode())
    width = len(char.encode())
    return char * (rest // width) + "y" * (rest % width) + "\n\n" + PETER_SIG[:-1] + "\n"


@pytest.mark.parametrize("char", ["x", "é", "€"])
def test_a_note_of_exactly_1_mib_is_accepted_and_one_byte_more_refused(char: str) -> None:
    # "é" and "€" make the UTF-8 length the one that reaches the limit, not the length in
    # characters.
    note = _filled(LIMIT, char=char)
    assert len(note.encode()) == LIMIT
    assert parse_note(note).signatures[0].name == "PeterNeumann"
    over = _filled(LIMIT + 1, char=char)
    assert len(over.encode()) == LIMIT + 1
    with pytest.raises(NoteError, match=r"^note is over 1048576 bytes$"):
        parse_note(over)


def test_signing_stops_at_exactly_1_mib() -> None:
    signer = new_signer()
    overhead = len(signer.sign("x\n").encode()) - len(b"x\n")
    text = "x" * (LIMIT - overhead - 1) + "\n"
    assert len(signer.sign(text).encode()) == LIMIT
    assert open_note(signer.sign(text), [verifier_of(signer)])[0].text == text
    with pytest.raises(NoteError, match=r"^signed note would exceed 1048576 bytes$"):
        signer.sign("x" + text)


def test_a_hundred_signatures_are_accepted_and_a_hundred_and_one_refused() -> None:
    signers = [new_signer(f"s{i}") for i in range(101)]
    lines = [s.sign("x\n").split("\n\n")[1] for s in signers]
    note = "x\n\n" + "".join(lines[:100])
    parsed, verified = open_note(note, [verifier_of(s) for s in signers])
    assert len(parsed.signatures) == 100
    assert verified == [verifier_of(s) for s in signers[:100]]
    with pytest.raises(NoteError, match=r"^note has 101 signatures; want at most 100$"):
        parse_note(note + lines[100])


def test_other_signature_types_get_their_own_key_ids_and_vkeys() -> None:
    # Witness cosignature keys (type 0x04) use the same encoding with another type byte.
    raw = base64.b64decode(PETER_VKEY.split("+", 2)[2])[1:]
    kid = key_id("PeterNeumann", raw, 4)
    assert kid == hashlib.sha256(b"PeterNeumann\n\x04" + raw).digest()[:4]
    assert kid != key_id("PeterNeumann", raw)
    vkey = vkey_from_public_key("PeterNeumann", raw, 4)
    encoded = base64.b64encode(b"\x04" + raw).decode()
    assert vkey == f"PeterNeumann+{kid.hex()}+{encoded}"
    assert parse_vkey(vkey, 4) == ("PeterNeumann", raw)
    assert parse_vkey(PETER_VKEY) == ("PeterNeumann", raw)
    with pytest.raises(NoteError, match="algorithm is 0x04; want 0x01"):
        parse_vkey(vkey)
