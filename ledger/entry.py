"""Ledger entries and their canonical bytes (RFC 8785, JSON Canonicalization Scheme).

An entry is ``{seq, time, kind, actor, subject, body, prev}``. Its bytes are the JCS encoding of
that object; those exact bytes are stored, exported and hashed, and nobody re-serialises them.

Entries hold no floats: money and measures are strings, integers stay within ±(2**53 - 1), and
every string is in Unicode NFC. A value outside those rules is refused before anything is
written, with the path of the offending field.

Speed: the ``rfc8785`` package is the reference encoder, but it is pure Python (about 40 µs for a
typical body here) and sits on the append and verify paths. On the values this ledger admits and
whose encoding is pure ASCII with no number token that has a fraction or exponent, orjson with
sorted keys produces the same bytes as JCS (same escapes, same key order, same integers), so that
case takes orjson and everything else takes ``rfc8785``. ``tests/ledger/test_entry.py`` checks the
two agree on generated values. Telling whether bytes hold a float token is itself on the hot path
(a regex over every byte costs more than orjson's parse); ``_may_hold_float`` answers first with a
byte translation that never misses one, and only when it says maybe does the regex decide.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import rfc8785

from ledger.errors import EntryError

__all__ = [
    "GENESIS_PREV",
    "MAX_SAFE_INTEGER",
    "Entry",
    "assemble_entry",
    "canonical_json",
    "check_canonical",
    "check_kind",
    "encode_entry",
    "format_time",
    "parse_entry",
]

GENESIS_PREV = "0" * 64
MAX_SAFE_INTEGER = 2**53 - 1

# In minified JSON every number token inside an object or array sits between one of ":,[" and
# one of ",}]"; this finds those with a fraction or an exponent. It may also match inside a string,
# which only sends that value down the exact (slower) path. A number standing alone (the whole
# document) has neither neighbour: ``_may_hold_float`` sends every such document the exact way.
_FLOAT_TOKEN = re.compile(rb"[:,\[]-?\d+(?:\.\d+(?:[eE][+-]?\d+)?|[eE][+-]?\d+)[,}\]]")
# Cheap pre-tests in front of that regex (``_may_hold_float``), both byte translations that
# delete digits, '-' and '+'. A match of _FLOAT_TOKEN is, byte by byte,
#     P  -?D+  ( "." D+ ( [eE] [+-]? D+ )?  |  [eE] [+-]? D+ )  F      (P in ":,[", F in ",}]").
# Translation maps each byte on its own, so the image of a match is a contiguous piece of the
# image of the whole: a shape that every match's image contains is in the whole image whenever
# the regex would match. There is no false negative, only false positives (string content that
# has the shape), and those cost the next test, never a wrong answer.
# - _END_SHAPE maps ',' ']' '}' to ';' and 'e' 'E' to '.': the match becomes ":"/";"/"[" then
#   "." or ".." then ";", which holds ".;" (a fraction or exponent right before the number's end).
#   One scan; string content such as "one, two" ("e,") or "1.5," has it too.
# - _BOTH_SHAPE maps ',' '[' ']' '}' to ':' and 'e' 'E' to '.': the match becomes ":.:" or ":..:",
#   which string content only has in rarer forms such as "x:1.5," or ",e,".
_END_SHAPE = bytes.maketrans(b",]}eE", b";;;..")
_BOTH_SHAPE = bytes.maketrans(b",[]}eE", b"::::..")
_NUMBER_DROP = b"0123456789+-"
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# In a pickle (protocol 5): a float is BINFLOAT, "G" and the double big-endian, whose exponent
# bits are all ones for NaN and the infinities; STACK_GLOBAL names a class (an object pickled
# by reference). See ``_finite``.
_NON_FINITE = re.compile(rb"G[\x7f\xff][\xf0-\xff]")
_BY_REFERENCE = b"\x93"
_ORJSON_OPTS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_ENVELOPE_KEYS = ("actor", "body", "kind", "prev", "seq", "subject", "time")


def canonical_json(value: Any, path: str = "body") -> bytes:
    """Return the RFC 8785 bytes of a JSON value, refusing what entries may not hold.

    Raises ``EntryError`` naming the path of the first float, non-NFC string, unsafe integer,
    non-string key or non-JSON value.
    """
    if isinstance(value, str) and value.isascii():
        return orjson.dumps(value)
    try:
        fast = orjson.dumps(value, option=_ORJSON_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        fast = None
    # orjson writes NaN and infinities as null: where a null may stand for one, the C encoder,
    # which refuses them, looks (the walk below would cost twice as much).
    plain = fast is not None and fast.isascii() and not _may_hold_float(fast)
    if plain and fast is not None and (b"null" not in fast or _finite(value)):
        return fast
    _check_value(value, path)
    return rfc8785.dumps(value)


def _finite(value: Any) -> bool:
    """Whether ``value`` holds no NaN or infinity.

    Asked of every value whose orjson bytes hold a null (a decision's answer always does). The
    JSON encoder decides exactly, since it refuses them, but costs most of ``canonical_json``;
    pickling is a C walk several times faster that writes every float as ``G`` and its 8 bytes,
    so a pickle with no non-finite exponent after a ``G`` and no object pickled by reference
    (an enum member is pickled as its name, not its value) holds none. Anything else, false
    alarms included (those bytes inside a string), goes to the encoder.
    """
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:
        data = None
    if data is not None and _BY_REFERENCE not in data and not _NON_FINITE.search(data):
        return True
    try:
        json.dumps(value, allow_nan=False, check_circular=False)
    except ValueError:
        return False
    return True


def _may_hold_float(data: bytes) -> bool:
    """False only when minified JSON ``data`` holds no number token with a fraction or exponent.

    True for a document that is not an object or array (a lone number has no neighbours for the
    regex to see), and wherever the regex finds a float token; a string that merely looks like
    one may give True too, which costs the exact path and never a wrong answer.
    """
    if not data.startswith((b"{", b"[")):
        return True
    if b".;" not in data.translate(_END_SHAPE, _NUMBER_DROP):
        return False
    shape = data.translate(_BOTH_SHAPE, _NUMBER_DROP)
    if b":.:" not in shape and b":..:" not in shape:
        return False
    return _FLOAT_TOKEN.search(data) is not None


def _check_value(value: Any, path: str) -> None:
    """Walk a value and raise EntryError at the first thing an entry may not hold."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EntryError(
                path, f"integer {value} is outside ±(2**53 - 1); write large integers as strings"
            )
    elif isinstance(value, float):
        raise EntryError(
            path, f"floats are not allowed ({value!r}); write money and measures as strings"
        )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EntryError(path, f"object keys must be strings, got {type(key).__name__}")
            _check_string(key, f"{path}.{key}")
            _check_value(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]")
    else:
        raise EntryError(path, f"{type(value).__name__} is not a JSON value")


