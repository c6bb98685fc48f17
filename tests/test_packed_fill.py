"""Issue 14 items 5 and 7: packed sequences, padding sides and finite masking values.

The reference is proven against independent formulations: a packed row equals running each
segment on its own and concatenating; left padding equals slicing the valid keys out; a finite
fill is the same as -inf wherever a row keeps a visible key, and a row whose every key carries
it is the plain softmax of logits + fill ("fill" policy). Masks are built per block of query
rows, so block-wise and whole masks must agree.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conformance.cases.case import Case, Mask, Shape
from conformance.cases.inputs import make_inputs
from conformance.cases.masks import (
    build_mask,
    combined_additive,
    cu_seqlens,
    fill_value,
    segment_ids,
)
from conformance.oracle.reference import attention, dot_product_attention


def kernel_case(t: int, s: int | None = None, *, b: int = 2, h: int = 2, g: int | None = None,
                dtype: str = "float64", **mask) -> Case:  # fmt: skip
    s = s or t
    shape = Shape(
        batch=b, query_len=t, kv_len=s, num_heads=h, num_kv_heads=g or h, key_dim=4,
        value_dim=4, query_dim=4 * h, key_input_dim=4 * h, value_input_dim=4 * h,
        output_dim=4 * h,
    )  # fmt: skip
    return Case(
        id=f"t/packed[{t},{s},{sorted(mask)}]", family="t", name="packed", mode="kernel",
        shape=shape, mask=Mask(**mask), dtype=dtype,
    )  # fmt: skip


def arrays(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = make_inputs(case).arrays
    return a["q"], a["k"], a["v"]


@pytest.mark.parametrize("causal", [None, "top-left"])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (4, 1)])
def test_packed_row_equals_segments_run_alone(causal, heads) -> None:
    segments = ((3, 5, 2), (1, 9))
    case = kernel_case(10, h=heads[0], g=heads[1], causal=causal, segments=segments)
    q, k, v = arrays(case)
    out = attention(case, make_inputs(case))["output"]
    for b, lengths in enumerate(segments):
        start = 0
        for n in lengths:
            sl = slice(start, start + n)
            attend = np.tril(np.ones((n, n), dtype=bool))[None, None] if causal else None
            alone, _ = dot_product_attention(
                q[b : b + 1, :, sl], k[b : b + 1, :, sl], v[b : b + 1, :, sl],
                scale=case.effective_scale, attend=attend,
            )  # fmt: skip
            np.testing.assert_allclose(out[b : b + 1, :, sl], alone, rtol=1e-12, atol=1e-12)
            start += n


def test_segment_ids_and_cu_seqlens() -> None:
    case = kernel_case(6, segments=((1, 2, 3), (6,)))
    np.testing.assert_array_equal(segment_ids(case), [[0, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(cu_seqlens(case), [[0, 1, 3, 6], [0, 6, 6, 6]])


def test_left_key_padding_equals_the_valid_keys_alone() -> None:
    case = kernel_case(5, 7, key_padding=(4, 7), padding_side="left")
    q, k, v = arrays(case)
    out = attention(case, make_inputs(case))["output"]
    for b, n in enumerate((4, 7)):
        alone, _ = dot_product_attention(
            q[b : b + 1], k[b : b + 1, :, 7 - n :], v[b : b + 1, :, 7 - n :],
            scale=case.effective_scale,
        )  # fmt: skip
        np.testing.assert_allclose(out[b : b + 1], alone, rtol=1e-12, atol=1e-12)


def test_left_padding_mirrors_right_padding() -> None:
    """Reversing the key axis turns left padding into right padding (same visible set)."""
    left = kernel_case(6, key_padding=(2, 6), query_padding=(3, 6), padding_side="left")
    right = dataclasses.replace(left, mask=dataclasses.replace(left.mask, padding_side="right"))
    a_left, _ = build_mask(left)
    a_right, _ = build_mask(right)
    np.testing.assert_array_equal(a_left, a_right[:, :, ::-1, ::-1])


@pytest.mark.parametrize(
    "mask",
    [
        {"segments": ((130, 1, 169), (64, 64, 64, 108)), "causal": "top-left"},
        {
            "key_padding": (129, 300),
            "query_padding": (7, 300),
            "padding_side": "left",
            "causal": "top-left",
        },  # fmt: skip
    ],
)
def test_blockwise_masks_equal_the_whole_mask(mask) -> None:
    case = kernel_case(300, **mask)
    whole, _ = build_mask(case)
    blocks = [build_mask(case, (t0, min(t0 + 37, 300)))[0] for t0 in range(0, 300, 37)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=2), whole)


def test_fill_values_per_dtype() -> None:
    def value(fill, dtype):
        return fill_value(kernel_case(4, causal="top-left", fill=fill, dtype=dtype))

    assert value(-1e9, "float16") == -np.inf  # overflows, as `mask * -1e9` in float16 does
    assert value(-10000.0, "float16") == -10000.0
    assert value(-1e9, "float32") == -1e9
    assert value(-1e9, "bfloat16") == -998244352.0  # rounded to bfloat16
    assert value("finfo-min", "float16") == -65504.0
    assert value("finfo-min", "float32") == float(np.finfo(np.float32).min)
    assert value("finfo-min", "float64") == float(np.finfo(np.float64).min)
    assert value("finfo-min", "bfloat16") == -3.3895313892515355e38
    assert fill_value(kernel_case(4, causal="top-left")) == -np.inf


def plain_softmax_attention(q, k, v, additive, scale):  # noqa: ANN001, ANN201
    """The user's computation written out: softmax(q k^T * scale + mask) v, float64."""
    logits = np.einsum("bhtk,bhsk->bhts", q, k) * scale + additive
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.einsum("bhts,bhsv->bhtv", e / e.sum(axis=-1, keepdims=True), v)


