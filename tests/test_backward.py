"""The oracle's analytic backward pass against central finite differences of its forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance.cases.inputs import make_inputs
from conformance.oracle.backward import gradient_names, gradients
from conformance.oracle.reference import attention
from conformance.spec import load_spec

SPEC = """\
version: 1
family: grad
defaults: {dtype: float64}
cases:
  - name: kernel-gqa-causal-bias
    mode: kernel
    shape: {query_len: 3, kv_len: 4, num_heads: 4, num_kv_heads: 2, key_dim: 3, value_dim: 2}
    mask: {causal: bottom-right, bias: {scale: 0.5}}
  - name: kernel-padding
    mode: kernel
    shape: {query_len: 3, kv_len: 5, num_heads: 2, key_dim: 2}
    mask: {key_padding: [2, 5]}
  - name: layer-self-bias-kv
    shape: {query_len: 3, num_heads: 2, key_dim: 2}
    mask: {causal: top-left}
    add_bias_kv: true
    add_zero_attn: true
  - name: layer-cross-mqa
    shape: {query_len: 3, kv_len: 4, num_heads: 2, num_kv_heads: 1, key_dim: 2,
            key_input_dim: 3, value_input_dim: 5, output_dim: 3}
  - name: layer-no-bias
    shape: {query_len: 2, num_heads: 2, key_dim: 2}
    bias: false
  - name: uniform-row
    mode: kernel
    shape: {query_len: 3, num_heads: 1, key_dim: 2}
    mask: {masked_rows: [[0, 1]], fully_masked_rows: uniform}
  - name: zeros-row
    mode: kernel
    shape: {query_len: 3, num_heads: 1, key_dim: 2}
    mask: {masked_rows: [[1, 2]], fully_masked_rows: zeros}
  - name: kernel-softcap-alibi-sink-gqa
    mode: kernel
    shape: {query_len: 3, kv_len: 4, num_heads: 4, num_kv_heads: 2, key_dim: 3, value_dim: 2}
    scale: 3.0
    scores: {softcap: 1.5, alibi: [0.5, 0.25, 0.125, 0.0625], sink: [0.3, -1.0, 2.0, 0.0]}
    mask: {causal: bottom-right}
  - name: kernel-rope-half-partial
    mode: kernel
    shape: {query_len: 3, kv_len: 5, num_heads: 2, key_dim: 6}
    rope: {style: half, rotary_dim: 4, offset: 3, theta: 100.0}
    mask: {causal: bottom-right}
  - name: layer-rope-interleaved-softcap
    shape: {query_len: 4, num_heads: 2, key_dim: 4}
    rope: {style: interleaved, theta: 10.0}
    scores: {softcap: 2.0}
  - name: layer-cross-rope-gqa
    shape: {query_len: 3, kv_len: 4, num_heads: 4, num_kv_heads: 2, key_dim: 2,
            key_input_dim: 3, value_input_dim: 5, output_dim: 3}
    rope: {style: half, offset: 1, theta: 50.0}
"""


def _cases(tmp_path: Path):
    path = tmp_path / "grad.yaml"
    path.write_text(SPEC)
    return load_spec(path)


def _numeric(case, inputs, name: str, eps: float = 1e-6) -> np.ndarray:  # noqa: ANN001
    key = name.removeprefix("grad_")
    store = inputs.arrays if key in inputs.arrays else inputs.weights
    x = store[key]  # for self-attention, key and value are this same array: a total derivative
    d_y = inputs.arrays["grad_output"]
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        old = x[index]
        x[index] = old + eps
        plus = float(np.nansum(attention(case, inputs)["output"] * d_y))
        x[index] = old - eps
        minus = float(np.nansum(attention(case, inputs)["output"] * d_y))
        x[index] = old
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("index", range(11))
def test_analytic_gradients_match_finite_differences(tmp_path: Path, index: int) -> None:
    case = _cases(tmp_path)[index]
    inputs = make_inputs(case)
    out = attention(case, inputs)["output"]
    inputs.arrays["grad_output"] = np.random.default_rng(index).standard_normal(out.shape)
    analytic = gradients(case, inputs)
    assert set(analytic) == set(gradient_names(case))
    for name in gradient_names(case):
        numeric = _numeric(case, inputs, name)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def test_nan_policy_rows_have_nan_gradients(tmp_path: Path) -> None:
    case = _cases(tmp_path)[5]
    import dataclasses

    case = dataclasses.replace(case, mask=dataclasses.replace(case.mask, fully_masked_rows="nan"))
    inputs = make_inputs(case)
    inputs.arrays["grad_output"] = np.ones_like(attention(case, inputs)["output"])
    grads = gradients(case, inputs)
    assert np.isnan(grads["grad_q"][0, 0, 1]).all()
    assert np.isfinite(grads["grad_q"][0, 0, 0]).all()
