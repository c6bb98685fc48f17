"""A FlashAttention-style blockwise kernel in NumPy, with a switch per classic tiled-kernel bug
(test material, never shipped as an adapter).

The kernel walks query blocks of BLOCK_Q rows and, for each, key blocks of BLOCK_K keys with
the online softmax (running max m, running sum l, unnormalised accumulator acc), skips key
blocks the mask hides completely (as causal and varlen kernels do), and above SPLIT_KV keys
splits the key loop in two and combines the partial results (split-KV / flash decoding).
It computes in the inputs' dtype (float32 for float32 cases), like a real kernel.

Each name in BUGS plants one bug that tiled kernels are known to ship:

    acc-not-rescaled     the accumulator is not multiplied by exp(m_old - m_new) when the max grows
    sum-not-rescaled     the running sum l is not rescaled when the max grows
    stale-max            exponentials use the previous blocks' max, never the new block's
                         (exact in exact arithmetic, overflows once a later block's logits
                         exceed the running max by ~88 in float32)
    causal-skip          block skipping decides from the key block's last key only (a floor
                         where a ceil belongs), which drops the partly visible diagonal block
    tail-dropped         the last, partial key block is never visited
    tail-unmasked        the last key block is zero-padded to BLOCK_K and the padding is not masked
    query-tail-dropped   the last, partial query block is never computed (rows stay 0)
    fp16-accumulator     acc and l are kept in float16
    split-combine        split-KV partials are averaged by their sums without rescaling to a common max
"""

from __future__ import annotations

import numpy as np

BLOCK_Q = 64
BLOCK_K = 128
SPLIT_KV = 256  # key rows above this are split in two halves, combined at the end

BUGS = (
    "acc-not-rescaled",
    "sum-not-rescaled",
    "stale-max",
    "causal-skip",
    "tail-dropped",
    "tail-unmasked",
    "query-tail-dropped",
    "fp16-accumulator",
    "split-combine",
)


