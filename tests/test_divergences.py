"""Divergence verification: compute_dtype against its own dtype's baseline; several composed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import Divergence
from conformance.adapter_api.plugin import kernel_adapter
from conformance.spec import load_spec
from conformance.verdicts.compare import compare
from conformance.verdicts.evaluate import ReferenceCache, evaluate
from conformance.verdicts.tolerance import Tolerance, tolerance_for

SPECS = Path(__file__).resolve().parent.parent / "specs"
BASIC_KERNEL_F32 = [
    c for c in load_spec(SPECS / "basic.yaml") if c.mode == "kernel" and c.dtype == "float32"
]
MASKED = {c.id: c for c in load_spec(SPECS / "fully_masked.yaml")}

COMPUTES_BF16 = Divergence(
    id="computes-bfloat16",
    reason="casts float32 inputs to bfloat16 and computes there",
    dtypes=frozenset({"float32"}),
    compute_dtype="bfloat16",
)


def _torch_bf16(scale_it: bool):  # noqa: ANN202
    """A real runtime that computes in bfloat16: torch SDPA on bfloat16 tensors."""

    @kernel_adapter(name="test.torch-bf16", arrays="torch", divergences=[COMPUTES_BF16])
    def bf16_sdpa(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        import torch.nn.functional as F

        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
        m = None if mask is None else mask.bfloat16()
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, scale=scale if scale_it else 1.0, enable_gqa=True
        )
        return out.float()

    return bf16_sdpa()


def test_bfloat16_runtime_verified_against_the_bfloat16_baseline() -> None:
    pytest.importorskip("torch")
    adapter, cache = _torch_bf16(scale_it=True), ReferenceCache()
    adapter.setup()
    records = [evaluate(adapter, case, "cpu", cache) for case in BASIC_KERNEL_F32]
    assert {r["verdict"] for r in records} == {"diverges"}, [r["message"] for r in records]
    assert all("output match at bfloat16 tolerance" in r["message"] for r in records)
    # The regression: bfloat16's fixed rule alone (what was checked before) rejects most of
    # these correct bfloat16 results (3 of 11 passed it when measured); the bfloat16 baseline
    # rule accepts them.
    fixed = tolerance_for("bfloat16")
    fixed = Tolerance(fixed.rtol, fixed.atol)
    rejected = 0
    for case in BASIC_KERNEL_F32:
        out = adapter.run(case, cache.inputs(case), "cpu")["output"]
        expected = cache.reference(case, case.mask.fully_masked_rows)["output"]
        rejected += not compare("output", out, expected, fixed).ok
    assert rejected >= 1


def test_wrong_bfloat16_runtime_still_fails() -> None:
    pytest.importorskip("torch")
    adapter, cache = _torch_bf16(scale_it=False), ReferenceCache()
    adapter.setup()
    record = evaluate(adapter, BASIC_KERNEL_F32[-1], "cpu", cache)
    assert record["verdict"] == "fail"
    assert "the declared divergence 'computes-bfloat16' does not explain it" in record["message"]


def _numpy_attention(q, k, v, mask, scale, dtype, masked_zero: bool):  # noqa: ANN001, ANN202
    q, k, v = (np.asarray(a, dtype) for a in (q, k, v))
    r = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
    logits = np.einsum("bhtk,bhsk->bhts", q, k) * dtype(scale)
    if mask is not None:
        logits = logits + np.asarray(mask, dtype)
    dead = ~np.isfinite(logits).any(-1, keepdims=True)
    logits = np.where(dead, 0, logits)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    if masked_zero:
        w = np.where(dead, 0, w)
    return np.einsum("bhts,bhsv->bhtv", w, v).astype(np.float64)


ZEROS = Divergence(
    id="masked-rows-zeros",
    reason="fully masked rows give zeros",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)
FLOAT32 = Divergence(
    id="computes-float32",
    reason="float64 inputs are computed in float32",
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)


def _adapter(dtype, masked_zero: bool):  # noqa: ANN001, ANN202
    @kernel_adapter(name="test.composed", divergences=[ZEROS, FLOAT32])
    def composed(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        return _numpy_attention(q, k, v, mask, scale, dtype, masked_zero)

    return composed()


def test_two_divergences_compose_and_each_is_verified() -> None:
    case = MASKED["fully_masked/masked-rows-kernel[float64]"]
    assert case.mask.fully_masked_rows != "zeros"
    record = evaluate(_adapter(np.float32, masked_zero=True), case, "cpu")
    assert record["verdict"] == "diverges", record["message"]
    assert [d["id"] for d in record["divergences"]] == ["masked-rows-zeros", "computes-float32"]
    assert record["divergence"]["id"] == "masked-rows-zeros"
    assert "fully masked rows match policy 'zeros'" in record["message"]
    assert "match at float32 tolerance" in record["message"]
    assert "did not show" not in record["message"]


def test_a_composed_divergence_that_did_not_show_is_said() -> None:
    case = MASKED["fully_masked/masked-rows-kernel[float64]"]
    record = evaluate(_adapter(np.float64, masked_zero=True), case, "cpu")
    assert record["verdict"] == "diverges", record["message"]
    assert "'computes-float32' did not show on this case" in record["message"]


def test_composition_does_not_explain_a_missing_effect() -> None:
    # float32 compute, but masked rows come out uniform (not zeros, not the case's NaN):
    # ZEROS + FLOAT32 cannot explain it.
    case = MASKED["fully_masked/masked-rows-kernel[float64]"]
    assert case.mask.fully_masked_rows == "nan"
    record = evaluate(_adapter(np.float32, masked_zero=False), case, "cpu")
    assert record["verdict"] == "fail"
    assert "divergences 'masked-rows-zeros + computes-float32' do not explain" in record["message"]
