"""Size bounds of generated cases (`Limits`) and the row lengths they allow.

Small limits keep one example to milliseconds; kernel-scale limits (conformance fuzz --tier
default|large) draw rows across the block sizes tiled kernels use, under a per-example budget
of logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass(frozen=True)
class Limits:
    """Upper bounds on generated sizes (lower bounds where it matters)."""

    max_batch: int = 3
    min_batch: int = 1
    max_len: int = 6  # T and S
    max_heads: int = 4
    max_dim: int = 8  # K and V
    max_model_dim: int = 12  # Dq, Dk, Dv, Do when free
    max_inner: int = 3  # size of each multi-axis inner axis
    # Kernel scale (off when 0): T and S may also reach long_len, drawn mostly one below, at
    # and one above the block sizes tiled kernels use, with B*H*T*S <= max_elements per example.
    long_len: int = 0
    max_elements: int = 2**20


DEFAULT_LIMITS = Limits()
# Multi-block sizes under a per-example budget (conformance fuzz --tier default): rows cross
# key and query blocks of 32-1024, so online-softmax rescaling and tail blocks are exercised.
KERNEL_SCALE_LIMITS = Limits(max_batch=2, max_heads=4, max_dim=64, long_len=1025)
# Per size tier (conformance fuzz --tier): large reaches 8k-token rows, B = 1, up to 2^24 logits.
LIMITS_BY_TIER = {
    "small": DEFAULT_LIMITS,
    "default": KERNEL_SCALE_LIMITS,
    "large": Limits(max_batch=1, max_heads=4, max_dim=128, long_len=8193, max_elements=2**24),
}
BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def row_lengths(limits: Limits, cap: int) -> st.SearchStrategy[int]:
    """T or S: 1..max_len, or (kernel scale) a block edge +-1 or any length up to long_len;
    never above cap (the per-example budget)."""
    short = st.integers(1, max(1, min(limits.max_len, cap)))
    top = min(limits.long_len, cap)
    if top <= limits.max_len:
        return short
    edges = [n for b in BLOCK_SIZES for n in (b - 1, b, b + 1) if limits.max_len < n <= top]
    long = st.integers(limits.max_len + 1, top)
    return st.one_of(short, st.sampled_from(edges), long) if edges else st.one_of(short, long)
