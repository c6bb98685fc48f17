"""Verify declared divergences: one or several applying to one case, composed.

Every divergence that applies to a case (Divergence.applies) takes part; their effects compose:

- masked_rows: fully masked rows follow that policy instead of the case's. Two applicable
  divergences naming different policies cannot both hold: each policy is tried in declaration
  order and the first that explains the result is the one reported. An "as-written(...)"
  policy (conformance.cases.written: a fill per mask source) is narrowed to the sources the
  case has, so the record names only what applies; the reference computes every fully masked
  row from its fills, and the result must match it like any policy.
- compute_dtype: the outputs it concerns (`outputs`, default all) are held to the tolerance of
  the lowest precision among the case dtype and every applicable compute_dtype, and, where that
  dtype has the baseline rule (float16, bfloat16), to K x the error of a same-dtype baseline *of
  that compute dtype* (inputs and every op rounded to it), not of the case dtype.
- unverifiable: nothing can be predicted; the result is reported with its measured errors.

The composition must explain the result or the verdict is `fail`. Each divergence is then
checked on its own account: one whose removal still explains the result "did not show on this
case", which the message says (a declaration broader than the behaviour it describes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..adapter_api.adapter import Divergence
from ..cases.case import Case
from ..cases.written import for_case
from .compare import Comparison, baseline_error, compare
from .tolerance import Tolerance, for_gradients, tolerance_for

# Smallest relative step of each dtype: the larger, the lower the precision.
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

# (case, policy, dtype or None for the float64 reference) -> every compared array
References = Callable[[Case, str, "str | None"], dict]
# dtype -> {output name: logit-rounding floor} (tolerance.logit_rounding_floor)
Floors = Callable[[str], dict]


def lowest_precision(dtypes: Sequence[str]) -> str:
    return max(dtypes, key=lambda d: EPS[d])


@dataclass(frozen=True)
class Composed:
    """What several divergences together say happens instead."""

    divergences: tuple[Divergence, ...]
    policy: str  # fully-masked-row policy the result follows
    compute: dict[str, str]  # compared name -> dtype whose tolerance/baseline applies

    def describe(self) -> str:
        parts = []
        if any(d.masked_rows for d in self.divergences):
            parts.append(f"fully masked rows match policy '{self.policy}'")
        for dtype in sorted(set(self.compute.values()), key=lambda d: EPS[d]):
            names = sorted(n for n, d in self.compute.items() if d == dtype)
            parts.append(f"{', '.join(names)} match at {dtype} tolerance")
        return ", ".join(parts) or "matches"


def compose(
    divergences: Sequence[Divergence], case: Case, names: Sequence[str], policy: str | None = None
) -> Composed:
    """The combined expectation; `policy` picks among conflicting masked_rows (default first)."""
    chosen = policy or next(
        (d.masked_rows for d in divergences if d.masked_rows), case.mask.fully_masked_rows
    )
    chosen = for_case(chosen, case)
    compute = {}
    for name in names:
        dtypes = [
            d.compute_dtype
            for d in divergences
            if d.compute_dtype and (d.outputs is None or name in d.outputs)
        ]
        if dtypes:
            low = lowest_precision([case.dtype, *dtypes])
            if low != case.dtype:
                compute[name] = low
    return Composed(tuple(divergences), chosen, compute)


def _compare(
    composed: Composed,
    case: Case,
    outputs: dict,
    references: References,
    tol: Tolerance,
    names: Sequence[str],
    floors: Floors | None = None,
) -> list[Comparison]:
    expected = references(case, composed.policy, None)
    results = []
    for name in names:
        dtype = composed.compute.get(name)
        use = tolerance_for(dtype) if dtype else tol
        if name.startswith("grad_"):
            use = for_gradients(use)
        b_err = None
        if use.baseline_factor is not None:
            # The baseline of the dtype the implementation computes in (the case dtype when
            # no compute_dtype concerns this output), under the composed masked-row policy.
            base = references(case, composed.policy, dtype or case.dtype)
            b_err = baseline_error(base[name], expected[name])
        floor = floors(dtype or case.dtype).get(name, 0.0) if floors else 0.0
        results.append(compare(name, outputs[name], expected[name], use, b_err, floor))
    return results


def verify(
    divergences: Sequence[Divergence],
    case: Case,
    outputs: dict,
    references: References,
    tol: Tolerance,
    names: Sequence[str],
    floors: Floors | None = None,
) -> tuple[bool, str]:
    """(explained, how): whether the composed divergences explain `outputs`, and the words."""
    if any(d.unverifiable for d in divergences):
        ids = ", ".join(d.id for d in divergences if d.unverifiable)
        return True, f"unverifiable by declaration ({ids}); measured errors are in the record"
    policies = list(
        dict.fromkeys(for_case(d.masked_rows, case) for d in divergences if d.masked_rows)
    )
    failures = []
    for policy in policies or [None]:
        composed = compose(divergences, case, names, policy)
        comparisons = _compare(composed, case, outputs, references, tol, names, floors)
        if all(c.ok for c in comparisons):
            unused = _not_shown(composed, case, outputs, references, tol, names, floors)
            how = "verified: " + composed.describe()
            if unused:
                how += "; " + "; ".join(f"'{i}' did not show on this case" for i in unused)
            return True, how
        failures.append("; ".join(c.summary() for c in comparisons if not c.ok))
    return False, " | ".join(failures)


def _not_shown(
    composed: Composed,
    case: Case,
    outputs: dict,
    references: References,
    tol: Tolerance,
    names: Sequence[str],
    floors: Floors | None = None,
) -> list[str]:
    """Ids of composed divergences the result is explained without (only when several).

    Judged per effect, so a divergence another one restates (a combined entry, an
    alternative policy that explains equally) is not called idle for that alone: a
    masked-row policy did not show if the case's own policy explains the result too; a
    compute dtype did not show if the result is explained without every divergence naming
    that dtype; a divergence with both did not show if neither did. A conflicting policy that
    lost did not show."""
    if len(composed.divergences) < 2:
        return []

    def explains(candidate: Composed) -> bool:
        compared = _compare(candidate, case, outputs, references, tol, names, floors)
        return all(c.ok for c in compared)

    everything = composed.divergences
    unused = []
    for divergence in everything:
        if divergence.masked_rows and for_case(divergence.masked_rows, case) != composed.policy:
            unused.append(divergence.id)  # a conflicting policy that lost
            continue
        idle = []
        if divergence.masked_rows:
            idle.append(explains(compose(everything, case, names, case.mask.fully_masked_rows)))
        if divergence.compute_dtype:
            rest = [d for d in everything if d.compute_dtype != divergence.compute_dtype]
            idle.append(explains(compose(rest, case, names, composed.policy)))
        if idle and all(idle):
            unused.append(divergence.id)
    return unused


def record_entries(divergences: Sequence[Divergence]) -> list[dict]:
    """The record's `divergences` list (the first is also the record's `divergence`)."""
    return [{"id": d.id, "reason": d.reason, "link": d.link} for d in divergences]


def rounded_inputs(inputs, dtype: str):  # noqa: ANN001, ANN201 - CaseInputs in and out
    """The case inputs as an implementation computing in `dtype` sees them (rounded to it)."""
    from ..cases.dtypes import round_to
    from ..cases.inputs import CaseInputs

    return CaseInputs(
        dtype=dtype,
        arrays={k: round_to(np.asarray(v), dtype) for k, v in inputs.arrays.items()},
        weights={k: round_to(np.asarray(v), dtype) for k, v in inputs.weights.items()},
    )
