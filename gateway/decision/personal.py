"""Personal data in a decision: the values of a proposal that the ledger seals, kept out of
everything else.

A workflow's ``personal_data`` (data.json; ``gateway.policy.bundle.PersonalData``) names the
field that holds the data subject's id and the fields that hold their data. The decider seals
those present in a proposal in its ``proposal`` entry (``ledger.sealing``: the entry holds a
salted commitment, the value waits in ``ledger_sealed`` until the subject is erased) and names
the data subject on every entry of the decision, so the ledger refuses one that holds the id in
clear. Policies see the values while they decide; nothing else keeps them:

- the reasons, and the Rego output in the trace, quote no sealed value: where a policy's message
  quotes one, ``[sealed params.customer_email]`` stands in its place (``withhold``). They go to
  the proposer, the decision entry, the stored answer, approval and audit summaries and notices;
- the request and input digests are taken with the sealed values replaced (``masked``): a plain
  hash over a customer's name and email would let whoever holds an export test a guess long
  after the values were erased. The request digest (idempotency) replaces each by its keyed
  digest under the ledger's subject key, so a retry with other values is still told apart; the
  input digest by a fixed mark, so that a replay recomputes it from the recorded inputs.

A proposal whose personal data could not be erased is refused, 422 naming the field: sealed
fields without the data subject's id, an id that is not a string, the id in clear in another
field, a ledger's mark (``$sealed``, ``$erased``) among its values. One whose values were erased
(read back from the ledger for a re-evaluation or a replay) cannot be decided again
(``PersonalDataErased``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidInput
from gateway.policy.bundle import WorkflowConfig
from gateway.policy.rego import RegoResult
from gateway.schemas import Reason
from ledger.sealing import ERASED_MARK, SEALED_MARK

__all__ = [
    "INPUT_MARK",
    "MAX_SUBJECT",
    "Personal",
    "PersonalDataErased",
    "Quoted",
    "erased_fields",
    "find_marks",
    "find_personal",
    "masked",
    "quoted_in",
    "show_erased",
    "withhold",
    "withhold_reasons",
    "withhold_rego",
]

# The longest data subject id (``ErasureRequest.data_subject`` takes no longer).
MAX_SUBJECT = 256
# What the input digest holds in place of a sealed value.
INPUT_MARK = {SEALED_MARK: True}
_MARKS = (SEALED_MARK, ERASED_MARK)
_MARK_BYTES = tuple(f'"{mark}":'.encode() for mark in _MARKS)


# (text, path) of what a message could quote of sealed values, the longest text first.
Quoted = tuple[tuple[str, str], ...]


class PersonalDataErased(InvalidInput):
    """A recorded proposal whose personal data was erased: it cannot be decided again."""


@dataclass(frozen=True)
class Personal:
    """The personal data of one proposal: whose it is, which of its fields hold it (paths
    into the proposal, sorted) and the text a message could quote of them."""

    data_subject: str
    subject_path: str
    paths: tuple[str, ...]
    quoted: Quoted

    @property
    def entry_paths(self) -> tuple[str, ...]:
        """The paths as the ledger seals them, in the ``proposal`` entry's body."""
        return tuple(f"proposal.{path}" for path in self.paths)


def find_personal(config: WorkflowConfig, proposal: Mapping[str, Any]) -> Personal | None:
    """The personal data of ``proposal`` (as recorded) under the workflow's ``personal_data``;
    None when it names none or the proposal has none of its fields. InvalidInput names a field
    whose data could not be erased; PersonalDataErased one whose value was erased."""
    named = config.personal_data
    if named is None:
        return None
    present = {path: value for path in named.paths if (value := _get(proposal, path)) is not _NO}
    if not present:
        return None
    erased = [(path, v[ERASED_MARK]) for path, v in present.items() if _is_erased(v)]
    if erased:
        raise PersonalDataErased([(path, f"erased by erasure entry {seq}") for path, seq in erased])
    subject = named.data_subject
    if subject not in present:
        others = ", ".join(sorted(present))
        raise InvalidInput(
            [(subject, f"names whose personal data {others} is, and is required with it")]
        )
    data_subject = present[subject]
    if not isinstance(data_subject, str) or not data_subject.strip():
        raise InvalidInput([(subject, "must be the data subject's id, a string")])
    if len(data_subject) > MAX_SUBJECT:
        # Longer than an erasure request may name: it could never be erased.
        raise InvalidInput(
            [(subject, f"is the data subject's id: at most {MAX_SUBJECT} characters")]
        )
    rest = masked(proposal, present, lambda _: None)
    # The bytes tell whether the id is there as a whole string (a value or a key), at C speed;
    # only then does a walk find where.
    if orjson.dumps(data_subject) in orjson.dumps(rest):
        found = [path for path, value in _leaves(rest) if value == data_subject]
        found += [path for path in _keys(rest, "") if path.rpartition(".")[2] == data_subject]
        where = found[0] if found else "proposal"
        raise InvalidInput(
            [(where, f"holds the data subject's id in clear; only {subject} may (sealed)")]
        )
    paths = tuple(sorted(present))
    return Personal(data_subject, subject, paths, quoted_in(proposal, paths))


