"""A bundle's signature: OPA's ``.signatures.json``, written and checked.

The format is the one ``opa sign`` writes and OPA checks when it loads a signed bundle
(openpolicyagent.org/docs/management-bundles#signing): ``{"signatures": [JWT]}``, one compact
JWS whose payload has the claim ``files``, each file's ``name`` (its path in the bundle),
``hash`` (hex) and ``algorithm`` (``SHA-256``). The key's id is the header's ``kid``, and the
payload's ``keyid`` too (deprecated, read by OPA when the header has none).

OPA hashes a file's bytes, except a structured document (a file named ``data.json``,
``data.yaml`` or ``.manifest``): that one is parsed and hashed in a canonical form (object keys
sorted, no whitespace, strings as Go's JSON encoder writes them, numbers as written), so a
re-indented ``data.json`` keeps its signature. ``file_hash`` does the same. ``data.yaml`` is
refused: OPA converts its YAML to JSON first, and that conversion is not reproduced here.

Names are paths relative to the bundle's directory, as ``opa build`` writes them into a bundle
and ``opa sign --bundle .`` run inside the directory does. The signature file is hidden, so it
is not part of the bundle, nor of its digest (``gateway.policy.bundle``): it travels beside the
files (a directory's ``.signatures.json``, the upload's ``signatures``). Other hidden files a
signature lists (OPA's ``.manifest``) are not part of a bundle either, and are not checked.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jwt
import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.policy.bundle import BundleError

__all__ = [
    "SIGNATURES_FILE",
    "SIGNING_ALGORITHMS",
    "PrivateKey",
    "PublicKey",
    "SignatureError",
    "Signer",
    "file_hash",
    "load_private_key",
    "load_public_key",
    "read_public_key",
    "read_signatures",
    "sign_files",
    "verify_files",
]

SIGNATURES_FILE = ".signatures.json"
SIGNING_ALGORITHMS = ("RS256", "ES256")
MAX_SIGNATURES_BYTES = 1024 * 1024

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# What OPA calls each hash, and the ones checked here (OPA also knows MD5 and SHA-1: too weak).
_HASHES: dict[str, Callable[[], Any]] = {
    "SHA-224": hashlib.sha224,
    "SHA-256": hashlib.sha256,
    "SHA-384": hashlib.sha384,
    "SHA-512": hashlib.sha512,
    "SHA-512-224": lambda: hashlib.new("sha512_224"),
    "SHA-512-256": lambda: hashlib.new("sha512_256"),
}
_STRUCTURED = ("data.json", "data.yaml", ".manifest", SIGNATURES_FILE)
# The JWS algorithms a key of each kind verifies; never HMAC, never none.
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class SignatureError(BundleError):
    """A signature that cannot be made or does not vouch for the bundle; ``path`` names the
    file that does not match, when one does not."""


@dataclass(frozen=True)
class Signer:
    """Who vouched for a bundle: the key id its signature names (None when it names none), the
    JWS algorithm, and the SHA-256 of the verifying key (its SubjectPublicKeyInfo, DER)."""

    key_id: str | None
    algorithm: str
    key_sha256: str

    def to_json(self) -> dict[str, Any]:
        """As the ``policy`` ledger entry records it."""
        return {"key_id": self.key_id, "algorithm": self.algorithm, "key_sha256": self.key_sha256}


# -- keys ------------------------------------------------------------------------------------


def load_private_key(pem: bytes, where: str) -> PrivateKey:
    """An RSA or ECDSA private key from PEM (unencrypted PKCS#1, SEC 1 or PKCS#8, as ``opa
    sign --signing-key`` takes); SignatureError saying what is wrong with ``where``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise SignatureError(f"{where}: an encrypted key; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{where}: not a PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SignatureError(f"{where}: an RSA or ECDSA key is needed, not {type(key).__name__}")
    return key


def load_public_key(pem: bytes, where: str) -> PublicKey:
    """An RSA or ECDSA public key from PEM (a public key, or a certificate's), as OPA's
    verification keys are given; SignatureError saying what is wrong with ``where``."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{where}: not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in _EC_ALGORITHMS:
        raise SignatureError(f"{where}: an ECDSA key on P-256, P-384 or P-521 is needed")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SignatureError(f"{where}: an RSA or ECDSA key is needed, not {type(key).__name__}")
    return key


def read_public_key(path: Path) -> PublicKey:
    """The bundle key in the PEM file ``path``; SignatureError if it cannot be read or used."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"bundle key {path}: cannot read: {exc.strerror or exc}") from None
    return load_public_key(pem, f"bundle key {path}")


def _fingerprint(key: PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _algorithms(key: PublicKey) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    return (_EC_ALGORITHMS[key.curve.name],)


# -- hashing, as OPA hashes ------------------------------------------------------------------


@dataclass(frozen=True)
class _Number:
    """A JSON number as written: OPA hashes its text, not a float's."""

    text: str


def _not_a_number(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _encode(value: Any, out: list[bytes]) -> None:
    """``value`` in OPA's canonical form: ``{``, each key (sorted) ``:`` value, ``,`` between,
    ``}``; arrays alike; strings and literals as Go's JSON encoder writes them without HTML
    escaping (so U+2028 and U+2029 escaped, a lone surrogate as U+FFFD)."""
    if isinstance(value, dict):
        out.append(b"{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(b",")
            _encode(key, out)
            out.append(b":")
            _encode(value[key], out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _encode(item, out)
        out.append(b"]")
    elif isinstance(value, _Number):
        out.append(value.text.encode())
    elif isinstance(value, str):
        text = json.dumps(_SURROGATE.sub("\ufffd", value), ensure_ascii=False)
        out.append(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode())
    else:  # True, False, None
        out.append(json.dumps(value).encode())


def file_hash(path: str, content: bytes, algorithm: str = "SHA-256") -> str:
    """The hex hash of a bundle file as OPA computes it for a signature; SignatureError for a
    structured document that is not JSON, and for ``data.yaml``."""
    digest = _HASHES[algorithm]()
    name = PurePosixPath(path).name
    if name not in _STRUCTURED:
        digest.update(content)
        return str(digest.hexdigest())
    if name == "data.yaml":
        raise SignatureError(
            f"{path}: OPA hashes data.yaml after turning its YAML into JSON, which Mandate does "
            "not reproduce; write it as data.json",
            path,
        )
    try:
        value = json.loads(
            content.decode("utf-8-sig"),
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=_not_a_number,
        )
    except ValueError as exc:
        raise SignatureError(f"{path}: not JSON, so OPA cannot hash it: {exc}", path) from None
    out: list[bytes] = []
    _encode(value, out)
    digest.update(b"".join(out))
    return str(digest.hexdigest())


# -- signing and checking --------------------------------------------------------------------


def sign_files(
    files: Mapping[str, bytes],
    key: PrivateKey,
    *,
    algorithm: str,
    key_id: str | None = None,
) -> bytes:
    """The ``.signatures.json`` of ``files`` (relative POSIX path → bytes, hidden files left
    out), signed with ``key``: as ``opa sign`` writes it (one JWT in a list, indented by one
    space). ``algorithm`` is RS256 (an RSA key) or ES256 (a P-256 key)."""
    if algorithm == "RS256" and not isinstance(key, rsa.RSAPrivateKey):
        raise SignatureError("RS256 signs with an RSA key; this one is ECDSA (--alg ES256)")
    if algorithm == "ES256" and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    ):
        raise SignatureError("ES256 signs with an ECDSA key on P-256")
    if algorithm not in SIGNING_ALGORITHMS:
        raise SignatureError(f"--alg {algorithm}: one of {', '.join(SIGNING_ALGORITHMS)}")
    listed = [
        {"name": path, "hash": file_hash(path, content), "algorithm": "SHA-256"}
        for path, content in files.items()
        if not _hidden(path)
    ]
    payload: dict[str, Any] = {"files": listed}
    headers: dict[str, Any] = {"typ": None}
    if key_id:
        payload["keyid"] = key_id
        headers["kid"] = key_id
    token = jwt.PyJWS().encode(orjson.dumps(payload), key, algorithm=algorithm, headers=headers)
    return json.dumps({"signatures": [token]}, indent=1).encode()


def read_signatures(root: Path) -> bytes | None:
    """The ``.signatures.json`` beside a bundle directory's files, or None if there is none."""
    path = root / SIGNATURES_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def verify_files(files: Mapping[str, bytes], signatures: bytes | None, key: PublicKey) -> Signer:
    """Check that ``signatures`` (a ``.signatures.json``) vouches for exactly ``files`` with
    ``key``, as OPA checks a signed bundle; return who signed, or raise SignatureError naming
    the file that does not match (``path``), or saying why the signature is not one."""
    # 1. There is a signature file, and it holds exactly one JWT.
    if signatures is None:
        raise SignatureError(
            f"unsigned: no {SIGNATURES_FILE}; this gateway activates only bundles signed with "
            "its bundle key (mandate policy sign DIR --key KEY)"
        )
    if len(signatures) > MAX_SIGNATURES_BYTES:
        raise SignatureError(f"{SIGNATURES_FILE}: over {MAX_SIGNATURES_BYTES} bytes")
    try:
        tokens = orjson.loads(signatures).get("signatures")
    except (orjson.JSONDecodeError, AttributeError):
        raise SignatureError(
            f'{SIGNATURES_FILE}: not a JSON object {{"signatures": [JWT]}}'
        ) from None
    if not isinstance(tokens, list) or len(tokens) != 1 or not isinstance(tokens[0], str):
        raise SignatureError(f"{SIGNATURES_FILE}: needs exactly one JWT in 'signatures'")
    token = tokens[0]
    # 2. The JWT's signature verifies with the key, by an algorithm of that key's kind.
    allowed = _algorithms(key)
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in allowed:
            raise SignatureError(
                f"{SIGNATURES_FILE}: signed with {header.get('alg')!r}; the bundle key takes "
                f"{', '.join(allowed)}"
            )
        verified = jwt.PyJWS().decode_complete(token, key, algorithms=list(allowed))
    except jwt.InvalidSignatureError:
        raise SignatureError(
            f"{SIGNATURES_FILE}: the signature does not verify with the bundle key (signed "
            "with another key, or altered)"
        ) from None
    except jwt.PyJWTError as exc:
        raise SignatureError(f"{SIGNATURES_FILE}: not a signed JWT: {exc}") from None
    # 3. Its payload lists files, once each; no scope (OPA, with none configured, refuses one).
    try:
        payload = orjson.loads(verified["payload"])
    except orjson.JSONDecodeError:
        raise SignatureError(f"{SIGNATURES_FILE}: the JWT's payload is not JSON") from None
    listed = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(listed, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("name"), str)
        and isinstance(f.get("hash"), str)
        and isinstance(f.get("algorithm"), str)
        for f in listed
    ):
        raise SignatureError(
            f"{SIGNATURES_FILE}: the JWT's 'files' claim must list name, hash and algorithm"
        )
    if payload.get("scope"):
        raise SignatureError(f"{SIGNATURES_FILE}: scoped to {payload['scope']!r}; scope mismatch")
    signed: dict[str, dict[str, str]] = {}
    for entry in listed:
        name = entry["name"].removeprefix("/")
        if name in signed:
            raise SignatureError(f"{SIGNATURES_FILE}: {name} is listed twice", name)
        if not _hidden(name):
            signed[name] = entry
    # 4. Every file of the bundle is listed, with the hash it has now.
    for path in sorted(files):
        entry = signed.pop(path, None)
        if entry is None:
            raise SignatureError(
                f"{path}: not in the bundle's signature (added after signing)", path
            )
        if entry["algorithm"] not in _HASHES:
            raise SignatureError(
                f"{path}: signed with hash {entry['algorithm']!r}, not SHA-2", path
            )
        if file_hash(path, files[path], entry["algorithm"]) != entry["hash"].lower():
            raise SignatureError(
                f"{path}: not the file that was signed (altered after signing)", path
            )
    # 5. Nothing the signature lists is missing.
    if signed:
        first = sorted(signed)[0]
        raise SignatureError(
            f"{first}: signed, but not in the bundle (removed after signing)", first
        )
    kid = header.get("kid") or payload.get("keyid")
    return Signer(kid if isinstance(kid, str) else None, str(header["alg"]), _fingerprint(key))
