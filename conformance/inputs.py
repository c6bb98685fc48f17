"""Deterministic inputs and canonical weights for a case.

Canonical weight layout (the multi-query paper's per-head projection tensors):
    wq [H, Dq, K]  bq [H, K]        query projection
    wk [G, Dk, K]  bk [G, K]        key projection (G = H multi-head, 1 multi-query)
    wv [G, Dv, V]  bv [G, V]        value projection
    wo [H, V, Do]  bo [Do]          output projection: Y = einsum("bhtv,hvd->btd", O, wo) + bo
    bias_k [G, K]  bias_v [G, V]    torch add_bias_kv's learned extra key/value position

Values are drawn in float64 and rounded to the case dtype *before* anyone sees them, so the
reference computes on exactly the numbers the implementation received.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .case import Case
from .dtypes import round_to, to_storage
from .seeding import stream

LAYER_WEIGHTS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")


@dataclass
class CaseInputs:
    """Arrays for one case, float64 (already rounded to the case dtype).

    Kernel mode: q [B, H, T, K], k [B, G, S, K], v [B, G, S, V].
    Layer mode: query [B, T, Dq] (or [B, *inner, Dq]), key [B, S, Dk], value [B, S, Dv] and
    the canonical weights. For self-attention, key and value are the query array itself.
    Gradient cases also hold grad_output, the upstream gradient (the output's shape).
    """

    dtype: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def native(self, name: str) -> np.ndarray:
        """An input or weight in the case dtype's storage form (what adapters hand over)."""
        value = self.arrays[name] if name in self.arrays else self.weights[name]
        return to_storage(value, self.dtype)


def _normal(key: str, name: str, shape: tuple[int, ...], std: float, dtype: str) -> np.ndarray:
    return round_to(std * stream(key, name).standard_normal(shape), dtype)


def make_inputs(case: Case) -> CaseInputs:
    s, key, dt = case.shape, case.data_key, case.dtype
    out = CaseInputs(dtype=dt)
    if case.mode == "kernel":
        out.arrays["q"] = _normal(key, "q", (s.batch, s.num_heads, s.query_len, s.key_dim), 1, dt)
        out.arrays["k"] = _normal(key, "k", (s.batch, s.num_kv_heads, s.kv_len, s.key_dim), 1, dt)
        out.arrays["v"] = _normal(key, "v", (s.batch, s.num_kv_heads, s.kv_len, s.value_dim), 1, dt)
        return _with_grad_output(case, out, (s.batch, s.num_heads, s.query_len, s.value_dim))

    query_shape = (s.batch, *(s.query_shape or (s.query_len,)), s.query_dim)
    out.arrays["query"] = _normal(key, "query", query_shape, 1, dt)
    if case.self_attention:
        out.arrays["key"] = out.arrays["value"] = out.arrays["query"]
    else:
        kv_shape = s.kv_shape or (s.kv_len,)
        out.arrays["key"] = _normal(key, "key", (s.batch, *kv_shape, s.key_input_dim), 1, dt)
        out.arrays["value"] = _normal(key, "value", (s.batch, *kv_shape, s.value_input_dim), 1, dt)
    h, g = s.num_heads, s.num_kv_heads
    shapes = {
        "wq": ((h, s.query_dim, s.key_dim), s.query_dim**-0.5),
        "wk": ((g, s.key_input_dim, s.key_dim), s.key_input_dim**-0.5),
        "wv": ((g, s.value_input_dim, s.value_dim), s.value_input_dim**-0.5),
        "wo": ((h, s.value_dim, s.output_dim), (h * s.value_dim) ** -0.5),
    }
    for name, (shape, std) in shapes.items():
        out.weights[name] = _normal(key, name, shape, std, dt)
    biases = {"bq": (h, s.key_dim), "bk": (g, s.key_dim), "bv": (g, s.value_dim)}
    biases["bo"] = (s.output_dim,)
    for name, shape in biases.items():
        if case.use_bias:
            out.weights[name] = _normal(key, name, shape, 0.1, dt)
        else:
            out.weights[name] = np.zeros(shape)
    if case.add_bias_kv:
        out.weights["bias_k"] = _normal(key, "bias_k", (g, s.key_dim), 1, dt)
        out.weights["bias_v"] = _normal(key, "bias_v", (g, s.value_dim), 1, dt)
    return _with_grad_output(case, out, (*query_shape[:-1], s.output_dim))


def _with_grad_output(case: Case, out: CaseInputs, output_shape: tuple[int, ...]) -> CaseInputs:
    """Gradient cases: the upstream gradient dL/dY, shaped like the output, in the case dtype.

    Its own stream, so adding `gradients: true` to a case leaves every other array unchanged.
    """
    if case.gradients:
        out.arrays["grad_output"] = _normal(
            case.data_key, "grad_output", output_shape, 1, case.dtype
        )
    return out