def quoted_in(proposal: Mapping[str, Any], paths: Iterable[str]) -> Quoted:
    """What a message could quote of the values at ``paths``: for ``withhold``. A replay or a
    shadow under another bundle withholds what the entry sealed, whatever that bundle names."""
    found = [
        (text, path)
        for path in paths
        if (value := _get(proposal, path)) is not _NO
        for text in _texts(value)
        if text
    ]
    return tuple(sorted(found, key=lambda item: -len(item[0])))


def find_marks(encoded: bytes, value: Any, where: str) -> str | None:
    """The path of a ledger's mark (a ``$sealed`` or ``$erased`` key) in ``value``, whose
    canonical JSON is ``encoded``; None when it has none (the bytes tell, without a walk)."""
    if not any(mark in encoded for mark in _MARK_BYTES):
        return None
    return next((path for path in _keys(value, where) if path.rpartition(".")[2] in _MARKS), None)


def masked(
    proposal: Mapping[str, Any], paths: Iterable[str], mark: Callable[[Any], Any]
) -> dict[str, Any]:
    """A copy of ``proposal`` with the value at each of ``paths`` replaced by ``mark(value)``
    (paths it does not have are left out); the dicts on the way down are copied."""
    copy = dict(proposal)
    for path in paths:
        *parents, key = path.split(".")
        node = copy
        for name in parents:
            child = node.get(name)
            if not isinstance(child, dict):
                break
            node[name] = node = dict(child)
        else:
            if key in node:
                node[key] = mark(node[key])
    return copy


def withhold(text: str, quoted: Quoted) -> str:
    """``text`` with each sealed value it quotes (``quoted``) replaced by ``[sealed <path>]``."""
    for value, path in quoted:
        if value in text:
            text = text.replace(value, f"[sealed {path}]")
    return text


def withhold_reasons(reasons: list[Reason], quoted: Quoted) -> list[Reason]:
    """Reasons whose codes and messages quote no sealed value."""
    if not quoted:
        return reasons
    return [
        r.model_copy(
            update={"code": withhold(r.code, quoted), "message": withhold(r.message, quoted)}
        )
        for r in reasons
    ]


def withhold_rego(rego: RegoResult, quoted: Quoted) -> RegoResult:
    """What the policy said, with no sealed value quoted in its reasons."""
    if not quoted:
        return rego

    def clean(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {k: withhold(v, quoted) if isinstance(v, str) else v for k, v in item.items()}
            for item in items
        ]

    return RegoResult(clean(rego.deny), clean(rego.hold), clean(rego.warn))


def erased_fields(proposal: Mapping[str, Any]) -> dict[str, int]:
    """The fields of a revealed proposal (``Ledger.reveal``) whose values were erased, with
    the seq of the erasure entry that erased each."""
    return {path: int(value[ERASED_MARK]) for path, value in _leaves(proposal) if _is_erased(value)}


def show_erased(value: Any) -> Any:
    """``value`` for people to read: each erased value as ``[erased by ledger entry N]``."""
    if _is_erased(value):
        return f"[erased by ledger entry {value[ERASED_MARK]}]"
    if isinstance(value, dict):
        return {key: show_erased(child) for key, child in value.items()}
    if isinstance(value, list):
        return [show_erased(child) for child in value]
    return value


_NO = object()


def _get(proposal: Mapping[str, Any], path: str) -> Any:
    node: Any = proposal
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return _NO
        node = node[name]
    return node


def _is_erased(value: Any) -> bool:
    return isinstance(value, dict) and ERASED_MARK in value and SEALED_MARK in value


def _leaves(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every value down ``value``: each string, number and erased mark."""
    if isinstance(value, dict) and not _is_erased(value):
        for key, child in value.items():
            yield from _leaves(child, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _leaves(child, f"{where}[{i}]")
    else:
        yield where, value


def _keys(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{where}.{key}" if where else key
            yield path
            yield from _keys(child, path)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _keys(child, f"{where}[{i}]")


def _texts(value: Any) -> Iterator[str]:
    """The strings a message could quote of a sealed value: each string, and each number of 4
    digits or more as written (a shorter one would blot out unrelated figures)."""
    if isinstance(value, dict):
        for child in value.values():
            yield from _texts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _texts(child)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool) and len(str(value)) >= 4:
        yield str(value)