def _check_string(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EntryError(path, "string holds a lone surrogate, which is not Unicode") from exc
    if not unicodedata.is_normalized("NFC", text):
        raise EntryError(
            path, "string is not in Unicode NFC; normalise it (unicodedata.normalize('NFC', s))"
        )


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds, the form every entry's ``time`` takes."""
    utc = moment if moment.tzinfo is dt.UTC else moment.astimezone(dt.UTC)
    if utc.year < 1000:  # isoformat pads the year to four digits, strftime's %Y does not
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat is C through and through, about half of strftime's cost; it ends "+00:00".
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def encode_entry(
    *, seq: int, time: str, kind: str, actor: str, subject: str, body: bytes, prev: str
) -> bytes:
    """Assemble an entry's canonical bytes from its fields; ``body`` is already canonical.

    A JCS object is its members sorted by key and joined without space, each member the JCS of
    its key and value. The envelope's keys are fixed and listed here in that order, so the entry
    is the envelope around values that ``canonical_json`` encoded.
    """
    check_kind(kind)
    if seq < 0 or seq > MAX_SAFE_INTEGER:
        raise EntryError("seq", f"{seq} is out of range")
    if len(prev) != 64:
        raise EntryError("prev", "must be 64 hex digits")
    return assemble_entry(
        seq,
        canonical_json(time, "time"),
        kind,
        canonical_json(actor, "actor"),
        canonical_json(subject, "subject"),
        body,
        prev,
    )


def check_kind(kind: str) -> None:
    """Refuse a kind that is not a short lowercase name."""
    if not _KIND.fullmatch(kind):
        raise EntryError("kind", f"{kind!r} is not a kind (lowercase letters, digits, '._-')")


def assemble_entry(
    seq: int, time: bytes, kind: str, actor: bytes, subject: bytes, body: bytes, prev: str
) -> bytes:
    """The envelope around values already encoded by ``canonical_json`` (the append hot path).

    ``kind`` must have passed ``check_kind``, ``prev`` be 64 lowercase hex digits and ``seq`` a
    safe integer; ``encode_entry`` is the checked way in.
    """
    return b"".join(
        (
            b'{"actor":',
            actor,
            b',"body":',
            body,
            b',"kind":"',
            kind.encode(),
            b'","prev":"',
            prev.encode(),
            b'","seq":',
            str(seq).encode(),
            b',"subject":',
            subject,
            b',"time":',
            time,
            b"}",
        )
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """A parsed entry together with the exact bytes it was parsed from."""

    seq: int
    time: str
    kind: str
    actor: str
    subject: str
    body: dict[str, Any]
    prev: str
    data: bytes

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON object (what its bytes encode)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "body": self.body,
            "prev": self.prev,
        }


def parse_entry(data: bytes) -> Entry:
    """Parse an entry's bytes, checking that they are canonical and well formed.

    Raises ``EntryError`` when the bytes are not JSON, not in canonical form, or lack a field.
    """
    obj = check_canonical(data)
    if not isinstance(obj, dict) or tuple(obj) != _ENVELOPE_KEYS:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise EntryError("", f"an entry has exactly the fields {list(_ENVELOPE_KEYS)}, got {keys}")
    seq, prev, body = obj["seq"], obj["prev"], obj["body"]
    strings = (obj["time"], obj["kind"], obj["actor"], obj["subject"], prev)
    if type(seq) is not int or not all(isinstance(s, str) for s in strings):
        raise EntryError("", "seq must be an integer and time, kind, actor, subject, prev strings")
    if not isinstance(body, dict):
        raise EntryError("body", "must be an object")
    if len(prev) != 64 or not _is_lower_hex(prev):
        raise EntryError("prev", "must be 64 lowercase hex digits")
    return Entry(seq, obj["time"], obj["kind"], obj["actor"], obj["subject"], body, prev, data)


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def check_canonical(data: bytes) -> Any:
    """Parse JSON bytes and return the value if the bytes are exactly its RFC 8785 form.

    Raises ``EntryError`` otherwise (not JSON, whitespace, key order, escapes, duplicate keys,
    floats, unsafe integers, non-NFC strings).
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EntryError("", f"not valid JSON: {exc}") from exc
    if data.isascii() and not _may_hold_float(data):
        try:
            again = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
        except orjson.JSONEncodeError as exc:
            raise EntryError("", "holds an integer outside ±(2**53 - 1)") from exc
    else:
        _check_value(value, "")
        again = rfc8785.dumps(value)
    if again != data:
        raise EntryError("", "bytes are not in RFC 8785 canonical form")
    return value
