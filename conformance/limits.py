"""Load-time limits that keep hostile or mistaken specs from reaching code, markup or memory.

Case ids travel everywhere: file names, reports, terminals, JUnit XML, reproducer scripts.
They are restricted here to a character set that is inert in all of them, so that a matrix
value that closes a string and adds code is refused with a clear error instead of being
escaped (or not) in a dozen places.
"""

from __future__ import annotations

import re

# Letters, digits and the punctuation that ids made of names and matrix values need
# (`masks/causal[T=5,S=7,float32]`, `axes=[2,3]`, `mask={"causal":true}`).
CASE_ID_CHARS = r"A-Za-z0-9_.+\-=/\[\],:{}\""
_CASE_ID = re.compile(f"[{CASE_ID_CHARS}]+")
MAX_CASE_ID_LENGTH = 200


def case_id_problem(case_id: str) -> str | None:
    """Why `case_id` is not acceptable, or None when it is."""
    if len(case_id) > MAX_CASE_ID_LENGTH:
        return f"the case id would be {len(case_id)} characters long (limit {MAX_CASE_ID_LENGTH})"
    bad = sorted({c for c in case_id if not _CASE_ID.fullmatch(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:8])
        return f"the case id would contain {shown}"
    return None


CASE_ID_HINT = (
    "case ids (family/name[matrix values]) may only hold letters, digits and _ . + - = / [ ] , : "
    '{ } "; use plain matrix values, or name the case with ${param}'
)
