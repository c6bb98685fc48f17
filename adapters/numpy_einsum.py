"""`numpy.einsum`: the multi-query paper's batched einsum functions, transcribed to NumPy.

Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need", sections 2.3-3:
MultiheadAttentionBatched, MultiqueryAttentionBatched and the incremental self-attention
functions. Written independently of conformance.reference (which it must agree with) so the
harness has a second implementation from day one. Extensions beyond the paper, each one line:
projection biases, the logit scale (the paper omits it), and a combined additive mask; and
rotary position embeddings (issue 14) written as RoFormer's complex form, each pair of dims a
complex number multiplied by e^(i * position * theta^(-2j/d)) (pairs (2j, 2j+1) interleaved,
(j, j + d/2) rotate-half), applied to Q and K after the projections.
The computation runs in the case dtype (NumPy has no bfloat16, so that dtype is unsupported);
float16 contractions accumulate in float32 and round once, as tensor cores and torch's CPU
kernels do: NumPy's own float16 einsum accumulates in float16 (measured: errors of ~100 ulp on
a 16-term contraction), which no framework under test does.
"""

from __future__ import annotations

import numpy as np

from conformance.adapter_api.adapter import FILL_AS_WRITTEN, Adapter, Declaration
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    EVERY_BOOLEAN_MASK,
    KERNEL_SHAPES,
    LAYER_INPUTS,
    MASKS_AS_WRITTEN,
    ROPE,
)
from conformance.cases.masks import build_mask, combined_additive, fill_value


def einsum(spec: str, *operands: np.ndarray) -> np.ndarray:
    """np.einsum, with float16 accumulated in float32 and rounded once to float16."""
    if operands[0].dtype == np.float16:
        wide = [o.astype(np.float32) for o in operands]
        return np.einsum(spec, *wide).astype(np.float16)
    return np.einsum(spec, *operands)


def softmax(x: np.ndarray) -> np.ndarray:
    """tf.nn.softmax over the last axis; a row of all -inf gives NaN, as in TensorFlow."""
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def rotary_complex(x, positions, style: str, theta: float, dims: int):  # noqa: ANN001, ANN201
    """x [..., L, k]: the first `dims` dims as dims/2 complex numbers, each times
    e^(i p theta^(-2j/dims)) (RoFormer eq. 13), in x's precision (complex64 for float16/32).
    positions: [L], or [B, L] (x [B, H, L, k]) when each sequence has its own."""
    half = dims // 2
    if style == "interleaved":
        re, im = x[..., 0:dims:2], x[..., 1:dims:2]
    else:
        re, im = x[..., :half], x[..., half:dims]
    ctype = np.complex128 if x.dtype == np.float64 else np.complex64
    z = re.astype(ctype) + 1j * im.astype(ctype)
    angles = np.asarray(positions)[..., None] * theta ** (-2.0 * np.arange(half) / dims)
    if angles.ndim == 3:  # per-sequence positions [B, L]: the same angles for every head
        angles = angles[:, None]
    w = z * np.exp(1j * angles).astype(ctype)
    out = x.copy()
    if style == "interleaved":
        out[..., 0:dims:2], out[..., 1:dims:2] = w.real, w.imag
    else:
        out[..., :half], out[..., half:dims] = w.real, w.imag
    return out


def no_rope(Q, K):  # noqa: ANN001, ANN201, N803
    return Q, K


def multihead_attention_batched(X, M, mask, P_q, P_k, P_v, P_o, b, scale, rope=no_rope):  # noqa: ANN001, N803
    """X [b,n,d], M [b,m,d], mask [b,h,n,m] additive, P_q/P_k [h,d,k], P_v [h,d,v], P_o [h,d,v]."""
    Q = einsum("bnd,hdk->bhnk", X, P_q) + b["q"][None, :, None, :]  # noqa: N806
    K = einsum("bmd,hdk->bhmk", M["k"], P_k) + b["k"][None, :, None, :]  # noqa: N806
    Q, K = rope(Q, K)  # noqa: N806
    V = einsum("bmd,hdv->bhmv", M["v"], P_v) + b["v"][None, :, None, :]  # noqa: N806
    logits = einsum("bhnk,bhmk->bhnm", Q, K) * scale
    weights = softmax(logits + mask)
    O = einsum("bhnm,bhmv->bhnv", weights, V)  # noqa: N806
    Y = einsum("bhnv,hdv->bnd", O, P_o) + b["o"]  # noqa: N806
    return Y, weights


