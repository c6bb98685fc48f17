"""Comparing two runs of one adapter (metamorphic properties): the pair tolerance."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..oracle.reference import attention, baseline
from ..verdicts.compare import baseline_error, compare
from ..verdicts.tolerance import Tolerance, tolerance_for
from .context import Context, Failure, PropertyFailed, Skip

# --- tolerances for comparing two runs -----------------------------------------------------


def pair_tolerance(ctx: Context, case: Case, inputs: CaseInputs) -> tuple[Tolerance, float | None]:
    """Tolerance for |run A - run B|: twice the case's own (each run may err by one).

    A declared divergence applies as in evaluate: its compute_dtype sets the tolerance; an
    `unverifiable` one makes the comparison meaningless (skipped and counted). For float16 and
    bfloat16 the baseline rule applies with twice the same-dtype baseline error.
    """
    decl = ctx.declaration
    divergence = decl.divergence_for(case, ctx.device)
    if divergence is not None and divergence.unverifiable:
        raise Skip("unverifiable divergence")
    dtype = case.dtype
    if divergence is not None and divergence.compute_dtype:
        dtype = divergence.compute_dtype
    tol = tolerance_for(dtype, decl.tolerance_override(dtype))
    doubled = dataclasses.replace(tol, rtol=2 * tol.rtol, atol=2 * tol.atol)
    if getattr(tol, "floor_ulps", None):
        doubled = dataclasses.replace(doubled, floor_ulps=2 * tol.floor_ulps)
    if tol.baseline_factor is None:
        return doubled, None
    policy = (divergence.masked_rows if divergence else None) or case.mask.fully_masked_rows
    exact = attention(case, inputs, masked_rows=policy)
    rounded = baseline(case, inputs, masked_rows=policy)
    err = max(baseline_error(rounded[n], exact[n]) for n in case.compare)
    return doubled, 2 * err


def agree(
    prop: str,
    what: str,
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    tol: Tolerance,
    base_err: float | None,
    failure_cases: list[Case],
    arrays: dict[str, np.ndarray],
    select: dict[str, np.ndarray] | None = None,
) -> None:
    """Raise a counterexample unless every compared output agrees (NaN placement exactly)."""
    problems = []
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape:
            problems.append(f"{name}: shape {actual.shape} vs {expected.shape}")
            continue
        if select is not None and name in select:
            keep = np.broadcast_to(select[name], expected.shape)
            actual, expected = actual[keep], expected[keep]
        result = compare(name, actual, expected, tol, base_err)
        if not result.ok:
            problems.append(result.summary())
    if problems:
        message = f"{prop}: {what}: " + "; ".join(problems)
        raise PropertyFailed(Failure(prop, "mismatch", message, failure_cases, arrays=arrays))
