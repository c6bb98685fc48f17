"""One (case, adapter, device): run it, compare with the reference, decide the verdict.

Verdicts:
    pass         every compared output within tolerance of the reference
    fail         numbers differ beyond tolerance (or NaN/Inf where the reference has none)
    diverges     a declared divergence applies and the result matches what it says happens
    unsupported  the implementation cannot express the case (with the reason)
    error        exception, wrong output shape/dtype, crash or timeout (with the message)
"""

from __future__ import annotations

import copy
import sys
import time
import traceback
from collections.abc import Mapping

import numpy as np

from ..adapter_api.adapter import Adapter, Unsupported
from ..cases.case import Case
from ..oracle.backward import gradient_names
from ..oracle.dropout import evaluate_training
from ..oracle.reference_cache import ReferenceCache
from ..paths import code_path
from ..running import profile
from ..sanitize import truncate
from .compare import Comparison, baseline_error, compare
from .divergences import record_entries, verify
from .tolerance import Tolerance, for_gradients, logit_rounding_floor, tolerance_for

VERDICTS = ("pass", "fail", "diverges", "unsupported", "error")
PREVIEW_LIMIT = 48  # largest T or S for which heatmap previews are stored in the record
MAX_MESSAGE_CHARS = 4000  # an exception text longer than this is cut in the record (issue 18)


def compared_names(case: Case) -> tuple[str, ...]:
    """Everything a case compares: its outputs, then its gradients (gradient cases)."""
    return tuple(case.compare) + (gradient_names(case) if case.gradients else ())


def _tolerance_of(name: str, tol: Tolerance) -> Tolerance:
    """Gradients follow the same policy, with the 3x baseline factor (tolerance.for_gradients)."""
    return for_gradients(tol) if name.startswith("grad_") else tol


def record_key(case_id: str, adapter: str, device: str) -> str:
    """The identity of a result; the dtype is part of the case."""
    return f"{case_id}|{adapter}|{device}"


def base_record(case: Case, adapter: str, device: str) -> dict:
    return {
        "case": case.id,
        "family": case.family,
        "tier": case.tier,
        "adapter": adapter,
        "device": device,
        "dtype": case.dtype,
        "mode": case.mode,
        "verdict": None,
        "max_abs_error": None,
        "max_rel_error": None,
        "atol": None,
        "rtol": None,
        "message": "",
        "duration_s": 0.0,
        "mismatches": None,
        "first_mismatch": None,
        "divergence": None,
        "compared": list(compared_names(case)),
        "features": sorted(case.features),
    }


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _preview(arr: np.ndarray | None) -> list | None:
    """A small 2-D slice (batch 0, head 0) for report heatmaps; NaN as null."""
    if arr is None:
        return None
    a = np.asarray(arr, dtype=np.float64)
    while a.ndim > 2:
        a = a[0]
    if a.ndim < 2 or max(a.shape) > PREVIEW_LIMIT:
        return None
    # 6 significant digits, not 6 decimals: output_error holds errors far below 1e-6 (float32
    # and float64 tolerances), which rounding to decimals would turn into zeros.
    return [[None if not np.isfinite(x) else float(f"{x:.6g}") for x in row] for row in a]


def _previews(outputs: dict, expected: dict) -> dict:
    """Small 2-D slices for the report's heatmaps (stored for non-passing results only)."""

    def err(name: str) -> list | None:
        if name not in outputs or np.shape(outputs[name]) != expected[name].shape:
            return None
        return _preview(np.abs(np.asarray(outputs[name], np.float64) - expected[name]))

    return {
        "reference_weights": _preview(expected["weights"]),
        "weights": _preview(outputs.get("weights")),
        "weights_error": err("weights"),
        "output_error": err("output"),
    }


def _check_output(name: str, value, case: Case) -> str | None:  # noqa: ANN001
    if not isinstance(value, np.ndarray):
        return f"'{name}' is a {type(value).__name__}, not a NumPy array"
    if not np.issubdtype(value.dtype, np.floating):
        return f"'{name}' has dtype {value.dtype}, not a floating dtype"
    return None


def _compare_all(
    case: Case,
    outputs: dict,
    expected: dict,
    tol: Tolerance,
    base: dict | None,
    names: tuple[str, ...],
    floors: dict[str, float] | None = None,
) -> list[Comparison]:
    results = []
    for name in names:
        b_err = baseline_error(base[name], expected[name]) if base is not None else None
        floor = (floors or {}).get(name, 0.0)
        results.append(
            compare(name, outputs[name], expected[name], _tolerance_of(name, tol), b_err, floor)
        )
    return results


def _fill_errors(record: dict, comparisons: list[Comparison], tol: Tolerance) -> None:
    abs_errs = [c.max_abs_error for c in comparisons if c.max_abs_error is not None]
    rel_errs = [c.max_rel_error for c in comparisons if c.max_rel_error is not None]
    record["max_abs_error"] = _finite_or_none(max(abs_errs)) if abs_errs else None
    record["max_rel_error"] = _finite_or_none(max(rel_errs)) if rel_errs else None
    record["atol"], record["rtol"] = tol.atol, tol.rtol
    record["tolerance"] = tol.describe() + ("" if tol.source == "policy" else f" ({tol.source})")
    failing = [c for c in comparisons if not c.ok]
    record["mismatches"] = sum(c.mismatches for c in failing)
    record["first_mismatch"] = (
        {"output": failing[0].name, "index": list(failing[0].first_mismatch)}
        if failing and failing[0].first_mismatch is not None
        else None
    )


