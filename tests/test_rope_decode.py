"""Rotary embeddings with incremental decoding (issue 14 item 4): the float64 reference, which
rotates the whole sequence once (query t and key t at offset + t) under a causal mask, must
equal what a decoder does step by step: each step's new tokens are rotated at positions
offset + cache length + i, their keys join a cache of already-rotated keys (which keep their
absolute positions), and the step's queries attend to that cache. The step loop below is an
independent formulation: complex multiplication per pair, explicit chunks, a plain softmax."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.cases.inputs import make_inputs
from conformance.errors import SpecError
from conformance.oracle.reference import attention
from conformance.spec import load_spec

SPEC = """
version: 1
family: t
cases:
  - name: k-${style}-${prefix}-${chunk}
    mode: kernel
    shape: {batch: 2, query_len: 7, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    decode: {prefix: $prefix, steps: 2, chunk: $chunk}
    rope: {style: $style, rotary_dim: 6, offset: 30, theta: 100.0}
    matrix:
      style: [half, interleaved]
      prefix: [3]
      chunk: [2]
      dtype: [float64]
  - name: k1-${style}
    mode: kernel
    shape: {batch: 1, query_len: 5, num_heads: 2, key_dim: 4}
    decode: {prefix: 0, steps: 5}
    rope: {style: $style}
    matrix: {style: [half, interleaved], dtype: [float64]}
  - name: layer-${style}
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 2, num_kv_heads: 1, key_dim: 4}
    decode: {prefix: 2, steps: 4}
    rope: {style: $style, offset: 5}
    matrix: {style: [half, interleaved], dtype: [float64]}
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("rope_decode") / "t.yaml"
    path.write_text(SPEC)
    return {c.name: c for c in load_spec(path)}


def complex_rotate(x: np.ndarray, positions: np.ndarray, style: str, theta: float, d: int):
    """x [..., L, K]: pair i as a complex number times e^(j p theta^(-2i/d)); dims past d kept."""
    half = d // 2
    a, b = (x[..., :half], x[..., half:d]) if style == "half" else (x[..., 0:d:2], x[..., 1:d:2])
    z = (a + 1j * b) * np.exp(1j * np.outer(positions, theta ** (-2.0 * np.arange(half) / d)))
    out = x.copy()
    if style == "half":
        out[..., :half], out[..., half:d] = z.real, z.imag
    else:
        out[..., 0:d:2], out[..., 1:d:2] = z.real, z.imag
    return out


