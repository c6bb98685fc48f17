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


# One matrix may expand to MAX_MATRIX_CASES (spec/keys.py); many matrices, items or files together
# may not exceed this, checked while expanding so no spec can build millions of cases.
MAX_TOTAL_CASES = 20_000
TOTAL_CASES_HINT = (
    "split the run (several spec paths, --case, -k or --shard) or shrink the matrices"
)


def yaml_number_hint(value: object) -> str | None:
    """A hint for text that looks like a number (YAML 1.1 reads `1e300` or `1e-3` as text)."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    mantissa, _, exponent = value.lower().partition("e")
    sign = "" if exponent[:1] in ("+", "-") else "+"
    fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{sign}{exponent}"
    return (
        f"YAML reads {value!r} as text; write it with a dot and a signed exponent, e.g. {fixed}"
        if exponent and number == number
        else "write it without quotes"
    )


# Knobs that multiply work or magnitudes: bounded so that no spec asks for a million dropout
# draws or an additive bias whose values overflow to inf in float32.
MAX_DROPOUT_DRAWS = 10_000
MAX_BIAS_SCALE = 1e6


# Integers in a spec: a seed may be large (it is hashed); sizes in lists (windows, paddings,
# axes) are bounded where NumPy's C integers would overflow.
MAX_SPEC_INT = 2**63 - 1
MAX_LIST_INT = 2**31 - 1