def multiquery_attention_batched(X, M, mask, P_q, P_k, P_v, P_o, b, scale, rope=no_rope):  # noqa: ANN001, N803
    """As above with one shared key/value head: P_k [d,k], P_v [d,v]."""
    Q = einsum("bnd,hdk->bhnk", X, P_q) + b["q"][None, :, None, :]  # noqa: N806
    K = einsum("bmd,dk->bmk", M["k"], P_k) + b["k"]  # noqa: N806
    Q, K = rope(Q, K)  # noqa: N806
    V = einsum("bmd,dv->bmv", M["v"], P_v) + b["v"]  # noqa: N806
    logits = einsum("bhnk,bmk->bhnm", Q, K) * scale
    weights = softmax(logits + mask)
    O = einsum("bhnm,bmv->bhnv", weights, V)  # noqa: N806
    Y = einsum("bhnv,hdv->bnd", O, P_o) + b["o"]  # noqa: N806
    return Y, weights


def kernel_attention(q, k, v, mask, scale):  # noqa: ANN001
    """The paper's DotProductAttention core, batched over heads; k/v heads shared when G=1."""
    if k.shape[1] == 1:
        logits = einsum("bhnk,bmk->bhnm", q, k[:, 0]) * scale
        weights = softmax(logits + mask)
        return einsum("bhnm,bmv->bhnv", weights, v[:, 0]), weights
    logits = einsum("bhnk,bhmk->bhnm", q, k) * scale
    weights = softmax(logits + mask)
    return einsum("bhnm,bhmv->bhnv", weights, v), weights


