"""Rotary position embeddings (RoPE, Su et al. 2021) applied inside attention.

RoPE rotates each query and key vector by an angle proportional to its position, pair of dims
by pair of dims, so that q_m . k_n depends on the positions only through m - n. With d rotary
dims (the first d of each head's K; the rest pass through unrotated: "partial rotary", as in
GPT-NeoX, GPT-J, Phi) there are d / 2 pairs; pair i turns at the frequency

    inv_freq[i] = theta ** (-2 i / d)        (theta = 10000 in the paper and most models)

and a vector at position p has pair i rotated by the angle p * inv_freq[i]:

    (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)

The two conventions differ only in which dims form pair i:

- `half`        (GPT-NeoX, Llama, Hugging Face `rotate_half`, ONNX interleaved=0):
                x1 = x[i], x2 = x[i + d/2]
- `interleaved` (GPT-J, the original RoFormer, Cohere/GLM in transformers, ONNX interleaved=1):
                x1 = x[2i], x2 = x[2i + 1]

so one is the other after a fixed permutation of the rotary dims, and running weights made for
one under the other (the classic porting bug) rotates the wrong pairs.

Positions (what decoding with a cache does): key s sits at `offset + s`, query t at
`offset + S - T + t`: the queries end the key sequence, as in decoding, chunked prefill and the
ALiBi convention (conformance.cases.score_terms). `offset` shifts every position (a cache that already
holds `offset` earlier tokens); in exact arithmetic it changes nothing (only m - n matters), in
floating point it changes the angles' size and so their rounding.

Decoding (`decode:`) needs nothing more: with T = S the whole sequence rotated once equals
what a decoder does step by step (each step's new tokens at offset + cache length + i, the
cached keys keeping theirs; tests/test_rope_decode.py proves it). A step against a cache of
per-sequence lengths (`cache.lengths`, conformance.cases.kv_cache) puts sequence b's queries at the
end of its own cache: query t at offset + lengths[b] - T + t, a [B, T] table of positions
(tag `rope-per-sequence`); keys stay at offset + s.

Kernel mode rotates the given per-head q [B, H, T, K] and k [B, G, S, K]; layer mode rotates
them after the projections, before attention (as Llama's attention layer does). Values are
never rotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from .case import Case

ROPE_STYLES = ("half", "interleaved")
DEFAULT_THETA = 10000.0


@dataclass(frozen=True)
class Rope:
    """Resolved `rope:` key of a case."""

    style: str = "half"  # "half" | "interleaved"
    theta: float = DEFAULT_THETA  # frequency base
    rotary_dim: int | None = None  # rotated dims per head (even); None = all K
    offset: int = 0  # position of key 0 (tokens already before the keys)

    def dims(self, key_dim: int) -> int:
        return key_dim if self.rotary_dim is None else self.rotary_dim

    def partial(self, key_dim: int) -> bool:
        return self.dims(key_dim) < key_dim


def key_positions(case: Case) -> np.ndarray:
    """Absolute position of each key: offset + s, s in [0, S)."""
    return case.rope.offset + np.arange(case.shape.kv_len)


def query_positions(case: Case) -> np.ndarray:
    """Absolute position of each query: offset + S - T + t (the queries end the keys), [T];
    with cache lengths, [B, T]: offset + lengths[b] - T + t (each sequence's own end)."""
    s = case.shape
    t = np.arange(s.query_len)
    lengths = case.cache.lengths if case.cache is not None else None
    if lengths is not None:  # issue 14: per-sequence offsets
        return case.rope.offset + np.asarray(lengths)[:, None] - s.query_len + t[None, :]
    return case.rope.offset + s.kv_len - s.query_len + t


def inverse_frequencies(rope: Rope, key_dim: int, dtype: type = np.float64) -> np.ndarray:
    """theta ** (-2 i / d) for the d / 2 pairs, computed in `dtype` (float64 for the oracle;
    float32 as a float32 implementation builds its tables: 1 / theta ** (arange(0, d, 2) / d))."""
    d = rope.dims(key_dim)
    exponents = np.arange(0, d, 2).astype(dtype) / dtype(d)
    return (dtype(1.0) / (dtype(rope.theta) ** exponents)).astype(dtype)


def tables(
    rope: Rope, key_dim: int, positions: np.ndarray, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [..., L, d / 2]: the angle positions[..., l] * inv_freq[i], in `dtype`
    (positions [L], or [B, L] for per-sequence positions)."""
    angles = positions.astype(dtype)[..., None] * inverse_frequencies(rope, key_dim, dtype)
    return np.cos(angles), np.sin(angles)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def rotate(
    x: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    style: str,
    rounding: Callable[[np.ndarray], np.ndarray] = _identity,
) -> np.ndarray:
    """x [..., L, K] with cos/sin [L, d / 2] (or broadcasting to x's leading dims) -> x with
    its first d dims rotated by pairs."""
    half = cos.shape[-1]
    d = 2 * half
    rot, rest = x[..., :d], x[..., d:]
    if style == "half":
        x1, x2 = rot[..., :half], rot[..., half:]
    elif style == "interleaved":
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        raise ValueError(f"rope style must be one of {ROPE_STYLES}, got {style!r}")
    y1 = rounding(rounding(x1 * cos) - rounding(x2 * sin))
    y2 = rounding(rounding(x1 * sin) + rounding(x2 * cos))
    if style == "half":
        y = np.concatenate([y1, y2], axis=-1)
    else:
        y = np.stack([y1, y2], axis=-1).reshape(rot.shape)
    return np.concatenate([y, rest], axis=-1)


def apply_rope(
    case: Case,
    q: np.ndarray,
    k: np.ndarray,
    rounding: Callable[[np.ndarray], np.ndarray] = _identity,
    table_dtype: type = np.float64,
    inverse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """q [B, H, T, K], k [B, G, S, K] -> both rotated at their positions (no-op without rope).

    `table_dtype`: where the angles, cos and sin are computed (float64 for the oracle, float32
    for a same-dtype baseline, as implementations build their tables); `rounding` then rounds
    the tables and every operation of the rotation to the case dtype. `inverse`: rotate back
    (by minus the angles): a rotation's transpose, which is how a gradient flows through it.
    """
    rope = case.rope
    if rope is None:
        return q, k
    kd = case.shape.key_dim
    cq, sq = (rounding(t.astype(np.float64)) for t in tables(rope, kd, query_positions(case), table_dtype))  # fmt: skip
    ck, sk = (rounding(t.astype(np.float64)) for t in tables(rope, kd, key_positions(case), table_dtype))  # fmt: skip
    if cq.ndim == 3:  # per-sequence positions [B, T, d/2]: broadcast over the heads
        cq, sq = cq[:, None], sq[:, None]
    if inverse:
        sq, sk = -sq, -sk
    return rotate(q, cq, sq, rope.style, rounding), rotate(k, ck, sk, rope.style, rounding)


def half_to_interleaved(key_dim: int, rotary_dim: int | None = None) -> np.ndarray:
    """The permutation P of head dims with x_interleaved = x_half[..., P]: rotate-half's pair i
    (i, i + d/2) lands on (2i, 2i + 1); unrotated dims stay. Applied to the query and key
    weights (or tensors), it converts a checkpoint from one convention to the other, which is
    what a port must do and what the trap adapter leaves out."""
    d = key_dim if rotary_dim is None else rotary_dim
    half = d // 2
    perm = np.empty(d, dtype=np.int64)
    perm[0::2] = np.arange(half)
    perm[1::2] = np.arange(half) + half
    return np.concatenate([perm, np.arange(d, key_dim)])


def describe_rope(case: Case) -> list[str]:
    """`conformance show` lines: style, frequencies and positions."""
    rope = case.rope
    kd = case.shape.key_dim
    d = rope.dims(kd)
    pairs = "(i, i + d/2)" if rope.style == "half" else "(2i, 2i + 1)"
    q_pos, k_pos = query_positions(case), key_positions(case)
    span = lambda p: f"{p[0]}..{p[-1]}" if len(p) > 1 else f"{p[0]}"  # noqa: E731
    if q_pos.ndim == 2:  # issue 14: each sequence's queries end its own cache
        queries = ", ".join(f"{span(row)} (batch {b})" for b, row in enumerate(q_pos))
    else:
        queries = span(q_pos)
    lines = [
        f"  rope        {rope.style}: pairs {pairs} of the first {d} of {kd} dims rotated, "
        f"theta {rope.theta:g}",
        f"              query positions {queries}, key positions {span(k_pos)}"
        + (f" (offset {rope.offset})" if rope.offset else ""),
    ]
    if case.decode is not None and not case.decode.memory:
        d = case.decode
        first = rope.offset + d.prefix
        lines.append(
            f"              decoding: the prompt at {rope.offset}..{first - 1}, then each step's "
            f"new tokens at offset + cache length ({first}, {first + d.chunk}, ...)"
            if d.prefix
            else f"              decoding: each step's new tokens at offset + cache length "
            f"({rope.offset}, {rope.offset + d.chunk}, ...)"
        )
    return lines
