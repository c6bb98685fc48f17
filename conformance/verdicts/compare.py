"""Compare one array with the reference: errors, mismatches, and exact NaN/Inf placement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerance import Tolerance


@dataclass
class Comparison:
    name: str
    ok: bool
    max_abs_error: float | None
    max_rel_error: float | None
    mismatches: int
    total: int
    first_mismatch: tuple[int, ...] | None
    message: str = ""

    def summary(self) -> str:
        if self.ok:
            return f"{self.name}: ok (max abs {self.max_abs_error:.3g})"
        return f"{self.name}: {self.message}"


def _first(mask: np.ndarray) -> tuple[int, ...] | None:
    idx = np.argwhere(mask)
    return tuple(int(i) for i in idx[0]) if len(idx) else None


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tol: Tolerance,
    baseline_error: float | None = None,
    logit_floor: float = 0.0,
) -> Comparison:
    """Element-wise comparison. Non-finite values must match exactly in place (and sign).

    NaN where the reference is finite is a failure, never a number to average away.
    `logit_floor` (tolerance.logit_rounding_floor): the baseline rule uses
    max(baseline_error, logit_floor), the error that storing the logits in the dtype implies.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    total = int(expected.size)
    if actual.shape != expected.shape:
        return Comparison(
            name, False, None, None, total, total, None,
            f"shape {tuple(actual.shape)} where the reference has {tuple(expected.shape)}",
        )  # fmt: skip
    exp_nan, act_nan = np.isnan(expected), np.isnan(actual)
    exp_inf, act_inf = np.isinf(expected), np.isinf(actual)
    finite = ~(exp_nan | exp_inf)
    placement = (exp_nan != act_nan) | (exp_inf != act_inf) | (exp_inf & (actual != expected))
    diff = np.where(finite & ~act_nan & ~act_inf, np.abs(actual - expected), 0.0)
    max_abs = float(diff.max()) if total else 0.0
    scale = np.abs(expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(finite & (scale > 0), diff / scale, 0.0)
    max_rel = float(rel.max()) if total else 0.0
    bad = placement | (finite & (diff > tol.atol + tol.rtol * scale))
    mismatches = int(bad.sum())
    ok = mismatches == 0
    message = ""
    budget = None
    if tol.baseline_factor and baseline_error is not None:
        magnitude = float(np.abs(expected[finite]).max()) if finite.any() else 0.0
        budget = tol.baseline_factor * max(baseline_error, logit_floor) + tol.floor(magnitude)
    if not ok and not placement.any() and budget is not None and max_abs <= budget:
        ok = True
        message = f"within {tol.baseline_factor:g}x same-dtype baseline error"
    if not ok:
        message = _failure_message(
            actual, expected, tol, bad, placement, diff, rel, baseline_error, budget
        )
        if budget is not None and logit_floor > baseline_error:
            message += f" Logit-rounding floor {_num(logit_floor)} (above the baseline error)."
    return Comparison(
        name, ok, max_abs, max_rel, 0 if ok else mismatches, total,
        None if ok else _first(bad), message,
    )  # fmt: skip


def _num(value: float) -> str:
    """A plain number for people: 0.49, nan, -inf (never np.float64(...))."""
    value = float(value)
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _count(n: int, total: int) -> str:
    return f"{n} of {total}"


def _failure_message(
    actual: np.ndarray,
    expected: np.ndarray,
    tol: Tolerance,
    bad: np.ndarray,
    placement: np.ndarray,
    diff: np.ndarray,
    rel: np.ndarray,
    baseline_error: float | None,
    budget: float | None,
) -> str:
    """One paragraph in the style of torch.testing.assert_close: counts, greatest differences
    with their index, what was allowed, and non-finite placement worded plainly.

    Greatest differences are over positions where both values are finite, so a NaN never hides
    (or inflates) the numeric error; non-finite mismatches are counted next to them.
    """
    total = int(expected.size)
    shape = expected.shape
    n_bad = int(bad.sum())
    parts = [f"Mismatched elements: {n_bad} / {total} ({100.0 * n_bad / max(total, 1):.1f}%)."]
    exp_nan, act_nan = np.isnan(expected), np.isnan(actual)
    exp_inf, act_inf = np.isinf(expected), np.isinf(actual)
    exp_fin, act_fin = ~(exp_nan | exp_inf), ~(act_nan | act_inf)
    # Plain wording for each kind of misplaced non-finite value; counts out of the positions
    # where the reference has that kind of value, so "192 of 192" reads as "every one".
    kinds = [
        ("NaN where the reference is finite", act_nan & exp_fin, exp_fin),
        ("Inf where the reference is finite", act_inf & exp_fin, exp_fin),
        ("A number where the reference is NaN", ~act_nan & exp_nan, exp_nan),
        ("A different value where the reference is Inf", exp_inf & (actual != expected), exp_inf),
    ]
    for label, where, among in kinds:
        if where.any():
            parts.append(f"{label}: {_count(int(where.sum()), int(among.sum()))}.")
    if placement.any():
        first = _index(int(np.flatnonzero(placement)[0]), shape)
        parts.append(
            f"First misplaced non-finite value at index {first}: "
            f"got {_num(actual[first])}, reference {_num(expected[first])}."
        )
    both = exp_fin & act_fin
    if both.any():
        flat_abs = int(np.argmax(np.where(both, diff, -1.0)))
        flat_rel = int(np.argmax(np.where(both, rel, -1.0)))
        i_abs, i_rel = _index(flat_abs, shape), _index(flat_rel, shape)
        parts.append(
            f"Greatest absolute difference: {_num(diff.flat[flat_abs])} at index {i_abs} "
            f"(got {_num(actual[i_abs])}, reference {_num(expected[i_abs])}; "
            f"allowed there {_num(tol.atol + tol.rtol * abs(expected[i_abs]))}). "
            f"Greatest relative difference: {_num(rel.flat[flat_rel])} at index {i_rel}."
        )
        if placement.any():
            parts[-1] = parts[-1][:-1] + " (over the positions where both are finite)."
    parts.append(f"Tolerance: {tol.describe()}.")
    if budget is not None and baseline_error is not None:
        parts.append(f"Same-dtype baseline error {_num(baseline_error)}, budget {_num(budget)}.")
    return " ".join(parts)


def baseline_error(baseline: np.ndarray, expected: np.ndarray) -> float:
    """max |baseline - expected| over positions where both are finite."""
    both = np.isfinite(baseline) & np.isfinite(expected)
    if not both.any():
        return 0.0
    return float(np.abs(baseline - expected)[both].max())