class NumpyEinsum(Adapter):
    declaration = Declaration(
        name="numpy.einsum",
        summary="the multi-query paper's batched/incremental einsum functions in NumPy, "
        "computed in the case dtype (float16 accumulated in float32)",
        framework="numpy",
        features=(
            LAYER_INPUTS
            | KERNEL_SHAPES
            | {"output-dim", "multi-query", "scale", "no-bias", "decode", "weights", "weights-mean"}
            | EVERY_BOOLEAN_MASK
            | ADDITIVE_MASKS
            | MASKS_AS_WRITTEN  # issue 14: the additive mask takes the fill as written
            | {
                "cache-lengths",  # issue 14: per-sequence lengths in the additive mask
                "decode-memory",  # issue 14: steps over a memory (chunks of any size)
                "rope-per-sequence",  # issue 14: rope with cache lengths
            }
            | ROPE  # issue 14: RoFormer's complex form
        ),
        dtypes=frozenset({"float64", "float32", "float16"}),
        worker="numpy",
        divergences=(FILL_AS_WRITTEN,),  # issue 14
        unsupported_reasons={
            "grouped-query": "the paper defines multi-head (G=H) and multi-query (G=1) only",
            "bfloat16": "NumPy has no bfloat16",
            "multi-axis": "the paper's functions attend over one sequence axis",
            "bias-kv": "a torch-only extension",
            "zero-attn": "a torch-only extension",
            # issue 14: the paper's incremental functions take one token per step
            "decode-chunked": "the paper's incremental functions decode one token per step",
        },
    )

    def run(self, case, inputs, device):  # noqa: ANN001 - documented on Adapter
        dt = np.dtype(case.dtype)
        attend, bias = build_mask(case)
        s = case.shape
        mask = combined_additive(attend, bias, dt, fill=fill_value(case))
        if mask is None:
            mask = np.zeros((1, 1, 1, 1), dt)
        scale = dt.type(case.effective_scale)
        rope = self._rope(case)
        if case.mode == "kernel":
            q, k, v = (inputs.native(n) for n in ("q", "k", "v"))
            q, k = rope(q, k)
            if case.decode and case.decode.memory:  # issue 14: steps over an encoder memory
                return {"output": self._memory_incremental(case, q, k, v, scale)}
            if case.decode:
                return {"output": self._kernel_incremental(q, k, v, scale)}
            out, weights = kernel_attention(q, k, v, mask, scale)
            return {"output": out, "weights": weights, "weights_mean": weights.mean(axis=1)}

        w = {n: inputs.native(n) for n in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")}
        X = inputs.native("query")  # noqa: N806
        M = {"k": inputs.native("key"), "v": inputs.native("value")}  # noqa: N806
        P_o = np.transpose(w["wo"], (0, 2, 1))  # canonical [h,v,d] -> the paper's [h,d,v]  # noqa: N806
        b = {"q": w["bq"], "k": w["bk"], "v": w["bv"], "o": w["bo"]}
        multi_query = s.num_kv_heads == 1 and s.num_heads > 1
        if multi_query:
            P_k, P_v = w["wk"][0], w["wv"][0]  # noqa: N806
            b["k"], b["v"] = w["bk"][0], w["bv"][0]
            fn = multiquery_attention_batched
        else:
            P_k, P_v, fn = w["wk"], w["wv"], multihead_attention_batched  # noqa: N806
        if case.decode:
            out = self._layer_incremental(
                X, w["wq"], P_k, P_v, P_o, b, scale, multi_query, self._step_rope(case)
            )
            return {"output": out}
        Y, weights = fn(X, M, mask, w["wq"], P_k, P_v, P_o, b, scale, rope)  # noqa: N806
        return {"output": Y, "weights": weights, "weights_mean": weights.mean(axis=1)}

    @staticmethod
    def _rope(case):  # noqa: ANN001, ANN205
        """Q, K -> rotated (keys at offset + s, queries at offset + S - T + t)."""
        r = case.rope
        if r is None:
            return no_rope
        s = case.shape
        k_pos = r.offset + np.arange(s.kv_len)
        q_pos = r.offset + s.kv_len - s.query_len + np.arange(s.query_len)
        if case.cache is not None and case.cache.lengths is not None:  # issue 14: queries end
            ends = np.asarray(case.cache.lengths)[:, None]  # each sequence's own cache
            q_pos = r.offset + ends - s.query_len + np.arange(s.query_len)[None, :]
        dims = r.rotary_dim or s.key_dim

        def apply(Q, K):  # noqa: ANN001, ANN202, N803
            return (rotary_complex(Q, q_pos, r.style, r.theta, dims),
                    rotary_complex(K, k_pos, r.style, r.theta, dims))  # fmt: skip

        return apply

    @staticmethod
    def _step_rope(case):  # noqa: ANN001, ANN205
        """x [..., 1, k] of decoding step i -> rotated at position offset + i (issue 14: the
        cache holds i tokens before it; cached keys were rotated at their own steps)."""
        r = case.rope
        if r is None:
            return lambda x, i: x
        dims = r.rotary_dim or case.shape.key_dim
        return lambda x, i: rotary_complex(x, np.array([r.offset + i]), r.style, r.theta, dims)

    @staticmethod
    def _kernel_incremental(q, k, v, scale):  # noqa: ANN001, ANN205
        """One query position at a time against a growing key/value cache."""
        outs = []
        for i in range(q.shape[2]):
            cache_k, cache_v = k[:, :, : i + 1], v[:, :, : i + 1]
            out, _ = kernel_attention(q[:, :, i : i + 1], cache_k, cache_v, 0.0, scale)
            outs.append(out)
        return np.concatenate(outs, axis=2)

    @staticmethod
    def _memory_incremental(case, q, k, v, scale):  # noqa: ANN001, ANN205
        """Decoder steps against an encoder memory computed once: each step's queries attend
        to every memory position (cross-attention, nothing appended, not causal)."""
        d = case.decode
        bounds = ([(0, d.prefix)] if d.prefix else []) + [
            (t, t + d.chunk) for t in range(d.prefix, q.shape[2], d.chunk)
        ]
        outs = []
        for start, stop in bounds:
            out, _ = kernel_attention(q[:, :, start:stop], k, v, 0.0, scale)
            outs.append(out)
        return np.concatenate(outs, axis=2)

    @staticmethod
    def _layer_incremental(X, P_q, P_k, P_v, P_o, b, scale, multi_query, rope):  # noqa: ANN001, ANN205, N803
        """The paper's MultiquerySelfAttentionIncremental / multi-head analogue, step by step.

        Each step projects one new token, appends its key and value to the cache, and attends
        over the cache (causal by construction). `rope(x, i)` rotates step i's query and key.
        """
        outs = []
        prev_k = prev_v = None
        for i in range(X.shape[1]):
            x = X[:, i]  # [b, d]
            q = rope((einsum("bd,hdk->bhk", x, P_q) + b["q"])[:, :, None], i)[:, :, 0]
            if multi_query:
                new_k = rope((einsum("bd,dk->bk", x, P_k) + b["k"])[:, None], i)  # [b, 1, k]
                new_v = (einsum("bd,dv->bv", x, P_v) + b["v"])[:, None]
                prev_k = new_k if prev_k is None else np.concatenate([prev_k, new_k], axis=1)
                prev_v = new_v if prev_v is None else np.concatenate([prev_v, new_v], axis=1)
                logits = einsum("bhk,bmk->bhm", q, prev_k) * scale
                weights = softmax(logits)
                o = einsum("bhm,bmv->bhv", weights, prev_v)
            else:
                new_k = rope((einsum("bd,hdk->bhk", x, P_k) + b["k"])[:, :, None], i)  # [b,h,1,k]
                new_v = (einsum("bd,hdv->bhv", x, P_v) + b["v"])[:, :, None]
                prev_k = new_k if prev_k is None else np.concatenate([prev_k, new_k], axis=2)
                prev_v = new_v if prev_v is None else np.concatenate([prev_v, new_v], axis=2)
                logits = einsum("bhk,bhmk->bhm", q, prev_k) * scale
                weights = softmax(logits)
                o = einsum("bhm,bhmv->bhv", weights, prev_v)
            outs.append(einsum("bhv,hdv->bd", o, P_o) + b["o"])
        return np.stack(outs, axis=1)


ADAPTERS = [NumpyEinsum]
