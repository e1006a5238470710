"""Permit: may this role do this act on this action type in this workflow? Casbin decides.

pycasbin runs the matcher over every policy line, so a large policy makes every request slow.
Two things keep the cost flat: the lines are split into one enforcer per (workflow, act, role),
holding only the lines whose subject the role is or inherits, so a request only meets the lines
that could match it; and answers are cached until the policy changes (a new bundle makes a new
``Permitter``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import casbin
from casbin.model import Model

__all__ = ["DENY_BY_DEFAULT", "PermitResult", "Permitter"]

# What "no policy line matched" is called in traces: an explicit marker, not None.
DENY_BY_DEFAULT = "deny-by-default"
_ANY_DOMAIN = "*"
_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class PermitResult:
    """Casbin's answer with the request it answered and the line that allowed it."""

    allowed: bool
    request: tuple[str, str, str, str]
    matched: tuple[str, ...] | None

    def trace(self) -> dict[str, object]:
        """The part of a decision trace that shows Casbin's work."""
        return {
            "request": list(self.request),
            "allowed": self.allowed,
            "matched": list(self.matched) if self.matched else DENY_BY_DEFAULT,
        }


class Permitter:
    """Answers permit questions for one Casbin model and policy."""

    def __init__(self, model_text: str, policy_text: str) -> None:
        self._model_text = model_text
        self._rules: dict[tuple[str, str], list[list[str]]] = {}
        self._groupings: list[list[str]] = []
        for row in csv.reader(io.StringIO(policy_text), skipinitialspace=True):
            if not row or row[0].startswith("#"):
                continue
            kind, *values = (cell.strip() for cell in row)
            if kind == "p" and len(values) == 4:
                self._rules.setdefault((values[1], values[3]), []).append(values)
            elif kind == "g" and len(values) == 3:
                self._groupings.append(values)
            else:
                raise ValueError(f"policy line not understood: {', '.join(row)}")
        self._enforcers: dict[tuple[str, str, str], casbin.Enforcer] = {}
        self._cache: dict[tuple[str, str, str, str], PermitResult] = {}
        self._acts: dict[str, set[str]] = {}

    @property
    def roles(self) -> set[str]:
        """Every role the policy names (as a subject or through inheritance)."""
        named = {rule[0] for rules in self._rules.values() for rule in rules}
        return named | {g[0] for g in self._groupings}

    def lines(self, act: str) -> list[tuple[str, str, str]]:
        """The policy's ``p`` lines for ``act``, as (role, workflow or *, object pattern)."""
        return [
            (rule[0], rule[1], rule[2])
            for (_, a), rules in self._rules.items()
            if a == act
            for rule in rules
        ]

    def roles_with_act(self, act: str) -> set[str]:
        """Roles that may ``act`` on something in some workflow (directly or inherited)."""
        cached = self._acts.get(act)
        if cached is None:
            direct = {
                rule[0] for (_, a), rules in self._rules.items() if a == act for rule in rules
            }
            cached = set(direct)
            while True:  # inheritance chains: a role that inherits an heir inherits too
                heirs = {g[0] for g in self._groupings if g[1] in cached} - cached
                if not heirs:
                    break
                cached |= heirs
            self._acts[act] = cached
        return cached

    def permit(self, role: str, workflow: str, action_type: str, act: str) -> PermitResult:
        """Whether ``role`` may ``act`` on ``action_type`` in ``workflow``."""
        key = (role, workflow, action_type, act)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        allowed, explain = self._enforcer(workflow, act, role).enforce_ex(*key)
        result = PermitResult(bool(allowed), key, tuple(explain) if allowed else None)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _enforcer(self, workflow: str, act: str, role: str) -> casbin.Enforcer:
        """An enforcer holding only the lines that could answer this role in this workflow:
        those of the workflow (or every workflow) for this act whose subject is the role or
        one it inherits there."""
        enforcer = self._enforcers.get((workflow, act, role))
        if enforcer is None:
            groupings = [g for g in self._groupings if g[2] == workflow]
            subjects = {role}
            while True:
                inherited = {g[1] for g in groupings if g[0] in subjects} - subjects
                if not inherited:
                    break
                subjects |= inherited
            rules = [
                rule
                for rule in self._rules.get((workflow, act), [])
                + self._rules.get((_ANY_DOMAIN, act), [])
                if rule[0] in subjects
            ]
            model = Model()
            model.load_model_from_text(self._model_text)
            enforcer = casbin.Enforcer(model)
            if rules:
                enforcer.add_policies(rules)
            if groupings:
                enforcer.add_grouping_policies(groupings)
            self._enforcers[(workflow, act, role)] = enforcer
        return enforcer