@pytest.mark.parametrize("fill", [-1e9, -10000.0, "finfo-min"])
def test_finite_fill_equals_minus_inf_where_rows_keep_a_key(fill) -> None:
    case = kernel_case(5, 7, key_padding=(4, 7), causal="bottom-right", fill=fill)
    q, k, v = arrays(case)
    attend, bias = build_mask(case)
    additive = combined_additive(attend, bias, np.float64, fill=fill_value(case))
    assert np.all(additive[~np.broadcast_to(attend, additive.shape)] == fill_value(case))
    written = plain_softmax_attention(q, k, v, additive, case.effective_scale)
    out = attention(case, make_inputs(case))["output"]
    np.testing.assert_allclose(out, written, rtol=1e-12, atol=1e-12)
    no_fill = dataclasses.replace(case, mask=dataclasses.replace(case.mask, fill=None))
    np.testing.assert_array_equal(out, attention(no_fill, make_inputs(no_fill))["output"])


@pytest.mark.parametrize("fill", [-1e9, -10000.0, "finfo-min"])
def test_fill_policy_is_the_row_as_written(fill) -> None:
    """float64: a fully masked row is softmax(logits + fill) over every key: the unmasked
    softmax for -10000 (exp keeps the logits), nearly so for -1e9, uniform for finfo.min."""
    case = kernel_case(4, 6, key_padding=(0, 6), fill=fill)
    q, k, v = arrays(case)
    attend, bias = build_mask(case)
    additive = combined_additive(attend, bias, np.float64, fill=fill_value(case))
    written = plain_softmax_attention(q, k, v, additive, case.effective_scale)
    out = attention(case, make_inputs(case), masked_rows="fill")["output"]
    np.testing.assert_allclose(out, written, rtol=1e-12, atol=1e-12)
    uniform = attention(case, make_inputs(case), masked_rows="uniform")["output"]
    unmasked = attention(case, make_inputs(case), masked_rows="unmasked")["output"]
    if fill == "finfo-min":
        np.testing.assert_allclose(out, uniform, rtol=1e-12, atol=1e-12)
    elif fill == -10000.0:
        np.testing.assert_allclose(out, unmasked, rtol=1e-11, atol=1e-11)


def test_fill_policy_in_float32_swamps_the_logits() -> None:
    """-1e9 added in float32 leaves no logit (ulp 64): uniform; -10000 keeps them to ~1e-3."""
    c1 = kernel_case(4, 6, key_padding=(0, 6), fill=-1e9, dtype="float32")
    out = attention(c1, make_inputs(c1), masked_rows="fill")["output"]
    uniform = attention(c1, make_inputs(c1), masked_rows="uniform")["output"]
    np.testing.assert_allclose(out, uniform, rtol=1e-12, atol=1e-12)
    c2 = kernel_case(4, 6, key_padding=(0, 6), fill=-10000.0, dtype="float32")
    out = attention(c2, make_inputs(c2), masked_rows="fill")["output"][0]
    unmasked = attention(c2, make_inputs(c2), masked_rows="unmasked")["output"][0]
    assert 1e-6 < np.abs(out - unmasked).max() < 1e-2


def test_fill_overflowing_to_minus_inf_is_nan_as_written() -> None:
    case = kernel_case(4, 6, key_padding=(0, 6), fill=-1e9, dtype="float16")
    out = attention(case, make_inputs(case), masked_rows="fill")["output"]
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
