"""Close matches for a mistyped name, for error messages that name the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def similar_names(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates closest to ``word`` (difflib ratio >= 0.6, case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    return [lowered[h] for h in difflib.get_close_matches(word.lower(), list(lowered), n=n,
                                                           cutoff=0.6)]


def did_you_mean(names: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` or ``""`` when ``names`` is empty."""
    names = list(names)
    return f"; did you mean {', '.join(names)}?" if names else ""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """``"; did you mean a, b?"`` with the close matches of ``word``, or ``""``."""
    return did_you_mean(similar_names(word, candidates, n))
