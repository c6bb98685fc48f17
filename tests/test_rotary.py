"""The float64 reference for rotary position embeddings (conformance.rotary), proven against
independent formulations: complex multiplication for interleaved pairs, explicit 2x2 rotation
matrices in scalar loops for the whole attention, the fixed permutation that maps rotate-half
onto interleaved pairs, and RoPE's defining property (q_m . k_n depends only on m - n)."""

from __future__ import annotations

import cmath
import dataclasses
import math

import numpy as np
import pytest

from conformance.cases.inputs import make_inputs
from conformance.cases.rotary import (
    Rope,
    half_to_interleaved,
    inverse_frequencies,
    key_positions,
    query_positions,
    rotate,
    tables,
)
from conformance.oracle.reference import attention, baseline
from conformance.spec import load_spec
from conformance.verdicts.tolerance import POLICY

RNG = np.random.default_rng(14)


def _rotate(x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
    cos, sin = tables(rope, x.shape[-1], positions)
    return rotate(x, cos, sin, rope.style)


def test_interleaved_is_complex_multiplication() -> None:
    """Pair (2i, 2i + 1) as the complex number x_2i + j x_2i+1, times e^(j p theta^(-2i/d))."""
    rope = Rope(style="interleaved", theta=500.0)
    x = RNG.standard_normal((3, 5, 8))
    positions = np.array([0, 1, 7, 100, 4096])
    got = _rotate(x, positions, rope)
    for a in range(3):
        for p_index, p in enumerate(positions):
            for i in range(4):
                z = complex(x[a, p_index, 2 * i], x[a, p_index, 2 * i + 1])
                w = z * cmath.exp(1j * p * 500.0 ** (-2 * i / 8))
                assert got[a, p_index, 2 * i] == pytest.approx(w.real, abs=1e-12)
                assert got[a, p_index, 2 * i + 1] == pytest.approx(w.imag, abs=1e-12)


@pytest.mark.parametrize("rotary_dim", [None, 4, 6])
def test_half_is_interleaved_after_a_fixed_permutation(rotary_dim: int | None) -> None:
    """Rotate-half on x equals interleaved rotation on x's dims permuted by P (then P undone):
    the conversion a port between conventions must apply to the q/k weights."""
    kd = 10
    perm = half_to_interleaved(kd, rotary_dim)
    assert sorted(perm) == list(range(kd))
    x = RNG.standard_normal((2, 6, kd))
    positions = np.arange(3, 9)
    half = _rotate(x, positions, Rope(style="half", rotary_dim=rotary_dim))
    inter = _rotate(x[..., perm], positions, Rope(style="interleaved", rotary_dim=rotary_dim))
    np.testing.assert_allclose(inter, half[..., perm], atol=1e-13)
    # and the two conventions really differ (else the trap adapter could not fail)
    other = _rotate(x, positions, Rope(style="interleaved", rotary_dim=rotary_dim))
    assert np.max(np.abs(other - half)) > 0.1


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_dot_products_depend_only_on_relative_position(style: str) -> None:
    rope = Rope(style=style, rotary_dim=6)
    q, k = RNG.standard_normal(8), RNG.standard_normal(8)

    def score(m: int, n: int) -> float:
        qm = _rotate(q[None], np.array([m]), rope)[0]
        kn = _rotate(k[None], np.array([n]), rope)[0]
        return float(qm @ kn)

    for m, n in [(0, 0), (5, 2), (9, 3), (2, 7)]:
        for shift in (1, 17, 1000):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-10)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3
    assert score(0, 0) == pytest.approx(float(q @ k), abs=1e-12)  # position 0: no rotation


def test_partial_rotary_leaves_the_other_dims_and_keeps_norms() -> None:
    x = RNG.standard_normal((4, 12))
    y = _rotate(x, np.arange(4) + 3, Rope(rotary_dim=8))
    np.testing.assert_array_equal(y[:, 8:], x[:, 8:])
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1))
    np.testing.assert_allclose(inverse_frequencies(Rope(rotary_dim=8), 12),
                               [10000.0 ** (-i / 4) for i in range(4)])  # fmt: skip


