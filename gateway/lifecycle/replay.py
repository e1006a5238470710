"""Replay: re-decide the recorded history with a candidate bundle and say what would change.

Every ``decision`` entry is decided again (``gateway.decision.redecide``) from what the ledger
recorded for it: the proposal and the executor (its ``proposal`` entry), the autonomy level, the
figures and the clock (the decision's own entry); a re-evaluation is replayed as one (``admitted``).
The report counts the verdicts that would change, from what to what, by workflow and case
type, with examples and the reason codes that appear or disappear (and the warnings, which a rule
moved from ``warn`` to ``hold`` or ``deny`` takes away); the decisions whose verdict stays but
whose reasons change, grouped by the codes added and removed, with the decisions named; and the
decisions whose Rego input could not be rebuilt byte for byte (an input the ledger did not
record: there should be none). A proposal's sealed personal data is read back from the ledger
while it is there; the decisions whose personal data was erased cannot be decided again, and are
counted apart (``erased``). Examples show proposals as the ledger keeps them, sealed values
sealed.

Without a candidate, each decision is replayed with the bundle that made it (the digest its
trace names, loaded from the database): a check that the whole history is reproducible, which
must change no verdict.

The ledger is read in pages (``Ledger.entries``), so a history of any length is replayed in
constant memory: only the latest proposal entries wait for their decision (the two are
appended together), and a re-evaluation looks its proposal up by seq.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import ACTIONS
from gateway.decision.personal import erased_fields
from gateway.decision.redecide import Inputs, Redecision, code_changes, redecide
from gateway.policy.active import ActivePolicy
from ledger.store import Ledger

__all__ = ["AS_RECORDED", "Progress", "ReplayReport", "Replayer", "parse_since"]

AS_RECORDED = "as-recorded"  # the report's candidate when each decision's own bundle replays it

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PENDING = 256  # proposal entries kept while their decision has not come by
_LISTED = 20  # decisions named per change of reasons (all are counted)


def parse_since(text: str) -> str:
    """A date (``2026-11-01``) or ISO time (``2026-11-01T08:00:00Z``) as the ledger writes
    times, for comparing with ``decided_at``; ValueError if it is neither."""
    text = text.strip()
    if _DATE.fullmatch(text):
        moment = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    else:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Progress:
    """How far a replay is: entries read of the total, decisions replayed, verdicts changed."""

    scanned: int
    total: int
    decisions: int
    changed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "progress",
            "scanned": self.scanned,
            "total": self.total,
            "decisions": self.decisions,
            "changed": self.changed,
        }


@dataclass
class _Group:
    decisions: int = 0
    changed: int = 0
    reasons_changed: int = 0
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    added: Counter[str] = field(default_factory=Counter)
    removed: Counter[str] = field(default_factory=Counter)
    warnings_added: Counter[str] = field(default_factory=Counter)
    warnings_removed: Counter[str] = field(default_factory=Counter)


@dataclass
class _ReasonChange:
    """Decisions of one workflow and case type whose verdict stays and whose reasons change
    the same way: how many, and the first ones."""

    count: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)


# workflow, case type, verdict, codes added, codes removed
_ReasonKey = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]


@dataclass
class ReplayReport:
    """What a replay found."""

    candidate: str
    since: str | None
    total: int = 0
    scanned: int = 0
    decisions: int = 0
    changed: int = 0
    reasons_changed: int = 0
    messages_changed: int = 0  # the same verdict and reason codes, worded otherwise
    warnings_changed: int = 0  # other warning codes, whatever the verdict
    failed: int = 0  # the candidate refused the proposal or failed on it
    input_mismatches: int = 0
    mismatched: list[int] = field(default_factory=list)
    missing: int = 0  # decisions whose proposal entry could not be found
    erased: int = 0  # decisions not replayed: their proposal's personal data was erased
    erased_seqs: list[int] = field(default_factory=list)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    reason_changes: dict[_ReasonKey, _ReasonChange] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unchanged(self) -> int:
        return self.decisions - self.changed

    def to_json(self) -> dict[str, Any]:
        """The report as ``POST /v1/policies/replay`` ends its stream with it."""
        added: Counter[str] = Counter()
        removed: Counter[str] = Counter()
        warned: Counter[str] = Counter()
        unwarned: Counter[str] = Counter()
        for group in self.groups.values():
            added.update(group.added)
            removed.update(group.removed)
            warned.update(group.warnings_added)
            unwarned.update(group.warnings_removed)
        return {
            "event": "report",
            "candidate_digest": self.candidate,
            "since": self.since,
            "entries": self.total,
            "entries_scanned": self.scanned,
            "decisions": self.decisions,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "reasons_changed": self.reasons_changed,
            "messages_changed": self.messages_changed,
            "warnings_changed": self.warnings_changed,
            "warning_rules": _rules(warned, unwarned),
            "refused_or_failed": self.failed,
            "input_mismatches": self.input_mismatches,
            "input_mismatch_seqs": self.mismatched,
            "proposals_missing": self.missing,
            "erased": self.erased,
            "erased_seqs": self.erased_seqs,
            "transitions": _transitions(self.transitions),
            "rules": _rules(added, removed),
            "reason_changes": [
                {
                    "workflow": workflow,
                    "case_type": case_type,
                    "verdict": verdict,
                    "added": list(gained),
                    "removed": list(lost),
                    "count": change.count,
                    "decisions": change.decisions,
                }
                for (workflow, case_type, verdict, gained, lost), change in sorted(
                    self.reason_changes.items(), key=lambda kv: (-kv[1].count, kv[0])
                )
            ],
            "groups": [
                {
                    "workflow": workflow,
                    "case_type": case_type,
                    "decisions": group.decisions,
                    "changed": group.changed,
                    "reasons_changed": group.reasons_changed,
                    "transitions": _transitions(group.transitions),
                    "rules": _rules(group.added, group.removed),
                    "warning_rules": _rules(group.warnings_added, group.warnings_removed),
                }
                for (workflow, case_type), group in sorted(self.groups.items())
            ],
            "examples": [
                example for key in sorted(self.examples) for example in self.examples[key]
            ],
            "seconds": round(self.seconds, 3),
            "decisions_per_second": round(self.decisions / self.seconds, 1)
            if self.seconds > 0
            else None,
        }


def _transitions(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"from": before, "to": after, "count": count}
        for (before, after), count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _rules(added: Counter[str], removed: Counter[str]) -> list[dict[str, Any]]:
    codes = sorted(set(added) | set(removed), key=lambda c: (-(added[c] + removed[c]), c))
    return [{"code": code, "added": added[code], "removed": removed[code]} for code in codes]


class Replayer:
    """Replays the ledger's decisions with ``candidate`` (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        engine: Engine,
        candidate: ActivePolicy | None,
        *,
        recorded: Callable[[str], ActivePolicy] | None = None,
        since: str | None = None,
        examples: int = 3,
        page: int = 5000,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._ledger = ledger
        self._engine = engine
        self._candidate = candidate
        self._recorded = recorded
        self._policies: OrderedDict[str, ActivePolicy] = OrderedDict()
        if candidate is None and recorded is None:
            raise ValueError("replay with a candidate, or with the recorded bundles")
        self._since = since
        self._examples = examples
        self._page = page
        self._clock = clock

    def run(self, progress: Callable[[Progress], None] | None = None) -> ReplayReport:
        """Replay everything; call ``progress`` now and then."""
        report: ReplayReport | None = None
        for event in self.events():
            if isinstance(event, Progress):
                if progress is not None:
                    progress(event)
            else:
                report = event
        assert report is not None
        return report

    def events(self, every: int = 5000) -> Generator[Progress | ReplayReport, None, None]:
        """Progress every ``every`` entries read, then the report."""
        started = self._clock()
        total = self._ledger.size()
        name = AS_RECORDED if self._candidate is None else self._candidate.bundle.digest
        report = ReplayReport(name, self._since, total=total)
        pending: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        yield Progress(0, total, 0, 0)
        for data in self._ledger.entries(0, total, page=self._page):
            report.scanned += 1
            if report.scanned % every == 0:
                report.seconds = self._clock() - started
                yield Progress(report.scanned, total, report.decisions, report.changed)
            entry = orjson.loads(data)
            kind = entry["kind"]
            if kind == "proposal":
                pending[entry["subject"]] = (entry["seq"], entry["body"])
                if len(pending) > _PENDING:
                    pending.popitem(last=False)
            elif kind == "decision":
                body = entry["body"]
                if self._since is not None and body["trace"]["decided_at"] < self._since:
                    pending.pop(entry["subject"], None)
                    continue
                proposal = pending.pop(entry["subject"], None)
                if proposal is None:
                    proposal = self._proposal_of(entry["subject"])
                if proposal is None:
                    report.missing += 1
                    continue
                self._replay(report, entry, proposal, body)
        report.seconds = self._clock() - started
        yield Progress(report.scanned, total, report.decisions, report.changed)
        yield report

    def _policy(self, digest: str) -> ActivePolicy:
        if self._candidate is not None:
            return self._candidate
        assert self._recorded is not None
        policy = self._policies.get(digest)
        if policy is None:
            policy = self._policies[digest] = self._recorded(digest)
            if len(self._policies) > 8:
                self._policies.popitem(last=False)
        return policy

    def _proposal_of(self, action_id: str) -> tuple[int, dict[str, Any]] | None:
        """The proposal entry (seq, body) of an action decided again later (a re-evaluation)."""
        try:
            with self._engine.connect() as conn:
                seq = conn.execute(
                    sa.select(ACTIONS.c.proposal_seq).where(ACTIONS.c.id == action_id)
                ).scalar()
        except sa.exc.SQLAlchemyError:
            return None
        if seq is None:
            return None
        body = self._ledger.entry(int(seq)).body
        return (int(seq), body) if "proposal" in body else None

    def _replay(
        self,
        report: ReplayReport,
        entry: dict[str, Any],
        proposal: tuple[int, dict[str, Any]],
        decided: dict[str, Any],
    ) -> None:
        seq, proposed = proposal
        revealed = self._ledger.reveal(seq) if "sealed" in proposed else proposed
        if erased_fields(revealed.get("proposal", {})):
            report.erased += 1
            if len(report.erased_seqs) < 20:
                report.erased_seqs.append(int(entry["seq"]))
            return
        try:
            inputs = Inputs.recorded(revealed, decided)
        except (KeyError, TypeError, ValueError):  # not a decision this gateway wrote
            report.missing += 1
            return
        try:
            policy = self._policy(decided["trace"]["bundle_digest"])
        except Exception as exc:  # the bundle that decided is not in the database, or broken
            again = Redecision("error", [], error=f"the recorded bundle does not load: {exc}")
        else:
            again = redecide(policy, inputs)
        report.decisions += 1
        workflow = inputs.proposal["workflow"]
        case_type = str(inputs.case_type)
        group = report.groups.get((workflow, case_type))
        if group is None:
            group = report.groups[(workflow, case_type)] = _Group()
        group.decisions += 1
        recorded_digest = decided["trace"]["rego"]["input_digest"]
        if again.input_digest is not None and again.input_digest != recorded_digest:
            report.input_mismatches += 1
            if len(report.mismatched) < 20:
                report.mismatched.append(int(entry["seq"]))
        before = str(decided["verdict"])
        before_codes = sorted(r["code"] for r in decided["reasons"])
        if again.verdict in ("refused", "error"):
            report.failed += 1
        warned = {r["code"] for r in decided.get("warnings") or ()}
        if sorted(warned) != again.warning_codes:
            report.warnings_changed += 1
            group.warnings_added.update(set(again.warning_codes) - warned)
            group.warnings_removed.update(warned - set(again.warning_codes))
        if again.verdict == before:
            if again.codes != before_codes:
                report.reasons_changed += 1
                group.reasons_changed += 1
                gained, lost = code_changes(before_codes, again.codes)
                key = (workflow, case_type, before, tuple(gained), tuple(lost))
                change = report.reason_changes.setdefault(key, _ReasonChange())
                change.count += 1
                if len(change.decisions) < _LISTED:
                    change.decisions.append(
                        {
                            "action_id": entry["subject"],
                            "decision_seq": entry["seq"],
                            "decided_at": decided["trace"]["decided_at"],
                        }
                    )
            elif sorted((r.code, r.message) for r in again.reasons) != sorted(
                (r["code"], r["message"]) for r in decided["reasons"]
            ):
                report.messages_changed += 1
            return
        report.changed += 1
        group.changed += 1
        transition = (before, again.verdict)
        report.transitions[transition] += 1
        group.transitions[transition] += 1
        group.added.update(set(again.codes) - set(before_codes))
        group.removed.update(set(before_codes) - set(again.codes))
        kept = report.examples.setdefault(transition, [])
        if len(kept) < self._examples:
            kept.append(_example(entry, proposed, decided, again))


def _example(
    entry: dict[str, Any], proposed: dict[str, Any], decided: dict[str, Any], again: Redecision
) -> dict[str, Any]:
    proposal = proposed["proposal"]
    return {
        "action_id": entry["subject"],
        "decision_seq": entry["seq"],
        "decided_at": decided["trace"]["decided_at"],
        "workflow": proposal["workflow"],
        "case_type": decided["trace"]["autonomy"]["case_type"],
        "executor": proposed["executor"]["name"],
        "role": proposed["executor"]["role"],
        "level": decided["trace"]["autonomy"]["level"],
        "before": {"verdict": decided["verdict"], "reasons": decided["reasons"]},
        "after": again.to_json(),
        "proposal": proposal,
    }