def _key_loop(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float,
    keys: range, bug: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Online softmax of q [B,H,Tb,K] over the key blocks starting at `keys`, with k [B,H,S,K],
    v [B,H,S,V] and mask [B,H,Tb,S] (additive) -> (acc [B,H,Tb,V], l [B,H,Tb,1], m [B,H,Tb,1])."""
    dtype = q.dtype
    acc_dtype = np.float16 if bug == "fp16-accumulator" else dtype
    b, h, tb, _ = q.shape
    s_total = k.shape[2]
    m = np.full((b, h, tb, 1), -np.inf, dtype=dtype)
    l_sum = np.zeros((b, h, tb, 1), dtype=acc_dtype)
    acc = np.zeros((b, h, tb, v.shape[-1]), dtype=acc_dtype)
    for s0 in keys:
        s1 = min(s0 + BLOCK_K, s_total)
        kb, vb = k[:, :, s0:s1], v[:, :, s0:s1]
        mb = None if mask is None else mask[:, :, :, s0:s1]
        if s1 - s0 < BLOCK_K:
            if bug == "tail-dropped" and s0 > 0:
                continue  # BUG: the loop bound was S // BLOCK_K blocks
            if bug == "tail-unmasked":
                pad = BLOCK_K - (s1 - s0)  # BUG: zero keys and values, logits 0, not masked
                kb = np.concatenate([kb, np.zeros((*kb.shape[:2], pad, kb.shape[3]), dtype)], 2)
                vb = np.concatenate([vb, np.zeros((*vb.shape[:2], pad, vb.shape[3]), dtype)], 2)
                if mb is not None:
                    mb = np.concatenate([mb, np.zeros((*mb.shape[:3], pad), dtype)], 3)
        if mb is not None:
            hidden = np.isneginf(mb)
            # A key block hidden from every row of the query block is skipped (causal, varlen).
            skip = hidden[..., -1:].all() if bug == "causal-skip" else hidden.all()
            if skip:
                continue
        logits = np.einsum("bhtk,bhsk->bhts", q, kb) * dtype.type(scale)
        if mb is not None:
            logits = logits + mb
        block_max = logits.max(axis=-1, keepdims=True)
        m_new = np.maximum(m, block_max)
        # Rows with every key so far masked keep m = -inf; shift by 0 there (no NaN from inf - inf).
        safe = np.where(np.isneginf(m_new), dtype.type(0), m_new)
        shift = m if bug == "stale-max" else safe
        shift = np.where(np.isneginf(shift), safe, shift)
        p = np.exp(logits - shift)
        alpha = np.exp(np.where(np.isneginf(m), -np.inf, m - shift)).astype(acc_dtype)
        pv = np.einsum("bhts,bhsv->bhtv", p, vb).astype(acc_dtype)
        psum = p.sum(axis=-1, keepdims=True).astype(acc_dtype)
        acc = (acc if bug == "acc-not-rescaled" else acc * alpha) + pv
        l_sum = (l_sum if bug == "sum-not-rescaled" else l_sum * alpha) + psum
        m = shift if bug == "stale-max" else m_new
    return acc.astype(dtype), l_sum.astype(dtype), m


def blockwise_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, *, scale: float,
    bug: str | None = None,
) -> np.ndarray:  # fmt: skip
    """q [B,H,T,K], k [B,G,S,K], v [B,G,S,V], additive mask [B,H,T,S] or None -> [B,H,T,V].

    Query head h reads key/value head h // (H / G). Rows whose every key is masked get NaN
    (the softmax of all -inf), what the cases expect by default.
    """
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; one of {BUGS}")
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    t_total, s_total = q.shape[2], k.shape[2]
    out = np.zeros((*q.shape[:3], v.shape[-1]), dtype=q.dtype)
    starts = range(0, s_total, BLOCK_K)
    splits = [starts]
    if s_total > SPLIT_KV:  # split-KV: two halves of the key blocks, combined below
        half = len(starts) // 2
        splits = [starts[:half], starts[half:]]
    for t0 in range(0, t_total, BLOCK_Q):
        t1 = min(t0 + BLOCK_Q, t_total)
        if bug == "query-tail-dropped" and t1 - t0 < BLOCK_Q and t0 > 0:
            continue  # BUG: the grid had T // BLOCK_Q query blocks
        qb = q[:, :, t0:t1]
        mb = None if mask is None else mask[:, :, t0:t1]
        parts = [_key_loop(qb, k, v, mb, scale, keys, bug) for keys in splits]
        if len(parts) == 1:
            acc, l_sum, _ = parts[0]
        elif bug == "split-combine":  # BUG: partial sums relative to different maxima
            (a1, l1, _), (a2, l2, _) = parts
            acc, l_sum = a1 + a2, l1 + l2
        else:
            (a1, l1, m1), (a2, l2, m2) = parts
            m = np.maximum(m1, m2)
            m = np.where(np.isneginf(m), 0, m)
            w1, w2 = np.exp(m1 - m), np.exp(m2 - m)
            acc, l_sum = a1 * w1 + a2 * w2, l1 * w1 + l2 * w2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, :, t0:t1] = acc / l_sum  # l = 0 (every key masked): 0/0 = NaN
    return out


def _unrescaled(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
    """The blockwise kernel with its accumulator not rescaled (for `conformance fuzz` tests)."""
    return blockwise_attention(q, k, v, mask, scale=scale, bug="acc-not-rescaled")


def _unrescaled_adapter():  # noqa: ANN202
    from conformance.adapter_api.plugin import (
        kernel_adapter,  # local: the kernel itself needs only NumPy
    )

    return kernel_adapter(_unrescaled, name="test.blockwise.acc-not-rescaled", mask="additive",
                          class_name="Unrescaled")  # fmt: skip


Unrescaled = _unrescaled_adapter()