def rotation_matrix_loop(x: np.ndarray, positions, rope: Rope) -> np.ndarray:
    """x [..., L, K]: each pair rotated by an explicit 2x2 matrix, pairs listed by convention."""
    kd = x.shape[-1]
    d = rope.dims(kd)
    pairs = [(i, i + d // 2) if rope.style == "half" else (2 * i, 2 * i + 1) for i in range(d // 2)]
    out = x.copy()
    for index in np.ndindex(x.shape[:-2]):
        for l, p in enumerate(positions):
            for i, (a, b) in enumerate(pairs):
                angle = p * rope.theta ** (-2 * i / d)
                m = np.array([[math.cos(angle), -math.sin(angle)],
                              [math.sin(angle), math.cos(angle)]])  # fmt: skip
                out[(*index, l, a)], out[(*index, l, b)] = m @ [
                    x[(*index, l, a)],
                    x[(*index, l, b)],
                ]
    return out


def loop_attention(q, k, v, scale: float, causal_offset: int | None) -> np.ndarray:
    n_b, n_h, n_t, _ = q.shape
    n_g, n_s = k.shape[1], k.shape[2]
    out = np.zeros((n_b, n_h, n_t, v.shape[3]))
    for b in range(n_b):
        for h in range(n_h):
            g = h // (n_h // n_g)
            for t in range(n_t):
                cols = [s for s in range(n_s) if causal_offset is None or s <= t + causal_offset]
                logits = [scale * float(q[b, h, t] @ k[b, g, s]) for s in cols]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                for w, s in zip(weights, cols, strict=True):
                    out[b, h, t] += w / sum(weights) * v[b, g, s]
    return out


SPEC = """
version: 1
family: t
cases:
  - name: kernel-${style}
    mode: kernel
    shape: {batch: 2, query_len: 3, kv_len: 6, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    mask: {causal: bottom-right}
    rope: {style: $style, rotary_dim: 6, offset: 40, theta: 100.0}
    matrix: {style: [half, interleaved], dtype: [float64]}
  - name: layer-${style}
    mode: layer
    shape: {batch: 2, query_len: 5, num_heads: 2, key_dim: 4}
    rope: {style: $style}
    matrix: {style: [half, interleaved], dtype: [float64]}
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("rope") / "t.yaml"
    path.write_text(SPEC)
    return {c.name: c for c in load_spec(path)}


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_reference_kernel_matches_rotation_matrix_loops(cases: dict, style: str) -> None:
    case = cases[f"kernel-{style}"]
    assert list(query_positions(case)) == [43, 44, 45]  # offset + S - T + t
    assert list(key_positions(case)) == list(range(40, 46))
    inputs = make_inputs(case)
    a = inputs.arrays
    q = rotation_matrix_loop(a["q"], query_positions(case), case.rope)
    k = rotation_matrix_loop(a["k"], key_positions(case), case.rope)
    expected = loop_attention(q, k, a["v"], case.effective_scale, causal_offset=3)
    np.testing.assert_allclose(attention(case, inputs)["output"], expected, atol=1e-12)


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_reference_layer_rotates_after_projection(cases: dict, style: str) -> None:
    case = cases[f"layer-{style}"]
    inputs = make_inputs(case)
    a, w = inputs.arrays, inputs.weights
    proj = lambda x, wt, bias: np.einsum("bld,ndk->bnlk", x, wt) + bias[None, :, None]  # noqa: E731
    positions = np.arange(5)
    q = rotation_matrix_loop(proj(a["query"], w["wq"], w["bq"]), positions, case.rope)
    k = rotation_matrix_loop(proj(a["key"], w["wk"], w["bk"]), positions, case.rope)
    heads = loop_attention(q, k, proj(a["value"], w["wv"], w["bv"]), case.effective_scale, None)
    expected = np.einsum("bhtv,hvd->btd", heads, w["wo"]) + w["bo"]
    np.testing.assert_allclose(attention(case, inputs)["output"], expected, atol=1e-12)


def test_offset_changes_nothing_in_exact_arithmetic(cases: dict) -> None:
    """Only relative positions matter: shifting every position leaves the output (float64)."""
    case = cases["kernel-half"]
    inputs = make_inputs(case)
    out = attention(case, inputs)["output"]
    for offset in (0, 7, 2000):
        shifted = dataclasses.replace(case, rope=dataclasses.replace(case.rope, offset=offset))
        np.testing.assert_allclose(attention(shifted, inputs)["output"], out, atol=1e-11)
    # ... while another convention, or no rotation, changes the answer
    other = dataclasses.replace(case, rope=dataclasses.replace(case.rope, style="interleaved"))
    assert np.max(np.abs(attention(other, inputs)["output"] - out)) > 1e-3
    assert (
        np.max(np.abs(attention(dataclasses.replace(case, rope=None), inputs)["output"] - out))
        > 1e-3
    )


def test_float32_baseline_builds_float32_tables_and_stays_close(cases: dict) -> None:
    case = dataclasses.replace(cases["kernel-interleaved"], dtype="float32")
    inputs = make_inputs(case)
    ref = attention(case, inputs)["output"]
    base = baseline(case, inputs)["output"]
    error = np.max(np.abs(base - ref))
    assert 0 < error < POLICY["float32"].atol


def test_features_and_show(cases: dict) -> None:
    from conformance.cli.commands import describe_case

    assert {"rope-half", "rope-partial"} <= cases["kernel-half"].features
    assert "rope-partial" not in cases["layer-interleaved"].features
    assert "rope-interleaved" in cases["layer-interleaved"].features
    text = describe_case(cases["kernel-interleaved"])
    assert "pairs (2i, 2i + 1) of the first 6 of 8 dims" in text
    assert "query positions 43..45, key positions 40..45 (offset 40)" in text


def test_case_round_trips_through_dict(cases: dict) -> None:
    from conformance.cases.case import Case

    case = cases["kernel-interleaved"]
    assert Case.from_dict(case.to_dict()) == case


def test_shipped_family_loads() -> None:
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "specs" / "rope.yaml"
    loaded = load_spec(spec)
    tags = set().union(*(c.features for c in loaded))
    assert {"rope-half", "rope-interleaved", "rope-partial"} <= tags
    assert {c.tier for c in loaded} == {"small", "default"}
