"""Calling conventions users have: bool mask + separate bias, separate in/out layouts, packed
QKV kernels, fused qkv projections, bias on some projections only (conformance.plugin)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import shipped_cases

from conformance.adapter_api.plugin import kernel_adapter, layer_adapter
from conformance.verdicts.evaluate import ReferenceCache, evaluate

CASES = [c for c in shipped_cases() if c.dtype == "float64"]
# The first six, found lazily: tagging every case (the large tier's long masks) takes a minute.
BIAS_KERNEL = list(
    itertools.islice((c for c in CASES if c.mode == "kernel" and "attn-bias" in c.features), 6)
)
BASIC_KERNEL = [c for c in CASES if c.family == "basic" and c.mode == "kernel"]
WEIGHTS_LAYER = [
    c
    for c in CASES
    if c.family in ("basic", "weights", "cross", "torch_extras") and c.mode == "layer"
]


def _softmax_attend(q, k, v, logits_extra):  # noqa: ANN001, ANN202
    """q [B,H,T,K], k [B,G,S,K], v [B,G,S,V]; logits_extra additive [B,H,T,S] or 0."""
    r = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
    logits = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(q.shape[-1]) + logits_extra
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bhsv->bhtv", w / w.sum(-1, keepdims=True), v)


def _verdicts(adapter, cases) -> dict[str, str]:  # noqa: ANN001
    cache = ReferenceCache()
    out = {c.id: evaluate(adapter, c, "cpu", cache) for c in cases}
    bad = {k: r["message"] for k, r in out.items() if r["verdict"] in ("fail", "error")}
    assert not bad, bad
    return {k: r["verdict"] for k, r in out.items()}


def test_bool_mask_plus_separate_bias() -> None:
    @kernel_adapter(name="test.bool-and-bias", mask="attend", drop={"scale"})
    def attn(q, k, v, mask, *, bias):  # noqa: ANN001, ANN202
        assert mask is None or mask.dtype == bool
        extra = 0.0 if bias is None else bias
        if mask is not None:
            extra = np.where(mask, extra, -np.inf)
        return _softmax_attend(q, k, v, extra)

    assert "attn-bias" in attn.declaration.features
    verdicts = _verdicts(attn(), [c for c in BIAS_KERNEL if "scale" not in c.features])
    assert "pass" in verdicts.values()

    @kernel_adapter(name="test.bool-ignores-bias", mask="attend", drop={"scale"})
    def ignores(q, k, v, mask, *, bias):  # noqa: ANN001, ANN202
        return _softmax_attend(q, k, v, 0.0 if mask is None else np.where(mask, 0.0, -np.inf))

    case = next(c for c in BIAS_KERNEL if "scale" not in c.features)
    assert evaluate(ignores(), case, "cpu")["verdict"] == "fail"


def test_separate_input_and_output_layouts() -> None:
    @kernel_adapter(name="test.in-bhtk-out-bthk", layout="BHTK", out_layout="BTHK", drop={"scale"})
    def attn(q, k, v, mask):  # noqa: ANN001, ANN202
        out = _softmax_attend(q, k, v, 0.0 if mask is None else mask)
        return np.swapaxes(out, 1, 2)  # [B,T,H,V]

    assert set(_verdicts(attn(), BASIC_KERNEL).values()) == {"pass"}


def test_packed_qkv_kernel() -> None:
    @kernel_adapter(name="test.qkv-packed", qkv="packed", drop={"scale"})
    def attn(qkv, mask):  # noqa: ANN001, ANN202
        q, k, v = (np.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))  # [B,H,T,K] each
        return np.swapaxes(_softmax_attend(q, k, v, 0.0 if mask is None else mask), 1, 2)

    verdicts = _verdicts(attn(), BASIC_KERNEL)
    assert "pass" in verdicts.values()


def _fused_layer(query, params, mask, case):  # noqa: ANN001, ANN202
    s = case.shape
    h, g, k_dim, v_dim = s.num_heads, s.num_kv_heads, s.key_dim, s.value_dim
    qkv = query @ params["qkv_weight"].T
    if params["qkv_bias"] is not None:
        qkv = qkv + params["qkv_bias"]
    q, k, v = np.split(qkv, [h * k_dim, h * k_dim + g * k_dim], axis=-1)
    b, t = query.shape[:2]
    q = q.reshape(b, t, h, k_dim).transpose(0, 2, 1, 3)
    k = k.reshape(b, t, g, k_dim).transpose(0, 2, 1, 3)
    v = v.reshape(b, t, g, v_dim).transpose(0, 2, 1, 3)
    heads = _softmax_attend(q, k, v, 0.0 if mask is None else mask)
    y = heads.transpose(0, 2, 1, 3).reshape(b, t, h * v_dim) @ params["out_weight"].T
    return y if params["out_bias"] is None else y + params["out_bias"]


def test_fused_qkv_projection_layer() -> None:
    @layer_adapter(name="test.fused-qkv", weights="fused", drop={"scale"})
    def layer(query, key, value, params, mask, *, case):  # noqa: ANN001, ANN202
        return _fused_layer(query, params, mask, case)

    assert "cross-attention" not in layer.declaration.features
    verdicts = _verdicts(layer(), WEIGHTS_LAYER)
    assert "pass" in verdicts.values() and "unsupported" in verdicts.values()


def test_bias_on_some_projections_only() -> None:
    @layer_adapter(
        name="test.no-out-bias", weights="fused", bias_on=("q", "k", "v"), drop={"scale"}
    )
    def layer(query, key, value, params, mask, *, case):  # noqa: ANN001, ANN202
        assert params["out_bias"] is None or not case.use_bias
        return _fused_layer(query, params, mask, case)

    verdicts = _verdicts(layer(), WEIGHTS_LAYER)
    by_bias = {c.id: c.use_bias for c in WEIGHTS_LAYER}
    assert all(v == "unsupported" for k, v in verdicts.items() if by_bias[k])
    assert any(v == "pass" for k, v in verdicts.items() if not by_bias[k])


def test_bad_convention_arguments() -> None:
    with pytest.raises(ValueError, match="out_layout"):
        kernel_adapter(lambda q, k, v, m: q, name="x", out_layout="THB")
    with pytest.raises(ValueError, match="bias_on"):
        layer_adapter(lambda *a: None, name="y", bias_on=("z",))