def step_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """q [B, H, n, K] the step's queries, the last n of the cache k/v [B, G, L, *]: causal."""
    n, length = q.shape[2], k.shape[2]
    r = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
    logits = scale * np.einsum("bhtk,bhsk->bhts", q, k)
    rows = np.arange(length - n, length)[:, None]
    logits = np.where(np.arange(length)[None, :] <= rows, logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.einsum("bhts,bhsv->bhtv", weights / weights.sum(axis=-1, keepdims=True), v)


def chunks(case) -> list[tuple[int, int]]:  # noqa: ANN001
    d = case.decode
    steps = [(t, t + d.chunk) for t in range(d.prefix, case.shape.query_len, d.chunk)]
    return ([(0, d.prefix)] if d.prefix else []) + steps


def decode_loop(case, inputs) -> np.ndarray:  # noqa: ANN001
    """Step by step, as a decoder with a cache: rotate the new tokens at offset + cache length."""
    rope, kd = case.rope, case.shape.key_dim
    d = rope.dims(kd)
    a, w = inputs.arrays, inputs.weights
    cache_k, cache_v, outs = [], [], []
    for start, stop in chunks(case):
        if case.mode == "kernel":
            q, k, v = (a[n][:, :, start:stop] for n in ("q", "k", "v"))
        else:
            x = a["query"][:, start:stop]
            q, k, v = (
                np.einsum("bld,ndk->bnlk", x, w[f"w{n}"]) + w[f"b{n}"][None, :, None] for n in "qkv"
            )
        cached = sum(c.shape[2] for c in cache_k)  # the cache length before this step
        assert cached == start
        positions = rope.offset + cached + np.arange(stop - start)
        q = complex_rotate(q, positions, rope.style, rope.theta, d)
        cache_k.append(complex_rotate(k, positions, rope.style, rope.theta, d))
        cache_v.append(v)
        heads = step_attention(
            q, np.concatenate(cache_k, axis=2), np.concatenate(cache_v, axis=2),
            case.effective_scale,
        )  # fmt: skip
        if case.mode == "layer":
            heads = np.einsum("bhtv,hvd->btd", heads, w["wo"]) + w["bo"]
        outs.append(heads)
    return np.concatenate(outs, axis=2 if case.mode == "kernel" else 1)


@pytest.mark.parametrize(
    "name",
    ["k-half-3-2", "k-interleaved-3-2", "k1-half", "k1-interleaved", "layer-half",
     "layer-interleaved"],
)  # fmt: skip
def test_reference_equals_the_step_loop(cases: dict, name: str) -> None:
    case = cases[name]
    inputs = make_inputs(case)
    expected = decode_loop(case, inputs)
    np.testing.assert_allclose(attention(case, inputs)["output"], expected, atol=1e-12)


def test_steps_without_the_offset_differ(cases: dict) -> None:
    """The loop is not vacuous: rotating each step's queries from position 0 (forgetting the
    cache length, a classic decode bug) gives another answer."""
    case = cases["k1-half"]
    inputs = make_inputs(case)
    a, rope = inputs.arrays, case.rope
    q = np.concatenate(
        [complex_rotate(a["q"][:, :, t : t + 1], np.array([0]), "half", rope.theta, 4)
         for t in range(5)], axis=2,
    )  # fmt: skip
    k = complex_rotate(a["k"], np.arange(5), "half", rope.theta, 4)
    wrong = np.concatenate(
        [step_attention(q[:, :, t : t + 1], k[:, :, : t + 1], a["v"][:, :, : t + 1],
                        case.effective_scale) for t in range(5)], axis=2,
    )  # fmt: skip
    assert np.max(np.abs(attention(case, inputs)["output"] - wrong)) > 1e-3


def test_decode_features(cases: dict) -> None:
    assert {"decode", "decode-chunked", "rope-half", "rope-partial"} <= cases["k-half-3-2"].features
    assert {"decode", "layer", "rope-interleaved"} <= cases["layer-interleaved"].features


def test_rope_with_a_decoded_encoder_memory_is_refused(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nfamily: t\ncases:\n  - name: m\n    mode: kernel\n"
        "    shape: {query_len: 4, kv_len: 6, num_heads: 2, key_dim: 8}\n"
        "    decode: {prefix: 2, steps: 2, memory: true}\n    rope: {style: half}\n"
    )
    with pytest.raises(SpecError, match="encoder memory") as err:
        load_spec(path)
    assert err.value.line == 8 and err.value.key == "rope"


CACHE_SPEC = """
version: 1
family: t
cases:
  - name: lengths-${style}
    mode: kernel
    shape: {batch: 3, query_len: 2, kv_len: 7, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    mask: {causal: bottom-right}
    rope: {style: $style, rotary_dim: 6, offset: 11, theta: 50.0}
    cache: {lengths: [7, 2, 5], page_size: 3}
    matrix: {style: [half, interleaved], dtype: [float64]}
  - name: lengths-one
    mode: kernel
    shape: {batch: 2, query_len: 1, kv_len: 5, num_heads: 2, key_dim: 4}
    rope: {style: half}
    cache: {lengths: [3, 5]}
    dtype: float64
"""


@pytest.fixture(scope="module")
def cache_cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("rope_cache") / "c.yaml"
    path.write_text(CACHE_SPEC)
    return {c.name: c for c in load_spec(path)}


def per_sequence_loop(case, inputs) -> np.ndarray:  # noqa: ANN001
    """Each sequence on its own, as a decoder with a cache of lengths[b] runs it: its T new
    queries at offset + lengths[b] - T + t, its lengths[b] cached keys at offset + s, every
    later slot unused; attention over those keys only (bottom-right causal when masked)."""
    rope, s = case.rope, case.shape
    d = rope.dims(s.key_dim)
    a = inputs.arrays
    out = np.zeros((s.batch, s.num_heads, s.query_len, s.value_dim))
    for b, n in enumerate(case.cache.lengths):
        q_pos = rope.offset + n - s.query_len + np.arange(s.query_len)
        q = complex_rotate(a["q"][b : b + 1], q_pos, rope.style, rope.theta, d)
        k = complex_rotate(a["k"][b : b + 1, :, :n], rope.offset + np.arange(n), rope.style,
                           rope.theta, d)  # fmt: skip
        out[b : b + 1] = step_attention(q, k, a["v"][b : b + 1, :, :n], case.effective_scale)
    return out


@pytest.mark.parametrize("name", ["lengths-half", "lengths-interleaved", "lengths-one"])
def test_per_sequence_positions_equal_each_sequence_alone(cache_cases: dict, name: str) -> None:
    case = cache_cases[name]
    assert {"rope-per-sequence", "cache-lengths"} <= case.features
    inputs = make_inputs(case)
    expected = per_sequence_loop(case, inputs)
    np.testing.assert_allclose(attention(case, inputs)["output"], expected, atol=1e-12)


def test_per_sequence_positions_are_not_one_alignment(cache_cases: dict) -> None:
    """Placing every sequence's queries at offset + S - T + t (one alignment for the batch,
    the bug per-sequence offsets exist to catch) changes the shorter sequences' rows."""
    import dataclasses

    from conformance.cases.rotary import query_positions

    case = cache_cases["lengths-half"]
    assert query_positions(case).tolist() == [[16, 17], [11, 12], [14, 15]]
    inputs = make_inputs(case)
    out = attention(case, inputs)["output"]
    uniform = dataclasses.replace(case, cache=None)  # keys beyond a length then count too
    wrong = attention(uniform, inputs)["output"]
    assert np.max(np.abs(out[1:] - wrong[1:])) > 1e-3
    np.testing.assert_allclose(out[0], wrong[0], atol=1e-12)  # the full-length sequence agrees
