"""The float64 oracle's backward pass: analytic gradients written out in NumPy.

For a seeded upstream gradient dY (inputs.arrays["grad_output"], the output's shape):

kernel mode  grad_q [B,H,T,K], grad_k [B,G,S,K], grad_v [B,G,S,V]
layer mode   grad_query [B,T,Dq] (self-attention: the sum through all three projections),
             grad_key [B,S,Dk], grad_value [B,S,Dv] (cross-attention only),
             grad_wq/wk/wv/wo and grad_bq/bk/bv/bo in the canonical layout,
             grad_bias_k/grad_bias_v with torch's add_bias_kv

Softmax backward: with P = softmax(L) over visible keys and dP = dO V^T,
dL = P * (dP - rowsum(dP * P)); masked keys have P = 0 so they get no gradient. A row with
every key masked follows the forward's policy: "nan" makes its gradients NaN, "zeros" zero
(the row is constant), "uniform"/"unmasked" differentiate what was computed.
Grouped-query: a shared key/value head's gradient sums over its query group.
Score terms (issue 14): ALiBi and the bias are added constants (no change to dL); a sink only
joins the softmax's denominator, so the formula holds with P the keys' probabilities; softcap
c * tanh(L / c) multiplies dL by 1 - tanh(L / c)^2. RoPE rotates q and k after any
projection: their gradients are rotated back (a rotation's transpose is its inverse).
The tests check all of it against central finite differences.

`rounding` is applied after every operation, as in conformance.oracle.reference: the oracle uses the
identity (float64 throughout); `baseline_gradients()` rounds to the case dtype, giving the
straightforward same-dtype implementation that the low-precision gradient rule (3x its error,
tolerance.GRADIENT_BASELINE_FACTOR) measures against.
"""

from __future__ import annotations

import numpy as np

from ..cases.case import Case
from ..cases.dtypes import round_to
from ..cases.inputs import CaseInputs
from ..cases.rotary import apply_rope
from ..cases.score_terms import ScoreTerms, without_alibi
from .reference import (
    Rounding,
    _extra_keys,
    _identity,
    dot_product_attention,
    masked_row_terms,
    project_heads,
)

KERNEL_GRADS = ("grad_q", "grad_k", "grad_v")
WEIGHT_GRADS = (
    "grad_wq",
    "grad_bq",
    "grad_wk",
    "grad_bk",
    "grad_wv",
    "grad_bv",
    "grad_wo",
    "grad_bo",
)


def gradient_names(case: Case) -> tuple[str, ...]:
    """What a gradient case compares, in order."""
    if case.mode == "kernel":
        return KERNEL_GRADS
    names = ["grad_query"]
    if not case.self_attention:
        names += ["grad_key", "grad_value"]
    names += [n for n in WEIGHT_GRADS if case.use_bias or not n.startswith("grad_b")]
    if case.add_bias_kv:
        names += ["grad_bias_k", "grad_bias_v"]
    return tuple(names)


