"""The float64 oracle: attention written to be read, as einsums with shape letters.

    B batch, T queries, S keys, H query heads, G key/value heads (H = G * R), R = H // G,
    K key head dim, V value head dim, D model dims.

Query head h uses key/value head h // R (contiguous groups, like repeat_interleave).
A row of the logits whose every key is masked has no agreed answer; `masked_rows` picks the
policy: "nan" (softmax of all -inf, IEEE), "zeros", "uniform" (a large finite negative in
place of -inf: every key equally), "unmasked" (the finite-negative trick in high precision,
where the row's own logits survive: softmax as if nothing were masked), "fill" (issue 14:
the row as a case's finite fill writes it, each logit plus the fill in float32 arithmetic,
float64 for float64 cases: uniform once the fill swamps the logits, nearly unmasked when it
does not, NaN when the fill overflowed to -inf in the case dtype), or an "as-written(...)"
text (conformance.cases.written): "fill" generalised to a fill per mask source, so a row's
answer depends on which sources emptied it, as in implementations that write each source
with its own value. Rows with a visible key never depend on the policy.

`rounding` is applied after every operation. The oracle uses the identity (float64
throughout); `baseline()` gives "a straightforward implementation in the same dtype" that the
baseline tolerance rule measures against: float32 runs the same code natively in float32
(float32 matmuls and sums, as a float32 implementation accumulates), float16/bfloat16 round
every operation's float64 result to the dtype (half-precision kernels accumulate in float32).

Memory stays flat at any size: `attention()` works through the query rows a block at a time
(ROW_BLOCK_ELEMENTS elements of [B, H, rows, S] per block), building each block's mask from
absolute row positions (conformance.cases.masks.build_mask(rows=...)). The [B, H, T, S] weights are
kept only when the case compares them or they are small (WEIGHTS_KEPT_ELEMENTS).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..cases.case import MASKED_ROW_POLICIES, Case
from ..cases.dtypes import round_to
from ..cases.inputs import CaseInputs
from ..cases.masks import build_mask, drawn_masks, row_blocks
from ..cases.rotary import apply_rope
from ..cases.score_terms import (
    ScoreTerms,
    alibi_bias,
    sink_denominator_term,
    softcap,
    without_alibi,
)
from ..cases.written import AsWritten, is_as_written, parse

ROW_BLOCK_ELEMENTS = 2**22  # logits of one block of query rows: 32 MiB of float64
WEIGHTS_KEPT_ELEMENTS = 2**22  # [B, H, T, S] weights returned uncompared up to this size

Rounding = Callable[[np.ndarray], np.ndarray]
POLICIES = (*MASKED_ROW_POLICIES, "unmasked")


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def softmax_rows(
    logits: np.ndarray,
    visible: np.ndarray,
    masked_rows: str = "nan",
    rounding: Rounding = _identity,
    sink: np.ndarray | None = None,
    fill: float | np.ndarray = -np.inf,
    written: str = "float64",
    *,
    all_inf: str = "nan",
    zeroed: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax over the last axis of `logits` restricted to `visible` keys.

    logits [..., S] finite; visible [..., S] bool (broadcastable). Rows with no visible key
    follow `masked_rows`. `sink` [H] (logits [B, H, T, S]): a sink logit per head in every
    denominator; a row with no visible key then gives all its weight to the sink (zeros).
    `fill`, `written`: the "fill" policy's fill value (one for every key, or one per key
    [..., S], -inf allowed: conformance.cases.written) and the precision its sum is rounded
    to; `all_inf`: what a written row of only -inf yields ("nan" or "zeros"); `zeroed`
    [..., 1]: rows set to zero after the softmax.
    """
    if masked_rows not in POLICIES:
        raise ValueError(f"masked_rows must be one of {POLICIES}, got {masked_rows!r}")
    visible = np.broadcast_to(visible, logits.shape)
    empty = ~visible.any(axis=-1, keepdims=True)  # [..., 1]
    dead = None  # "fill": empty rows whose every written logit is -inf
    # For "unmasked", an empty row keeps all its keys: softmax as if it had no mask.
    if masked_rows == "unmasked":
        visible = visible | empty
    elif masked_rows == "fill":  # issue 14: the row as written, each key carrying its fill
        with np.errstate(over="ignore", invalid="ignore"):
            as_written = round_to(logits + fill, written)
        logits = np.where(empty, as_written, logits)
        finite = np.isfinite(logits)
        dead = empty & ~finite.any(axis=-1, keepdims=True)
        visible = np.where(empty, finite, visible)
    masked = np.where(visible, logits, -np.inf)
    peak = np.max(np.where(visible, logits, -np.inf), axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    if sink is not None:  # issue 14: the sink joins the running maximum (no overflow)
        peak = np.maximum(peak, np.asarray(sink, dtype=np.float64)[:, None, None])
    with np.errstate(invalid="ignore", over="ignore"):
        exps = rounding(np.exp(rounding(masked - peak)))
        total = rounding(exps.sum(axis=-1, keepdims=True))
        if sink is not None:
            total = rounding(total + rounding(sink_denominator_term(sink, peak)))
        probs = rounding(exps / total)  # empty rows: 0 / 0 = nan
    if dead is not None and all_inf == "zeros":
        probs = np.where(dead, 0.0, probs)
    if zeroed is not None:
        probs = np.where(zeroed, 0.0, probs)
    if masked_rows == "zeros":
        probs = np.where(empty, 0.0, probs)
    elif masked_rows == "uniform":
        probs = np.where(empty, 1.0 / logits.shape[-1], probs)
    return probs


def dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float,
    attend: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    masked_rows: str = "nan",
    rounding: Rounding = _identity,
    terms: ScoreTerms | None = None,
    alibi_offset: int = 0,
    fill: float | np.ndarray = -np.inf,
    written: str = "float64",
    all_inf: str = "nan",
    zeroed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """q [B,H,T,K], k [B,G,S,K], v [B,G,S,V], attend/bias [B,1|H,T,S] -> (out [B,H,T,V],
    probs [B,H,T,S]). `terms`: softcap, ALiBi (query t at key t + alibi_offset) and sinks, in
    the order conformance.cases.score_terms documents."""
    b, h, t, kd = q.shape
    g, s = k.shape[1], k.shape[2]
    if h % g:
        raise ValueError(f"query heads H={h} must be a multiple of key/value heads G={g}")
    r = h // g
    qg = q.reshape(b, g, r, t, kd)
    logits = rounding(np.einsum("bgrtk,bgsk->bgrts", qg, k).reshape(b, h, t, s))
    logits = rounding(logits * scale)
    # --- issue 14: score terms, before the bias and the mask (conformance.cases.score_terms) ---
    terms = terms or ScoreTerms()
    if terms.softcap is not None:
        logits = rounding(softcap(logits, terms.softcap))
    if terms.alibi is not None:
        alibi = alibi_bias(np.asarray(terms.alibi), np.arange(t), np.arange(s), alibi_offset)
        logits = rounding(logits + alibi[None])
    # --- end issue 14 ---
    visible = np.ones((1, 1, 1, s), dtype=bool) if attend is None else attend
    if bias is not None:
        visible = visible & np.isfinite(bias)
        logits = rounding(logits + np.where(np.isfinite(bias), bias, 0.0))
    probs = softmax_rows(
        logits, visible, masked_rows, rounding, sink=terms.sink, fill=fill, written=written,
        all_inf=all_inf, zeroed=zeroed,
    )  # fmt: skip
    pg = probs.reshape(b, g, r, t, s)
    out = rounding(np.einsum("bgrts,bgsv->bgrtv", pg, v).reshape(b, h, t, v.shape[-1]))
    return out, probs


def _extra_keys(case: Case, weights: dict, k: np.ndarray, v: np.ndarray) -> tuple:
    """torch's add_bias_kv then add_zero_attn: extra key positions appended to K and V."""
    b, g = k.shape[0], k.shape[1]
    extra_k, extra_v = [], []
    if case.add_bias_kv:
        extra_k.append(np.broadcast_to(weights["bias_k"][None, :, None, :], (b, g, 1, k.shape[3])))
        extra_v.append(np.broadcast_to(weights["bias_v"][None, :, None, :], (b, g, 1, v.shape[3])))
    if case.add_zero_attn:
        extra_k.append(np.zeros((b, g, 1, k.shape[3])))
        extra_v.append(np.zeros((b, g, 1, v.shape[3])))
    if not extra_k:
        return k, v
    return np.concatenate([k, *extra_k], axis=2), np.concatenate([v, *extra_v], axis=2)


def _extra_mask(n: int, attend, bias) -> tuple:  # noqa: ANN001
    """The appended key positions are always visible and get no bias."""
    if not n:
        return attend, bias
    if attend is not None:
        attend = np.concatenate([attend, np.ones((*attend.shape[:3], n), dtype=bool)], axis=3)
    if bias is not None:
        bias = np.concatenate([bias, np.zeros((*bias.shape[:3], n))], axis=3)
    return attend, bias


def masked_row_terms(
    case: Case,
    policy: str,
    rows: tuple[int, int] | None = None,
    drawn: tuple | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """(attend, bias, keywords for dot_product_attention) of query rows `rows` under a
    masked-row policy, torch's extra key positions included. "fill" and "as-written(...)"
    become the "fill" policy with a fill per key (conformance.cases.written)."""
    parts: dict[str, np.ndarray] = {}
    attend, bias = build_mask(case, rows, drawn, parts=parts)
    if policy != "fill" and not is_as_written(policy):
        attend, bias = _extra_mask(case.extra_keys, attend, bias)
        return attend, bias, {"masked_rows": policy}
    written: AsWritten = parse(policy)
    fill = written.fill_array(case, parts, bias)
    if case.extra_keys:  # appended keys are always visible: they carry no fill
        pad = [(0, 0)] * (fill.ndim - 1) + [(0, case.extra_keys)]
        fill = np.pad(np.broadcast_to(fill, (*fill.shape[:-1], case.shape.kv_len)), pad)
    attend, bias = _extra_mask(case.extra_keys, attend, bias)
    return attend, bias, {
        "masked_rows": "fill", "fill": fill, "written": written.dtype(case),
        "all_inf": written.empty, "zeroed": written.zeroed_rows(parts),
    }  # fmt: skip


def attend_rows(
    case: Case,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    masked_rows: str,
    rounding: Rounding,
    keep_weights: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """q [B,H,T,K], k [B,G,S',K], v [B,G,S',V] (S' = S + extra keys) -> (out [B,H,T,V],
    weights [B,H,T,S'] or None), one block of query rows at a time.

    Each block [t0, t1) gets the mask rows for those absolute query positions, so nothing
    of size [B, H, T, S] exists unless the weights are kept.
    """
    b, h, t, _ = q.shape
    out = np.empty((b, h, t, v.shape[-1]))
    weights = np.empty((b, h, t, k.shape[2])) if keep_weights else None
    drawn = drawn_masks(case)
    terms = without_alibi(case).scores  # ALiBi arrives inside `bias` (build_mask)
    for t0, t1 in row_blocks(case, ROW_BLOCK_ELEMENTS):
        # issue 14: "fill" and "as-written" policies carry a fill per key (masked_row_terms)
        attend, bias, policy = masked_row_terms(case, masked_rows, (t0, t1), drawn)
        o, p = dot_product_attention(
            q[:, :, t0:t1], k, v, scale=case.effective_scale, attend=attend, bias=bias,
            rounding=rounding, terms=terms, **policy,
        )  # fmt: skip
        out[:, :, t0:t1] = o
        if weights is not None:
            weights[:, :, t0:t1] = p
    return out, weights


def _keeps_weights(case: Case) -> bool:
    s = case.shape
    size = s.batch * int(np.prod(s.outer)) * s.num_heads
    size *= s.query_len * (s.kv_len + case.extra_keys)
    return bool({"weights", "weights_mean"} & set(case.compare)) or size <= WEIGHTS_KEPT_ELEMENTS


def _to_sequence(case: Case, x: np.ndarray, inner: tuple[int, ...]) -> np.ndarray:
    """[B, *inner, D] -> [B * outer, L, D]: non-attended axes join the batch."""
    axes = case.shape.attention_axes
    if not axes:
        return x
    n = x.ndim
    outer = [i for i in range(1, n - 1) if i not in axes]
    moved = np.transpose(x, (0, *outer, *axes, n - 1))
    lead = int(np.prod([x.shape[i] for i in (0, *outer)]))
    return moved.reshape(lead, -1, x.shape[-1])


def _from_sequence(case: Case, y: np.ndarray, like_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of _to_sequence for the output [B * outer, T, Do] -> [B, *inner, Do]."""
    axes = case.shape.attention_axes
    if not axes:
        return y
    n = len(like_shape)
    outer = [i for i in range(1, n - 1) if i not in axes]
    order = (0, *outer, *axes)
    moved_shape = tuple(like_shape[i] for i in order) + (y.shape[-1],)
    moved = y.reshape(moved_shape)
    inverse = np.argsort((*order, n - 1))
    return np.transpose(moved, inverse)


def project_heads(x: np.ndarray, w: np.ndarray, b: np.ndarray, rounding: Rounding) -> np.ndarray:
    """x [B, L, D], w [N, D, K], b [N, K] -> [B, N, L, K]."""
    return rounding(rounding(np.einsum("bld,ndk->bnlk", x, w)) + b[None, :, None, :])


def attention(
    case: Case,
    inputs: CaseInputs,
    *,
    masked_rows: str | None = None,
    rounding: Rounding = _identity,
    table_dtype: type = np.float64,
) -> dict[str, np.ndarray]:
    """Everything a case can compare: output, per-head weights, head-averaged weights (the
    weights only when compared or small; see WEIGHTS_KEPT_ELEMENTS). `table_dtype`: where
    rotary embeddings compute their cos/sin tables (conformance.cases.rotary.apply_rope)."""
    policy = masked_rows or case.mask.fully_masked_rows
    keep = _keeps_weights(case)
    a, w = inputs.arrays, inputs.weights
    if case.mode == "kernel":
        q, k = apply_rope(case, a["q"], a["k"], rounding, table_dtype)  # issue 14: RoPE
        out, probs = attend_rows(
            case, q, k, a["v"], masked_rows=policy, rounding=rounding, keep_weights=keep
        )
        return _with_weights({"output": out}, probs)

    query = _to_sequence(case, a["query"], case.shape.query_shape)
    key = _to_sequence(case, a["key"], case.shape.kv_shape)
    value = _to_sequence(case, a["value"], case.shape.kv_shape)
    q = project_heads(query, w["wq"], w["bq"], rounding)  # [B, H, T, K]
    k = project_heads(key, w["wk"], w["bk"], rounding)  # [B, G, S, K]
    v = project_heads(value, w["wv"], w["bv"], rounding)  # [B, G, S, V]
    q, k = apply_rope(case, q, k, rounding, table_dtype)  # issue 14: RoPE after projection
    k, v = _extra_keys(case, w, k, v)
    heads, probs = attend_rows(
        case, q, k, v, masked_rows=policy, rounding=rounding, keep_weights=keep
    )
    y = rounding(rounding(np.einsum("bhtv,hvd->btd", heads, w["wo"])) + w["bo"])
    y = _from_sequence(case, y, a["query"].shape)
    return _with_weights({"output": y}, probs)


def _with_weights(out: dict, probs: np.ndarray | None) -> dict:
    if probs is not None:
        out["weights"] = probs
        out["weights_mean"] = probs.mean(axis=1)
    return out


def _float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def baseline(case: Case, inputs: CaseInputs, masked_rows: str | None = None) -> dict:
    """A straightforward implementation in the case dtype (see the module docstring)."""
    if case.dtype == "float32":
        native = CaseInputs(
            dtype=case.dtype,
            arrays={k: _float32(x) for k, x in inputs.arrays.items()},
            weights={k: _float32(x) for k, x in inputs.weights.items()},
        )
        out = attention(
            case, native, masked_rows=masked_rows, rounding=_float32, table_dtype=np.float32
        )
        return {name: x.astype(np.float64) for name, x in out.items()}
    # Rotary tables: float32 for half precision (implementations build them in float32).
    table = np.float64 if case.dtype == "float64" else np.float32
    return attention(
        case, inputs, masked_rows=masked_rows, rounding=lambda x: round_to(x, case.dtype),
        table_dtype=table,
    )  # fmt: skip