def evaluate(
    adapter: Adapter, case: Case, device: str, cache: ReferenceCache | None = None
) -> dict:
    """Run one case on one adapter and device; return the result record (JSON-ready)."""
    cache = cache or ReferenceCache()
    decl = adapter.declaration
    record = base_record(case, decl.name, device)
    reason = decl.unsupported_reason(case)
    if reason:
        record.update(verdict="unsupported", message=reason)
        return record
    if case.dropout is not None and case.dropout.training:
        # many seeded draws, checked statistically
        return evaluate_training(adapter, case, device, cache, record)

    with profile.phase("inputs"):
        inputs = cache.inputs(case)
        private = copy.deepcopy(inputs)
    # issue 18: the reference is computed before the adapter runs, and the adapter gets a
    # private copy (deepcopy keeps self-attention's key/value aliasing the query), so one
    # that writes into its inputs can corrupt neither the reference nor another adapter's run.
    with profile.phase("reference"):
        cache.reference(case, case.mask.fully_masked_rows)
    start = time.perf_counter()
    try:
        outputs = adapter.run(case, private, device)
    except Unsupported as error:
        record.update(verdict="unsupported", message=f"{decl.name}: {error}")
        return record
    except (Exception, SystemExit) as error:  # noqa: BLE001 - an implementation's exception is a result
        last = traceback.extract_tb(error.__traceback__)[-1:]
        # No machine paths in results (paths.py): two machines' results diff cleanly.
        where = f" (at {code_path(last[0].filename)}:{last[0].lineno})" if last else ""
        message = f"{type(error).__name__}: {error}"
        if len(message) > MAX_MESSAGE_CHARS:  # the full text goes to the worker's log
            print(f"{case.id} [{decl.name}]: {message}", file=sys.stderr)
            message = truncate(message, MAX_MESSAGE_CHARS)
        record.update(verdict="error", message=f"{message}{where}")
        record["duration_s"] = time.perf_counter() - start
        return record
    record["duration_s"] = time.perf_counter() - start
    if not isinstance(outputs, Mapping):
        record.update(
            verdict="error",
            message=f"adapter returned {type(outputs).__name__}, not a mapping of output names "
            "to arrays (e.g. {'output': array})",
        )
        return record

    names = compared_names(case)
    for name in names:
        if name not in outputs:
            record.update(verdict="error", message=f"adapter returned no '{name}' output")
            return record
        problem = _check_output(name, outputs[name], case)
        if problem:
            record.update(verdict="error", message=problem)
            return record
    notes = []
    for name in names:
        got = outputs[name].dtype
        if np.finfo(got).bits < (64 if case.dtype == "float64" else 16):
            notes.append(f"'{name}' came back as {got} for a {case.dtype} case")

    divergences = decl.divergences_for(case, device)
    divergence = divergences[0] if divergences else None
    tol = tolerance_for(case.dtype, decl.tolerance_override(case.dtype))
    policy = case.mask.fully_masked_rows
    low = tol.baseline_factor is not None
    with profile.phase("reference"):
        expected = cache.reference(case, policy)
    for name in names:
        if outputs[name].shape != expected[name].shape:
            record.update(
                verdict="error",
                message=f"'{name}' has shape {tuple(outputs[name].shape)}; the case needs "
                f"{tuple(expected[name].shape)}",
            )
            return record
    with profile.phase("reference"):
        base = cache.reference(case, policy, same_dtype=True) if low else None
    with profile.phase("compare"):
        inputs = cache.inputs(case)

        def floors(dtype: str) -> dict[str, float]:
            return logit_rounding_floor(case, inputs, dtype)

        comparisons = _compare_all(case, outputs, expected, tol, base, names, floors(case.dtype))
    _fill_errors(record, comparisons, tol)
    if case.gradients and tol.baseline_factor is not None:
        record["tolerance"] += f"; gradients: {for_gradients(tol).baseline_factor:g}x baseline"

    if all(c.ok for c in comparisons):
        record["verdict"] = "pass"
        if "weights" in outputs:  # side-by-side heatmaps; error maps only for non-passing results
            record["preview"] = {
                "reference_weights": _preview(expected["weights"]),
                "weights": _preview(outputs["weights"]),
            }
        if divergence is not None:
            for d in divergences:
                notes.append(f"declared divergence '{d.id}' did not show on this case")
        record["message"] = "; ".join(notes)
        return record

    failed = "; ".join(c.summary() for c in comparisons if not c.ok)
    record["preview"] = _previews(outputs, expected)
    if divergence is None:
        record["verdict"] = "fail"
        record["message"] = "; ".join([failed, *notes])
        return record
    record["divergence"] = record_entries(divergences)[0]
    if len(divergences) > 1:
        record["divergences"] = record_entries(divergences)
    verified, how = verify(divergences, case, outputs, cache.at, tol, names, floors)
    ids = " + ".join(d.id for d in divergences)
    if verified:
        record["verdict"] = "diverges"
        reasons = "; ".join(f"{d.id}: {d.reason}" for d in divergences)
        record["message"] = f"{reasons} [{how}]"
    else:
        record["verdict"] = "fail"
        what = "divergence '{}' does" if len(divergences) == 1 else "divergences '{}' do"
        record["message"] = (
            f"{failed}; the declared {what.format(ids)} not explain it either: {how}"
        )
    return record