def kernel_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    d_out: np.ndarray,
    *,
    scale: float,
    attend: np.ndarray | None,
    bias: np.ndarray | None,
    masked_rows: str,
    rounding: Rounding = _identity,
    row_terms: dict | None = None,
    terms: ScoreTerms | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of <d_out, attention(q, k, v)> w.r.t. q [B,H,T,K], k [B,G,S,K], v [B,G,S,V].
    `row_terms`: dot_product_attention's policy keywords (reference.masked_row_terms); a fully
    masked row written with fills (policy "fill" / "as-written") is differentiated as the
    softmax of logits + fills: the fills are added, so gradients flow through them.
    `terms`: softcap and sinks (ALiBi belongs in `bias`, as the forward pass takes it)."""
    rd = rounding
    b, h, t, kd = q.shape
    g, s = k.shape[1], k.shape[2]
    r = h // g
    row_terms = row_terms or {"masked_rows": masked_rows}
    _, probs = dot_product_attention(
        q, k, v, scale=scale, attend=attend, bias=bias, rounding=rd, terms=terms, **row_terms
    )
    pg = probs.reshape(b, g, r, t, s)
    dog = d_out.reshape(b, g, r, t, v.shape[-1])
    d_v = rd(np.einsum("bgrts,bgrtv->bgsv", pg, dog))
    d_p = rd(np.einsum("bgrtv,bgsv->bgrts", dog, v))
    row = rd(rd(d_p * pg).sum(axis=-1, keepdims=True))
    d_logits = rd(pg * rd(d_p - row))
    if masked_rows == "uniform":
        # A fully masked row is the constant 1/S whatever its logits: no gradient flows back.
        visible = np.ones((1, 1, 1, s), dtype=bool) if attend is None else attend
        if bias is not None:
            visible = visible & np.isfinite(bias)
        empty = ~np.broadcast_to(visible, (b, h, t, s)).any(axis=-1)
        d_logits = np.where(empty.reshape(b, g, r, t, 1), 0.0, d_logits)
    qg = q.reshape(b, g, r, t, kd)
    if terms is not None and terms.softcap is not None:  # d/dx c tanh(x / c) = 1 - tanh^2
        raw = rd(rd(np.einsum("bgrtk,bgsk->bgrts", qg, k)) * scale)
        d_logits = rd(d_logits * rd(1.0 - rd(np.tanh(raw / terms.softcap)) ** 2))
    d_q = rd(scale * rd(np.einsum("bgrts,bgsk->bgrtk", d_logits, k))).reshape(b, h, t, kd)
    d_k = rd(scale * rd(np.einsum("bgrts,bgrtk->bgsk", d_logits, qg)))
    return d_q, d_k, d_v


def gradients(
    case: Case,
    inputs: CaseInputs,
    *,
    masked_rows: str | None = None,
    rounding: Rounding = _identity,
) -> dict[str, np.ndarray]:
    """Every gradient a case compares (see gradient_names), float64."""
    rd = rounding
    policy = masked_rows or case.mask.fully_masked_rows
    # the case's mask with torch's extra key positions, and the policy's per-key fills
    attend, bias, row_terms = masked_row_terms(case, policy)
    a, w = inputs.arrays, inputs.weights
    d_y = a["grad_output"]
    scale = case.effective_scale
    terms = without_alibi(case).scores  # ALiBi arrives inside `bias` (build_mask)
    if case.mode == "kernel":
        q, k = apply_rope(case, a["q"], a["k"], rd)
        d_q, d_k, d_v = kernel_backward(
            q, k, a["v"], d_y, scale=scale, attend=attend, bias=bias,
            masked_rows=policy, rounding=rd, row_terms=row_terms, terms=terms,
        )  # fmt: skip
        d_q, d_k = apply_rope(case, d_q, d_k, rd, inverse=True)
        return {"grad_q": d_q, "grad_k": d_k, "grad_v": d_v}
    if case.shape.attention_axes:
        raise ValueError("gradients are not defined for multi-axis cases")

    query, key, value = a["query"], a["key"], a["value"]
    q = project_heads(query, w["wq"], w["bq"], rd)
    k = project_heads(key, w["wk"], w["bk"], rd)
    v = project_heads(value, w["wv"], w["bv"], rd)
    q, k = apply_rope(case, q, k, rd)
    s = k.shape[2]
    k_full, v_full = _extra_keys(case, w, k, v)
    attend_full, bias_full = attend, bias
    heads, _ = dot_product_attention(
        q, k_full, v_full, scale=scale, attend=attend_full, bias=bias_full, rounding=rd,
        terms=terms, **row_terms,
    )  # fmt: skip
    out = {
        "grad_wo": rd(np.einsum("bhtv,btd->hvd", heads, d_y)),
        "grad_bo": rd(d_y.sum(axis=(0, 1))),
    }
    d_heads = rd(np.einsum("btd,hvd->bhtv", d_y, w["wo"]))
    d_q, d_k_full, d_v_full = kernel_backward(
        q, k_full, v_full, d_heads, scale=scale, attend=attend_full, bias=bias_full,
        masked_rows=policy, rounding=rd, row_terms=row_terms, terms=terms,
    )  # fmt: skip
    d_k, d_v = d_k_full[:, :, :s], d_v_full[:, :, :s]
    d_q, d_k = apply_rope(case, d_q, d_k, rd, inverse=True)
    if case.add_bias_kv:
        out["grad_bias_k"] = rd(d_k_full[:, :, s].sum(axis=0))
        out["grad_bias_v"] = rd(d_v_full[:, :, s].sum(axis=0))
    for name, x, d in (("q", query, d_q), ("k", key, d_k), ("v", value, d_v)):
        out[f"grad_w{name}"] = rd(np.einsum("bld,bnlk->ndk", x, d))
        out[f"grad_b{name}"] = rd(d.sum(axis=(0, 2)))
    dx_q = rd(np.einsum("bnlk,ndk->bld", d_q, w["wq"]))
    dx_k = rd(np.einsum("bnlk,ndk->bld", d_k, w["wk"]))
    dx_v = rd(np.einsum("bnlk,ndk->bld", d_v, w["wv"]))
    if case.self_attention:
        out["grad_query"] = rd(rd(dx_q + dx_k) + dx_v)
    else:
        out["grad_query"], out["grad_key"], out["grad_value"] = dx_q, dx_k, dx_v
    if not case.use_bias:
        for name in ("bq", "bk", "bv", "bo"):
            out.pop(f"grad_{name}")
    return out


def baseline_gradients(
    case: Case, inputs: CaseInputs, *, masked_rows: str | None = None
) -> dict[str, np.ndarray]:
    """The gradients of a straightforward implementation in the case dtype: every op rounded."""
    return gradients(
        case, inputs, masked_rows=masked_rows, rounding=lambda x: round_to(x, case.dtype)
    )
