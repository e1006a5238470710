"""How counts read in what people are told: "1 failure", "2 failures", "no entries"."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one; ``plural`` when
    adding an s is wrong ("1 entry", "2 entries")."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
