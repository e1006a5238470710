"""The key files (signing key, subject key): created private, reloaded the same, refused when
unsafe or broken."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.errors import KeyFileError
from ledger.keys import (
    generate_signing_key,
    load_or_create_signing_key,
    load_or_create_subject_key,
    load_signing_key,
    load_subject_key,
    public_key_line,
)
from ledger.note import NoteVerifier, open_note

NAME = "example.com/log"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


@pytest.fixture(params=[0o000, 0o022, 0o277])
def any_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    # The mode must be exactly 0600 whatever the umask: not wider, and not so narrow that the
    # owner cannot read the key back.
    old = os.umask(request.param)
    yield
    os.umask(old)


def test_created_with_mode_0600_and_reloaded_to_the_same_key(tmp_path, any_umask):
    path = tmp_path / "keys" / "nested" / "signing.pem"
    signer = load_or_create_signing_key(path, NAME)
    assert mode_of(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert load_or_create_signing_key(path, NAME).vkey == signer.vkey
    assert load_signing_key(path, NAME).vkey == signer.vkey
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem"]  # no temp files


def test_created_directory_is_private(tmp_path, any_umask):
    path = tmp_path / "keys" / "signing.pem"
    load_or_create_signing_key(path, NAME)
    assert mode_of(path.parent) & 0o077 == 0  # 0700 less what the umask takes away


def test_loaded_key_signs_notes_its_public_key_line_verifies(tmp_path):
    signer = load_or_create_signing_key(tmp_path / "k.pem", NAME)
    line = public_key_line(signer)
    assert line == signer.vkey
    assert line.startswith(f"{NAME}+{signer.key_id.hex()}+")
    verifier = NoteVerifier.from_vkey(line)
    assert open_note(signer.sign("hello\n"), [verifier])[1] == [verifier]


def test_an_existing_key_file_is_used_not_replaced(tmp_path):
    path = tmp_path / "k.pem"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem, 0o400)  # owner read-only is fine too
    signer = load_or_create_signing_key(path, NAME)
    assert signer.vkey == NoteVerifier(NAME, key.public_key()).vkey
    assert path.read_bytes() == pem


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_key_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "k.pem"
    load_or_create_signing_key(path, NAME)
    os.chmod(path, mode)
    for load in (load_or_create_signing_key, load_signing_key):
        with pytest.raises(KeyFileError, match=f"chmod 600 {path}"):
            load(path, NAME)
    assert mode_of(path) == mode  # refused, not "fixed" behind the operator's back


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        b"\x00" * 100,
    ],
)
def test_garbage_key_file_is_refused(tmp_path, content):
    path = tmp_path / "k.pem"
    write_private(path, content)
    for load in (load_or_create_signing_key, load_signing_key):
        with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
            load(path, NAME)
    assert path.read_bytes() == content  # never overwritten


def test_key_of_another_algorithm_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)
    with pytest.raises(KeyFileError, match="want an Ed25519 private key"):
        load_signing_key(path, NAME)


def test_encrypted_key_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    write_private(path, pem)
    with pytest.raises(KeyFileError, match="unencrypted"):
        load_signing_key(path, NAME)


def test_oversized_key_file_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    write_private(path, b"x" * (1 << 20))
    with pytest.raises(KeyFileError, match="over"):
        load_signing_key(path, NAME)


def test_directory_in_place_of_key_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_signing_key(path, NAME)


def test_missing_key_is_refused_by_load_saying_where_it_looked(tmp_path):
    path = tmp_path / "absent" / "k.pem"
    with pytest.raises(KeyFileError, match=str(path)):
        load_signing_key(path, NAME)
    assert not path.parent.exists()  # load never creates anything


def test_unwritable_location_is_a_key_file_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KeyFileError, match="Not a directory"):
        load_or_create_signing_key(blocker / "k.pem", NAME)
    with pytest.raises(KeyFileError, match="cannot create directory"):
        generate_signing_key(blocker / "k.pem", NAME)


def test_generate_writes_a_new_key_and_never_overwrites(tmp_path, any_umask):
    old_path, new_path = tmp_path / "old.pem", tmp_path / "new.pem"
    old = load_or_create_signing_key(old_path, NAME)
    new = generate_signing_key(new_path, NAME)
    assert new.vkey != old.vkey
    assert mode_of(new_path) == 0o600
    assert load_signing_key(new_path, NAME).vkey == new.vkey
    before = old_path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_signing_key(old_path, NAME)
    assert old_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pem", "old.pem"]


def test_generate_refuses_even_a_dangling_symlink(tmp_path):
    # link(2) does not follow the link, so a planted symlink cannot redirect the key.
    path = tmp_path / "k.pem"
    path.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_signing_key(path, NAME)
    assert not (tmp_path / "elsewhere.pem").exists()


def test_fifo_in_place_of_key_is_refused_without_hanging(tmp_path):
    path = tmp_path / "k.pem"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_signing_key(path, NAME)


# -- the subject key -------------------------------------------------------------------------


def test_a_subject_key_is_created_private_and_reloaded_the_same(tmp_path, any_umask):
    path = tmp_path / "keys" / "subject.key"
    key = load_or_create_subject_key(path)
    assert len(key) == 32
    assert mode_of(path) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert load_or_create_subject_key(path) == key
    assert load_subject_key(path) == key
    assert load_or_create_subject_key(tmp_path / "other.key") != key
    assert sorted(p.name for p in path.parent.iterdir()) == ["subject.key"]


def test_a_missing_subject_key_is_refused_by_load_and_nothing_is_made(tmp_path):
    path = tmp_path / "absent" / "subject.key"
    with pytest.raises(KeyFileError, match=str(path)):
        load_subject_key(path)
    assert not path.parent.exists()


@pytest.mark.parametrize("content", [b"", b"zz" * 32 + b"\n", b"ab" * 16 + b"\n", b"\x00" * 64])
def test_a_broken_subject_key_is_refused_and_never_replaced(tmp_path, content):
    path = tmp_path / "subject.key"
    write_private(path, content)
    for load in (load_or_create_subject_key, load_subject_key):
        with pytest.raises(KeyFileError, match="64 hex digits"):
            load(path)
    assert path.read_bytes() == content


def test_a_subject_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "subject.key"
    load_or_create_subject_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match=f"subject key {path} has mode 0640"):
        load_subject_key(path)
