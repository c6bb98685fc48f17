"""Conversions between the canonical weight/array layout and the frameworks' native ones.

They live here once so adapters stay thin translators (and so users' adapters can reuse them).
Canonical (see conformance.cases.inputs): per-head projections w [N, D, K], b [N, K]; output
projection wo [H, V, Do], bo [Do]; kernel tensors [B, H, T, K] ("BHTK").

Feature e of a projected vector belongs to head e // K in every framework, which is what makes
all of these plain reshapes and transposes.
"""

from __future__ import annotations

import numpy as np

# --- projections ---------------------------------------------------------------------------


def to_linear(w: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-head w [N, D, K], b [N, K] -> torch Linear weight [N*K, D] (y = x W^T + b), bias [N*K]."""
    n, d, k = w.shape
    weight = np.transpose(w, (0, 2, 1)).reshape(n * k, d)
    return weight, (None if b is None else b.reshape(n * k))


def from_linear(
    weight: np.ndarray, bias: np.ndarray | None, num_heads: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """torch Linear weight [N*K, D], bias [N*K] -> per-head w [N, D, K], b [N, K]."""
    out, d = weight.shape
    k = out // num_heads
    w = np.transpose(weight.reshape(num_heads, k, d), (0, 2, 1))
    return w, (None if bias is None else bias.reshape(num_heads, k))


def to_linear_out(wo: np.ndarray) -> np.ndarray:
    """Output projection wo [H, V, Do] -> torch Linear weight [Do, H*V]."""
    h, v, do = wo.shape
    return wo.reshape(h * v, do).T


def from_linear_out(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """torch Linear weight [Do, H*V] -> wo [H, V, Do]."""
    do, hv = weight.shape
    return weight.T.reshape(num_heads, hv // num_heads, do)


def to_packed_in_proj(
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    bq=None,
    bk=None,
    bv=None,  # noqa: ANN001
) -> tuple[np.ndarray, np.ndarray | None]:
    """torch nn.MultiheadAttention's packed in_proj_weight [3E, E] (rows q, k, v) and bias [3E]."""
    parts = [to_linear(w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv))]
    weight = np.concatenate([p[0] for p in parts], axis=0)
    bias = None if bq is None else np.concatenate([p[1] for p in parts], axis=0)
    return weight, bias


def from_packed_in_proj(
    weight: np.ndarray, bias: np.ndarray | None, num_heads: int
) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
    """Inverse of to_packed_in_proj: [3E, E] (rows q, k, v) and [3E] -> ((wq, bq), (wk, bk),
    (wv, bv)), each per-head w [H, E, E/H], b [H, E/H] (None without a bias).

    Also maps gradients back: the gradient of a packed parameter has the parameter's layout.
    """
    thirds = np.split(weight, 3, axis=0)
    biases = [None] * 3 if bias is None else np.split(bias, 3)
    return tuple(from_linear(w, b, num_heads) for w, b in zip(thirds, biases, strict=True))


def to_einsum_kernel(w: np.ndarray) -> np.ndarray:
    """Per-head w [N, D, K] -> Keras EinsumDense / Flax DenseGeneral kernel [D, N, K]."""
    return np.transpose(w, (1, 0, 2))


def from_einsum_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras/Flax kernel [D, N, K] -> per-head w [N, D, K]."""
    return np.transpose(kernel, (1, 0, 2))


# Keras/Flax output kernels are [H, V, Do], biases [N, K] and [Do]: identical to canonical.


def repeat_kv_heads(x: np.ndarray, num_heads: int, axis: int = 1) -> np.ndarray:
    """Expand G key/value heads to H query heads the canonical way (head h uses h // r)."""
    return np.repeat(x, num_heads // x.shape[axis], axis=axis)


# --- kernel-mode tensors -------------------------------------------------------------------


def bhtk_to_bthk(x: np.ndarray) -> np.ndarray:
    """[B, H, T, K] -> [B, T, H, K] (JAX's "BTNH" layout)."""
    return np.transpose(x, (0, 2, 1, 3))


def bthk_to_bhtk(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 1, 3))


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, H, T, K] -> [B, T, H*K] (ONNX's 3-D form)."""
    b, h, t, k = x.shape
    return np.transpose(x, (0, 2, 1, 3)).reshape(b, t, h * k)


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, T, H*K] -> [B, H, T, K]."""
    b, t, hk = x.shape
    return np.transpose(x.reshape(b, t, num_heads, hk // num_heads), (0, 2, 1, 3))
