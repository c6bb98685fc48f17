"""The float64 reference for softcap, ALiBi and sinks, proven against independent formulations:
a scalar loop written from the papers' definitions, closed forms and invariants."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from conformance.cases.case import Case
from conformance.cases.inputs import make_inputs
from conformance.cases.score_terms import ScoreTerms, softcap, standard_alibi_slopes
from conformance.oracle.reference import attention, dot_product_attention
from conformance.spec import load_spec


def loop_attention(q, k, v, scale, terms: ScoreTerms, offset: int, causal: bool) -> np.ndarray:
    """Scalar loops, math.tanh/exp; the sink as an extra softmax column with value 0."""
    n_b, n_h, n_t, n_k = q.shape
    n_g, n_s, n_v = k.shape[1], k.shape[2], v.shape[3]
    out = np.zeros((n_b, n_h, n_t, n_v))
    for b in range(n_b):
        for h in range(n_h):
            g = h // (n_h // n_g)
            for t in range(n_t):
                cols = []  # (logit, value row)
                for s in range(n_s):
                    if causal and s > t + offset:
                        continue
                    x = sum(q[b, h, t, i] * k[b, g, s, i] for i in range(n_k)) * scale
                    if terms.softcap is not None:
                        x = terms.softcap * math.tanh(x / terms.softcap)
                    if terms.alibi is not None:
                        x -= terms.alibi[h] * abs(t + offset - s)
                    cols.append((x, v[b, g, s]))
                if terms.sink is not None:
                    cols.append((terms.sink[h], np.zeros(n_v)))
                top = max(x for x, _ in cols)
                total = sum(math.exp(x - top) for x, _ in cols)
                for x, row in cols:
                    out[b, h, t] += math.exp(x - top) / total * row
    return out


def _qkv(seed: int, h: int = 4, g: int = 2, t: int = 5, s: int = 7, kd: int = 3):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((2, h, t, kd)) * 2,
        rng.standard_normal((2, g, s, kd)) * 2,
        rng.standard_normal((2, g, s, kd)),
    )


TERMS = {
    "softcap": ScoreTerms(softcap=1.5),
    "alibi": ScoreTerms(alibi=standard_alibi_slopes(4)),
    "sink": ScoreTerms(sink=(0.5, -1.0, 0.0, 3.0)),
    "sink-zero": ScoreTerms(sink=(0.0,) * 4),
    "all": ScoreTerms(softcap=2.0, alibi=(0.5, 0.3, 0.2, 0.1), sink=(1.0, 0.0, -2.0, 0.5)),
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", sorted(TERMS))
def test_reference_matches_scalar_loop(name: str, causal: bool) -> None:
    q, k, v = _qkv(seed=len(name))
    terms, offset = TERMS[name], 2  # S - T: queries end the key sequence
    attend = None
    if causal:
        attend = (np.arange(7)[None, :] <= np.arange(5)[:, None] + offset)[None, None]
    out, probs = dot_product_attention(
        q, k, v, scale=0.6, attend=attend, terms=terms, alibi_offset=offset
    )
    want = loop_attention(q, k, v, 0.6, terms, offset, causal)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)
    if terms.sink is None:
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-13)
    else:  # the sink takes exactly sigmoid(sink - logsumexp(row)) of the mass
        assert (probs.sum(-1) < 1.0).all()


def test_standard_slopes_match_the_paper() -> None:
    assert standard_alibi_slopes(8) == tuple(2.0 ** -(i + 1) for i in range(8))
    assert standard_alibi_slopes(4) == (2**-2, 2**-4, 2**-6, 2**-8)
    # not a power of two: slopes of 8, then every other slope of 16 (BLOOM's 12-head layers)
    twelve = standard_alibi_slopes(12)
    assert twelve[:8] == standard_alibi_slopes(8)
    np.testing.assert_allclose(twelve[8:], [2.0 ** -((i + 1) / 2) for i in range(0, 8, 2)])


def test_softcap_invariants() -> None:
    x = np.linspace(-60, 60, 401)
    y = softcap(x, 5.0)
    assert (np.abs(softcap(x * 1e9, 5.0)) <= 5.0).all()  # bounded
    assert (np.abs(y) < 5.0).all() and (np.diff(y) > 0).all()  # strictly inside, monotone
    np.testing.assert_allclose(softcap(x * 1e-9, 5.0), x * 1e-9, rtol=1e-12)  # ~identity
    np.testing.assert_allclose(softcap(-x, 5.0), -y)  # odd


def test_softcap_is_applied_before_masking() -> None:
    """A masked key stays masked: softcap(-inf) would be a finite -cap and leak weight."""
    q, k, v = _qkv(seed=3)
    attend = np.ones((1, 1, 5, 7), dtype=bool)
    attend[..., 4:] = False
    _, probs = dot_product_attention(q, k, v, scale=1.0, attend=attend, terms=TERMS["softcap"])
    assert (probs[..., 4:] == 0).all()


def test_alibi_is_an_additive_bias() -> None:
    """ALiBi through `terms` equals the same numbers handed in as an attention bias."""
    q, k, v = _qkv(seed=4)
    slopes = np.array(TERMS["all"].alibi)
    dist = np.abs(np.arange(5)[:, None] + 2 - np.arange(7)[None, :])
    bias = (-slopes[:, None, None] * dist)[None]
    a, _ = dot_product_attention(q, k, v, scale=0.5, terms=ScoreTerms(alibi=tuple(slopes)),
                                 alibi_offset=2)  # fmt: skip
    b, _ = dot_product_attention(q, k, v, scale=0.5, bias=np.broadcast_to(bias, (2, 4, 5, 7)))
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_sink_closed_form_and_fully_masked_rows() -> None:
    """out_sink = out * sigmoid(lse - sink); a row with no visible key gives zeros, not NaN."""
    q, k, v = _qkv(seed=5)
    sink = np.array(TERMS["sink"].sink)
    plain, _ = dot_product_attention(q, k, v, scale=0.7)
    logits = np.einsum("bgrtk,bgsk->bgrts", q.reshape(2, 2, 2, 5, 3), k).reshape(2, 4, 5, 7)
    lse = np.log(np.exp(logits * 0.7).sum(-1, keepdims=True))
    gate = 1 / (1 + np.exp(sink[:, None, None] - lse))
    out, _ = dot_product_attention(q, k, v, scale=0.7, terms=TERMS["sink"])
    np.testing.assert_allclose(out, plain * gate, rtol=1e-12)
    # huge logits do not overflow: the sink joins the running maximum
    big, _ = dot_product_attention(q, k, v, scale=0.7, terms=ScoreTerms(sink=(900.0,) * 4))
    assert np.isfinite(big).all() and np.abs(big).max() < 1e-300
    attend = np.ones((1, 1, 5, 7), dtype=bool)
    attend[..., 2, :] = False
    out, probs = dot_product_attention(q, k, v, scale=0.7, attend=attend, terms=TERMS["sink"])
    assert (out[:, :, 2] == 0).all() and (probs[:, :, 2] == 0).all()


def test_layer_case_through_spec(tmp_path) -> None:
    """The spec keys reach the reference: layer output changes, zero terms change nothing."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nfamily: f\ncases:\n"
        "  - name: a\n    shape: {query_len: 4, num_heads: 2, key_dim: 4}\n"
        "    scores: {softcap: 0.5, alibi: [0.0, 0.0]}\n"
        "  - name: b\n    shape: {query_len: 4, num_heads: 2, key_dim: 4}\n"
        "    scores: {alibi: [0.0, 0.0]}\n"
    )
    capped, zero_alibi = load_spec(spec)
    assert capped.features >= {"softcap", "alibi"}
    plain = dataclasses.replace(capped, scores=None)
    inputs = make_inputs(capped)
    base = attention(plain, inputs)["output"]
    assert not np.allclose(attention(capped, inputs)["output"], base)
    zero_inputs = make_inputs(zero_alibi)
    np.testing.assert_allclose(
        attention(zero_alibi, zero_inputs)["output"],
        attention(dataclasses.replace(zero_alibi, scores=None), zero_inputs)["output"],
        rtol=1e-14,
    )
    assert Case.from_dict(capped.to_dict()) == capped


def test_spec_case_matches_scalar_loop(tmp_path) -> None:
    """Whole path: spec -> case -> build_mask (ALiBi as a bias) -> reference, vs the loop."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nfamily: f\ncases:\n  - name: a\n    mode: kernel\n"
        "    shape: {query_len: 4, kv_len: 6, num_heads: 4, num_kv_heads: 2, key_dim: 3}\n"
        "    mask: {causal: bottom-right}\n    scale: 1.0\n"
        "    scores: {softcap: 2.0, alibi: standard, sink: [1.0, 0.0, -1.0, 0.5]}\n"
    )
    (case,) = load_spec(spec)
    a = make_inputs(case).arrays
    want = loop_attention(a["q"], a["k"], a["v"], 1.0, case.scores, offset=2, causal=True)
    np.testing.assert_allclose(attention(case, make_inputs(case))["output"], want, rtol=1e-12)
