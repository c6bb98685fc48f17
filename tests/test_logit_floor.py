"""The logit-rounding floor of the baseline rule (conformance.tolerance.logit_rounding_floor).

It must change nothing at ordinary logits, let a correct float32 implementation that rounds its
logits differently pass at large logits, and still fail a real precision bug there.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.cases.inputs import make_inputs
from conformance.oracle.reference import attention, baseline, softmax_rows
from conformance.spec import load_specs, shipped_specs_dir
from conformance.verdicts.compare import baseline_error, compare
from conformance.verdicts.tolerance import logit_rounding_floor, tolerance_for

SPECS = shipped_specs_dir()


def _cases(name: str) -> dict:
    return {c.id: c for c in load_specs([SPECS / name])}


# Small cases where the floor may matter: built for large logits (they reach ~10^2), or with
# large values (ONNX's poison test puts 1000 in V, so the floor scales with it: 7.6e-5).
LARGE_LOGIT_SMALL_CASES = {
    "dtypes/sharp-kernel[float32]",
    "scale/sharp-kernel[float32]",
    "onnx_imported/attention-4d-softcap-neginf-mask-poison",
}


def test_the_floor_is_below_atol_on_small_float32_kernel_cases_with_ordinary_logits() -> None:
    tol = tolerance_for("float32")
    above = set()
    for spec in sorted(SPECS.glob("*.yaml")):
        for case in load_specs([spec]):
            if case.tier != "small" or case.dtype != "float32" or case.mode != "kernel":
                continue
            if logit_rounding_floor(case, make_inputs(case), "float32")["output"] >= tol.atol:
                above.add(case.id)
    assert above == LARGE_LOGIT_SMALL_CASES


def test_no_floor_for_float64() -> None:
    case = _cases("long_numerics.yaml")["long_numerics/scale-100.0[T=129,float64]"]
    assert logit_rounding_floor(case, make_inputs(case), "float64") == {}


def _float32_attention(case, inputs, logit_dtype) -> np.ndarray:  # noqa: ANN001
    """Attention with the logits stored in `logit_dtype`, the rest in float32."""
    q, k, v = (inputs.arrays[n].astype(np.float32) for n in "qkv")
    logits = np.einsum("bhtk,bhsk->bhts", q, k).astype(np.float32) * np.float32(
        case.effective_scale
    )
    logits = logits.astype(logit_dtype).astype(np.float64)
    probs = softmax_rows(logits, np.ones(logits.shape, dtype=bool))
    return np.einsum("bhts,bhsv->bhtv", probs, v.astype(np.float64))


@pytest.mark.parametrize("cid", ["scale-100.0[T=129,float32]", "scale-20.0[T=513,float32]"])
def test_large_logits_correct_passes_and_half_precision_logits_fail(cid: str) -> None:
    case = _cases("long_numerics.yaml")[f"long_numerics/{cid}"]
    inputs = make_inputs(case)
    expected = attention(case, inputs)["output"]
    b_err = baseline_error(baseline(case, inputs)["output"], expected)
    floor = logit_rounding_floor(case, inputs, "float32")["output"]
    tol = tolerance_for("float32")
    rng = np.random.default_rng(0)
    # A correct implementation whose logits carry one more float32 rounding than the baseline's.
    q = inputs.arrays["q"].astype(np.float32)
    k = inputs.arrays["k"].astype(np.float32)
    logits = np.einsum("bhtk,bhsk->bhts", q, k).astype(np.float32) * np.float32(
        case.effective_scale
    )
    nudged = logits.astype(np.float64) * (1 + rng.choice([-1.0, 1.0], logits.shape) * 2.0**-24)
    probs = softmax_rows(nudged.astype(np.float32).astype(np.float64), np.ones(logits.shape, bool))
    correct = np.einsum("bhts,bhsv->bhtv", probs, inputs.arrays["v"])
    assert compare("output", correct, expected, tol, b_err, floor).ok
    # A precision bug: logits kept in float16 (what a half-precision score buffer does).
    buggy = _float32_attention(case, inputs, np.float16)
    assert not compare("output", buggy, expected, tol, b_err, floor).ok
