"""'Did you mean' for the command line: mistyped case ids, -k words (families) and subcommands."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def close_to(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` choices close to `word`: spelling first, then ones that contain it."""
    choices = list(dict.fromkeys(choices))
    found = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    if len(found) < n:
        low = word.lower()
        found += [c for c in choices if low in c.lower() and c not in found][: n - len(found)]
    return found


def hint(word: str, choices: Iterable[str]) -> str:
    """'\\n  did you mean: a, b?' or '' when nothing is close."""
    found = close_to(word, choices)
    return f"\n  did you mean: {', '.join(repr(f) for f in found)}?" if found else ""


def keyword_hint(expression: str, case_ids: Iterable[str]) -> str:
    """For a -k expression that selects nothing: the families and ids near its words."""
    ids = list(case_ids)
    families = sorted({i.split("/", 1)[0] for i in ids})
    words = [w for w in re.findall(r"[\w./\[\]=,-]+", expression) if w not in ("and", "or", "not")]
    for word in words:
        if any(word.lower() in i.lower() for i in ids):
            continue  # this word matches; another one empties the selection
        found = close_to(word, families + ids)
        if found:
            return (
                f"\n  -k {word!r} matches no case id; did you mean: "
                + ", ".join(repr(f) for f in found)
                + "?"
            )
    return ""
