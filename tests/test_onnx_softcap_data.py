"""The ONNX Attention backend tests with `softcap` (issue 14 item 10): imported as
`scores.softcap` cases, and ONNX's expected outputs for them agree with an independent float64
formulation (besides the reference's own agreement, tests/test_importers.py).

The formulation: logits = scale * Q K^T; capped = c * tanh(logits / c); + the mask (boolean
attn_mask, is_causal, left window; -inf entries stay -inf); softmax; @ V. The cap comes
before the mask. Capping after the mask, or not capping, disagrees (shown below), so the check
can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from conformance.peers.importers import (  # noqa: E402
    Skipped,
    _attributes,
    _f64,
    _heads,
    convert_onnx,
    onnx_testcases,
)


def _softcap_tests() -> list:
    out = []
    for test in onnx_testcases():
        nodes = [n for n in test.model.graph.node if n.op_type == "Attention"]
        if nodes and float(_attributes(nodes[0]).get("softcap", 0.0)) > 0:
            out.append((test, nodes[0]))
    return out


@pytest.fixture(scope="module")
def softcap_tests() -> list:
    return _softcap_tests()


def _attention(test, node, cap: str) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(this formulation's output, ONNX's expected output), both [B, H, T, V]."""
    a = _attributes(node)
    c = float(a["softcap"])
    graph = test.model.graph
    inputs, outputs = test.data_sets[0]
    feeds = {i.name: x for i, x in zip(graph.input, inputs, strict=True)}
    slots = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    by = {s: feeds[n] for s, n in zip(slots, node.input, strict=False) if n}
    assert "nonpad_kv_seqlen" not in by  # not used by these tests; the offset below assumes it
    y = _f64({o.name: x for o, x in zip(graph.output, outputs, strict=True)}[node.output[0]])
    q, k, v = (_f64(by[s]) for s in ("Q", "K", "V"))
    if q.ndim == 3:  # [B, L, heads*d] -> [B, heads, L, d], as the op splits them
        h, g = int(a["q_num_heads"]), int(a["kv_num_heads"])
        q, k, v, y = _heads(q, h), _heads(k, g), _heads(v, g), _heads(y, h)
    if "past_key" in by:
        k = np.concatenate([_f64(by["past_key"]), k], axis=2)
        v = np.concatenate([_f64(by["past_value"]), v], axis=2)
    h, g = q.shape[1], k.shape[1]
    k, v = np.repeat(k, h // g, axis=1), np.repeat(v, h // g, axis=1)
    t, s = q.shape[2], k.shape[2]
    scale = float(np.float32(a.get("scale", 1 / np.sqrt(q.shape[-1]))))
    logits = scale * q @ k.swapaxes(-1, -2)
    bias = np.zeros((t, s))
    if "attn_mask" in by:
        am = np.asarray(by["attn_mask"])
        pad = s - am.shape[-1]
        if pad:  # the op pads a short mask with False / -inf
            widths = [(0, 0)] * (am.ndim - 1) + [(0, pad)]
            am = np.pad(am, widths, constant_values=False if am.dtype == bool else -np.inf)
        bias = np.where(am, 0.0, -np.inf) if am.dtype == bool else _f64(am)
    i, j = np.arange(t)[:, None], np.arange(s)[None, :]
    offset = s - t if "past_key" in by else 0
    if a.get("is_causal"):
        bias = bias + np.where(j <= i + offset, 0.0, -np.inf)
    if int(a.get("left_window_size", -1)) >= 0:
        bias = bias + np.where(j >= i + offset - int(a["left_window_size"]), 0.0, -np.inf)
    if cap == "before-mask":
        z = c * np.tanh(logits / c) + bias
    elif cap == "after-mask":
        z = c * np.tanh((logits + bias) / c)  # tanh(-inf) = -1: masked keys come back
    else:
        z = logits + bias
    top = z.max(axis=-1, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    # A row with no visible key: ONNX's convention is zeros (see docs/peer-suites.md).
    weights = np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)
    return weights @ v, y


def test_every_softcap_test_is_imported_with_its_cap(softcap_tests: list) -> None:
    """No backend test is left out any more; each softcap test carries its cap."""
    converted = list(map(convert_onnx, onnx_testcases()))
    assert not [r for r in converted if isinstance(r, Skipped)]
    caps = {r.test: r.entry.get("scores", {}).get("softcap") for r in converted}
    for test, node in softcap_tests:
        assert caps[test.name] == float(_attributes(node)["softcap"]), test.name
    assert sum(cap is not None for cap in caps.values()) == len(softcap_tests) == 11


def test_onnx_softcap_outputs_match_cap_before_mask(softcap_tests: list) -> None:
    assert len(softcap_tests) == 11
    for test, node in softcap_tests:
        ours, expected = _attention(test, node, "before-mask")
        # float32 data: ONNX's expected outputs are float32 roundings (measured max 1.5e-7).
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=test.name)


@pytest.mark.parametrize("cap", ["after-mask", "none"])
def test_the_check_can_fail(softcap_tests: list, cap: str) -> None:
    errors = [np.abs(np.subtract(*_attention(t, n, cap))).max() for t, n in softcap_tests]
    assert max(errors) > 1e-3
