"""Score terms of modern attention: logit soft-capping, ALiBi biases and attention sinks.

Each is a function of absolute position index arrays (query positions, key positions) and the
head, never of a whole [T, S] matrix, so a blockwise computation can call it per block.
Shape letters: H query heads, T queries, S keys.

The order in which they act on one head's scaled logits x = scale * q.k is fixed here, because
every native implementation agrees on it (Gemma 2, FlashAttention, the ONNX Attention reference,
ORT GroupQueryAttention):

    x -> softcap(x) = cap * tanh(x / cap)       (before any bias or mask: a masked -inf
                                                  would otherwise become a finite -cap)
      -> + alibi(h, t, s) + bias(t, s)          (additive terms)
      -> masked keys removed
      -> softmax with an optional sink logit per head in the denominator:
         p_s = exp(x_s) / (exp(sink_h) + sum_s' exp(x_s'))   (the sink takes the rest)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .case import Case

ALIBI_KINDS = ("standard",)


@dataclass(frozen=True)
class ScoreTerms:
    """Resolved score terms of a case. Every tuple has one entry per query head (H)."""

    softcap: float | None = None  # cap > 0: logits -> cap * tanh(logits / cap)
    alibi: tuple[float, ...] | None = None  # slope per head: bias -slope * |t + offset - s|
    sink: tuple[float, ...] | None = None  # sink logit per head, added to the denominator
    alibi_standard: bool = False  # the slopes are the paper's standard ones (for adapters)

    def is_empty(self) -> bool:
        return self.softcap is None and self.alibi is None and self.sink is None

    @property
    def off_by_one(self) -> bool:
        """Every sink logit is 0: softmax_1 / ORT's smooth softmax, exp(0) = 1 added."""
        return self.sink is not None and all(s == 0.0 for s in self.sink)


def standard_alibi_slopes(num_heads: int) -> tuple[float, ...]:
    """The ALiBi paper's slopes (Press et al. 2022, the authors' `get_slopes`).

    For H a power of two: 2^(-8 (h + 1) / H). Otherwise the slopes of the closest smaller power
    of two n, then every other slope of 2n, as the reference code (and BLOOM, MPT) do.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return tuple(power_of_two(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = power_of_two(2 * closest)[0::2][: num_heads - closest]
    return tuple(power_of_two(closest) + extra)


def softcap(logits: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(logits / cap): smooth, odd, bounded by +-cap, ~identity for |x| << cap."""
    return cap * np.tanh(logits / cap)


def alibi_bias(
    slopes: np.ndarray, query_pos: np.ndarray, key_pos: np.ndarray, offset: int
) -> np.ndarray:
    """slopes [H], query_pos [T], key_pos [S] -> bias [H, T, S] = -slope_h * |t + offset - s|.

    `offset` places query t at key position t + offset (S - T for queries that end the key
    sequence, as in decoding and FlashAttention). Under a bottom-right causal mask only keys
    s <= t + offset remain, where this is the paper's -slope * (t + offset - s); without one it
    is the symmetric (bidirectional) form.
    """
    distance = np.abs(query_pos[:, None] + offset - key_pos[None, :]).astype(np.float64)
    return -np.asarray(slopes, dtype=np.float64)[:, None, None] * distance[None]


def sink_denominator_term(sink: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """exp(sink_h - peak): the sink's share of a softmax denominator shifted by `peak`.

    sink [H] broadcast against peak [..., H, T, 1] (the running maximum of the row).
    """
    return np.exp(np.asarray(sink, dtype=np.float64)[:, None, None] - peak)


def alibi_offset(case: Case) -> int:
    """Key position of query 0 for ALiBi distances: S - T, queries end the key sequence (as in
    decoding, chunked prefill and FlashAttention's alibi_slopes), whatever the mask; so the
    bias does not change when an adapter moves a causal mask into a flag."""
    return case.shape.kv_len - case.shape.query_len


def alibi_for_case(case: Case, rows: tuple[int, int] | None = None) -> np.ndarray | None:
    """The case's ALiBi term as an additive bias [B, H, T, S] (None without ALiBi); `rows` =
    (t0, t1): query rows t0 <= t < t1 only (the reference's row blocks).

    ALiBi is a bias, so it travels with the neutral mask's bias (conformance.cases.masks.build_mask):
    every adapter that takes an additive attention bias receives it there, which is how BLOOM
    and MPT feed it to SDPA-style kernels. An adapter with a native ALiBi parameter removes it
    from the case first and passes the slopes.
    """
    if case.scores is None or case.scores.alibi is None:
        return None
    s = case.shape
    t0, t1 = rows if rows is not None else (0, s.query_len)
    heads = alibi_bias(
        np.asarray(case.scores.alibi), np.arange(t0, t1), np.arange(s.kv_len), alibi_offset(case)
    )
    return np.broadcast_to(heads[None], (s.batch, *heads.shape)).copy()


def without_alibi(case: Case) -> Case:
    """The case with its ALiBi term removed (for adapters that pass the slopes natively)."""
    import dataclasses

    if case.scores is None or case.scores.alibi is None:
        return case
    scores = dataclasses.replace(case.scores, alibi=None, alibi_standard=False)
    return dataclasses.replace(case, scores=None if scores.is_empty() else scores)


def describe_terms(case: Case, limit: int = 12) -> list[str]:
    """`conformance show` lines: the terms, and head 0's ALiBi bias as numbers (last query)."""
    terms = case.scores
    nums = lambda xs: "[" + ", ".join(f"{x:.4g}" for x in xs) + "]"  # noqa: E731
    lines = ["  scores      applied in order: softcap -> + ALiBi + bias -> mask -> softmax(+sink)"]
    if terms.softcap is not None:
        lines.append(f"  softcap     {terms.softcap:g} * tanh(logits / {terms.softcap:g})")
    if terms.alibi is not None:
        kind = "standard slopes" if terms.alibi_standard else "slopes"
        lines.append(f"  alibi       {kind} per head {nums(terms.alibi)}")
        s = case.shape
        row = alibi_bias(np.asarray(terms.alibi[:1]), np.arange(s.query_len)[-1:],
                         np.arange(s.kv_len)[:limit], alibi_offset(case))[0, 0] + 0.0  # fmt: skip
        lines.append(f"              head 0, last query, keys 0..{len(row) - 1}: {nums(row)}")
    if terms.sink is not None:
        what = "zero (off-by-one softmax)" if terms.off_by_one else nums(terms.sink)
        lines.append(f"  sink        per-head sink logit in the denominator: {what}")
    return lines
