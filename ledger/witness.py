"""``python -m ledger witness``: cosign a Mandate ledger's checkpoints, never two histories.

A witness holds its own key and the last checkpoint it cosigned (the state file). Each round:

1. Fetch the latest checkpoint (``GET {url}/v1/ledger/checkpoint``) and verify the log's
   signature with the log's verifier keys.
2. Compare it with the checkpoint in the state file:

   - no state yet: trust it (trust on first use, said on stdout);
   - smaller: the log was rolled back; refuse;
   - same size: the root must be the same, else the log signed two trees of one size; refuse;
   - larger: fetch a consistency proof (``GET {url}/v1/ledger/proofs/consistency?from=OLD&to=NEW``)
     and check it against the two roots the witness knows; refuse unless it holds.

3. Record the checkpoint and the cosignature in the state file (written atomically) *before*
   sending the cosignature: a gateway that takes it and answers with an error must not get a
   second cosignature for another tree of that size.
4. ``POST {url}/v1/ledger/cosignatures`` with ``{"checkpoint_size": N, "cosignature": LINE}``,
   then mark the state posted. An unposted cosignature is sent again, unchanged, next round.

A refusal leaves the state as it was, so the witness keeps refusing until the log shows a
checkpoint that extends the one it cosigned. Exit codes (``--once``): 0 cosigned or nothing new;
1 refused (one line on stderr says why); 2 unusable input (files, URL, token, a 4xx answer);
3 the gateway could not be reached or failed (5xx, a reply that is not what the API promises).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, TextIO

from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_body
from ledger.cosignature import Cosigner
from ledger.errors import LedgerError, NoteError, ProofError
from ledger.keys import load_witness_key
from ledger.merkle import EMPTY_ROOT, verify_consistency
from ledger.note import NoteVerifier, parse_note
from ledger.verify import load_verifier_keys

__all__ = ["run_witness"]

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE, EXIT_UNREACHABLE = 0, 1, 2, 3

# A checkpoint note is at most 1 MiB; a consistency proof a few kilobytes.
_MAX_RESPONSE_BYTES = 2 << 20
_TIMEOUT_SECONDS = 30.0


class _Refused(LedgerError):
    """The log showed a checkpoint this witness will not cosign."""


class _Unusable(LedgerError):
    """The witness was set up wrong: a file, the URL, the token."""


class _Unreachable(LedgerError):
    """The gateway could not be reached, failed, or answered outside its API."""


@dataclass(frozen=True)
class _State:
    """The last checkpoint this witness cosigned, its cosignature, and whether it was sent."""

    note: str
    checkpoint: Checkpoint
    cosignature: str
    posted: bool


def _read_state(path: Path) -> _State | None:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unusable(f"cannot read state file {path}: {exc}") from None
    try:
        obj = json.loads(raw)
        note, line, posted = obj["checkpoint"], obj["cosignature"], obj["posted"]
        if not (isinstance(note, str) and isinstance(line, str) and isinstance(posted, bool)):
            raise TypeError("checkpoint and cosignature must be strings, posted a boolean")
        checkpoint = parse_checkpoint_body(parse_note(note).text)
    except (ValueError, KeyError, TypeError, NoteError) as exc:
        raise _Unusable(f"state file {path} is not a witness's state: {exc}") from None
    return _State(note, checkpoint, line, posted)


def _write_state(path: Path, state: _State) -> None:
    """Replace the state file atomically: a crash leaves the old state or the new, whole."""
    data = json.dumps(
        {"checkpoint": state.note, "cosignature": state.cosignature, "posted": state.posted},
        indent=1,
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(data + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def _only_witness(state: Path) -> Iterator[None]:
    """Hold ``<state>.lock`` exclusively: two witnesses sharing a state could each cosign a
    different tree of the same size, each having checked only against the state it read."""
    lock = state.with_name(f"{state.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _Unusable(f"cannot open {lock}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Unusable(f"another witness is running on {state} (it holds {lock})") from None
        yield
    finally:
        os.close(fd)


class _Gateway:
    """The few calls a witness makes, over HTTP(S) with the standard library."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _Unusable(f"--url {url!r}: want http(s)://host[:port], the gateway's address")
        self._base = url.rstrip("/")
        self._token = token

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self._base}{path}"
        headers = {"Accept": "application/json", "User-Agent": "mandate-ledger-witness"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # S310: the scheme is http or https, checked in __init__.
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310
                raw = response.read(_MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = _problem(exc)
            where = f"{method} {url}: HTTP {exc.code}{detail}"
            if exc.code in (401, 403):
                hint = " (is MANDATE_TOKEN a token with the witness role?)"
                raise _Unusable(where + hint) from None
            if 400 <= exc.code < 500:
                raise _Unusable(where) from None
            raise _Unreachable(where) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Unreachable(f"cannot reach the gateway at {url}: {reason}") from None
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise _Unreachable(f"{method} {url}: the answer is over {_MAX_RESPONSE_BYTES} bytes")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Unreachable(f"{method} {url}: the answer is not JSON") from None

    def checkpoint_note(self) -> str:
        answer = self._call("GET", "/v1/ledger/checkpoint")
        note = answer.get("note") if isinstance(answer, dict) else None
        if not isinstance(note, str):
            raise _Unreachable("GET /v1/ledger/checkpoint: the answer has no note")
        return note

    def consistency_proof(self, size1: int, size2: int) -> list[Any]:
        query = urllib.parse.urlencode({"from": size1, "to": size2})
        answer = self._call("GET", f"/v1/ledger/proofs/consistency?{query}")
        proof = answer.get("proof") if isinstance(answer, dict) else None
        if not isinstance(proof, list):
            raise _Unreachable("GET /v1/ledger/proofs/consistency: the answer has no proof list")
        return proof

    def post_cosignature(self, size: int, line: str) -> None:
        self._call(
            "POST", "/v1/ledger/cosignatures", {"checkpoint_size": size, "cosignature": line}
        )


def _problem(exc: urllib.error.HTTPError) -> str:
    """The detail of an RFC 9457 problem answer, if the body is one."""
    try:
        body = json.loads(exc.read(64 << 10))
    except (ValueError, OSError):
        return ""
    detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
    return f": {detail}" if isinstance(detail, str) and detail else ""


def _check_extends(gateway: _Gateway, old: Checkpoint, new: Checkpoint) -> None:
    """Refuse unless the tree ``new`` extends the tree ``old`` (same origin)."""
    if new.origin != old.origin:
        raise _Refused(
            f"the checkpoint's origin is {new.origin!r}; this witness cosigns {old.origin!r}"
        )
    if new.size < old.size:
        raise _Refused(
            f"rolled back: the log's checkpoint has size {new.size}, smaller than the size "
            f"{old.size} this witness cosigned"
        )
    if new.size == old.size:
        if new.root != old.root:
            raise _Refused(
                f"fork: the log signed two different trees of size {new.size} (roots "
                f"{old.root.hex()} cosigned earlier, {new.root.hex()} now)"
            )
        return
    proof: list[bytes] = []
    if old.size:  # the empty tree is a prefix of every tree; there is no proof from it
        try:
            proof = [bytes.fromhex(h) for h in gateway.consistency_proof(old.size, new.size)]
        except (TypeError, ValueError):
            raise _Refused(
                f"the consistency proof from size {old.size} to {new.size} is not a list of "
                "hex hashes"
            ) from None
    try:
        consistent = verify_consistency(old.size, new.size, proof, old.root, new.root)
    except ProofError as exc:
        raise _Refused(f"malformed consistency proof from size {old.size}: {exc}") from None
    if not consistent:
        raise _Refused(
            f"inconsistent: the checkpoint of size {new.size} does not extend the one of size "
            f"{old.size} this witness cosigned (a fork, or history rewritten)"
        )


def _round(
    gateway: _Gateway,
    log_keys: list[NoteVerifier],
    cosigner: Cosigner,
    state_path: Path,
    out: TextIO,
) -> None:
    """One round (see the module's docstring); raises _Refused, _Unusable or _Unreachable."""
    state = _read_state(state_path)
    note = gateway.checkpoint_note()
    try:
        checkpoint, _ = open_checkpoint(note, log_keys)
    except LedgerError as exc:
        raise _Refused(f"the checkpoint is not signed by the log's key: {exc}") from None
    if state is None:
        old = Checkpoint(checkpoint.origin, 0, EMPTY_ROOT)
        news = f"first checkpoint seen, trusted as the start (size {checkpoint.size})"
    else:
        old = state.checkpoint
        news = f"extends size {old.size}"
    _check_extends(gateway, old, checkpoint)
    if state is not None and checkpoint.size == old.size:
        if state.posted:
            print(f"size {checkpoint.size} is cosigned already; nothing new", file=out)
            return
        line = state.cosignature  # the same tree: send the same cosignature again
        news = "sent again"
    else:
        line = cosigner.cosign(parse_note(note).text, int(time.time()))
        state = _State(note, checkpoint, line, posted=False)
        _write_state(state_path, state)
    gateway.post_cosignature(checkpoint.size, line)
    _write_state(state_path, _State(state.note, state.checkpoint, line, posted=True))
    print(f"cosigned size {checkpoint.size}, root {checkpoint.root.hex()}: {news}", file=out)


def run_witness(
    url: str,
    log_key: Path,
    key: Path,
    state: Path,
    *,
    once: bool,
    interval: float,
    token: str | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run the witness: one round with ``once``, else a round every ``interval`` seconds until
    interrupted. Each refusal or failure is one line on ``err``; returns the exit code."""
    try:
        gateway = _Gateway(url, token)
        log_keys = load_verifier_keys(log_key)
        cosigner = load_witness_key(key)
        if not state.parent.is_dir():
            raise _Unusable(f"--state {state}: no directory {state.parent}")
        with _only_witness(state):
            _read_state(state)  # a corrupt state file is unusable input, not a refusal
            while True:
                code = _one_round(gateway, log_keys, cosigner, state, out, err)
                if once:
                    return code
                time.sleep(interval)
    except LedgerError as exc:
        print(f"error: {exc.diagnostics()}", file=err)
        return EXIT_UNUSABLE
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        return 130


def _one_round(
    gateway: _Gateway,
    log_keys: list[NoteVerifier],
    cosigner: Cosigner,
    state: Path,
    out: TextIO,
    err: TextIO,
) -> int:
    try:
        _round(gateway, log_keys, cosigner, state, out)
    except _Refused as exc:
        print(f"REFUSED: {exc}", file=err)
        return EXIT_REFUSED
    except _Unreachable as exc:
        print(f"error: {exc}", file=err)
        return EXIT_UNREACHABLE
    except _Unusable as exc:
        print(f"error: {exc}", file=err)
        return EXIT_UNUSABLE
    finally:
        for stream in (out, err):
            stream.flush()
    return EXIT_OK
