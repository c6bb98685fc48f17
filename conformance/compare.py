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
) -> Comparison:
    """Element-wise comparison. Non-finite values must match exactly in place (and sign).

    NaN where the reference is finite is a failure, never a number to average away.
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
    if not ok and not placement.any() and tol.baseline_factor and baseline_error is not None:
        magnitude = float(np.abs(expected[finite]).max()) if finite.any() else 0.0
        budget = tol.baseline_factor * baseline_error + tol.floor(magnitude)
        if max_abs <= budget:
            ok = True
            message = f"within {tol.baseline_factor:g}x same-dtype baseline error"
    if not ok:
        first = _first(bad)
        if placement.any():
            where = _first(placement)
            n_nan = int((act_nan & finite).sum())
            message = (
                f"{int(placement.sum())} non-finite value(s) misplaced, first at {where}: "
                f"got {actual[where]!r}, reference {expected[where]!r}"
            )
            if n_nan:
                message += f" ({n_nan} NaN where the reference is finite)"
        else:
            message = (
                f"{mismatches}/{total} elements differ, first at {first}: got "
                f"{actual[first]:.9g}, reference {expected[first]:.9g}; max abs error "
                f"{max_abs:.3g} ({tol.describe()})"
            )
            if tol.baseline_factor and baseline_error is not None:
                magnitude = float(np.abs(expected[finite]).max()) if finite.any() else 0.0
                budget = tol.baseline_factor * baseline_error + tol.floor(magnitude)
                message += f"; same-dtype baseline error {baseline_error:.3g}, budget {budget:.3g}"
    return Comparison(
        name, ok, max_abs, max_rel, 0 if ok else mismatches, total,
        None if ok else _first(bad), message,
    )  # fmt: skip


def baseline_error(baseline: np.ndarray, expected: np.ndarray) -> float:
    """max |baseline - expected| over positions where both are finite."""
    both = np.isfinite(baseline) & np.isfinite(expected)
    if not both.any():
        return 0.0
    return float(np.abs(baseline - expected)[both].max())
