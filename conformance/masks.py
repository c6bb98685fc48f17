"""Neutral masks: build them from a case, convert them to each framework's convention.

Neutral form (the reference's): `attend` is a boolean array [B, 1|H, T, S], True = the query
may attend to the key; `bias` is a float64 array [B, 1|H, T, S] added to the logits (0/-inf
entries for an additive mask, finite values for an attention bias). Either may be None.

The conversions live here once, so adapters never rewrite them.
"""

from __future__ import annotations

import numpy as np

from .case import Case
from .score_terms import alibi_for_case
from .seeding import stream


def causal_offset(case: Case) -> int:
    """Diagonal offset of the causal/window band: 0 top-left, S - T bottom-right."""
    s = case.shape
    return s.kv_len - s.query_len if case.mask.causal == "bottom-right" else 0


def build_mask(case: Case) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(attend [B, 1|H, T, S] bool or None, bias [B, 1|H, T, S] float64 or None)."""
    s, m = case.shape, case.mask
    b, t, n = s.batch, s.query_len, s.kv_len
    heads = s.num_heads if m.per_head else 1
    rows = np.arange(t)[:, None]
    cols = np.arange(n)[None, :]
    attend = None

    def restrict(extra: np.ndarray) -> None:
        nonlocal attend
        full = np.broadcast_to(extra, (b, heads, t, n))
        attend = full.copy() if attend is None else attend & full

    offset = causal_offset(case)
    if m.causal:
        restrict(cols <= rows + offset)
    if m.window is not None:
        left, right = m.window
        restrict((cols >= rows + offset - left) & (cols <= rows + offset + right))
    if m.key_padding is not None:
        lengths = np.asarray(m.key_padding)[:, None, None, None]
        restrict(np.arange(n)[None, None, None, :] < lengths)
    if m.query_padding is not None:
        lengths = np.asarray(m.query_padding)[:, None, None, None]
        restrict(np.arange(t)[None, None, :, None] < lengths)
    # A case with stored inputs (an imported peer-suite case) carries its own random/additive
    # mask arrays: `random`/`additive`/`bias` then describe them instead of drawing them.
    stored = _stored_masks(case)
    if m.random_density is not None:
        if "mask.attend" in stored:
            restrict(stored["mask.attend"].astype(bool))
        else:
            draws = stream(case.data_key, "mask.random").random((b, heads, t, n))
            restrict(draws >= m.random_density)
    if m.masked_rows:
        keep = np.ones((b, 1, t, 1), dtype=bool)
        for bi, ti in m.masked_rows:
            keep[bi, 0, ti, 0] = False
        restrict(keep)

    bias = None
    if "mask.bias" in stored and (m.additive_density is not None or m.bias_scale is not None):
        bias = np.broadcast_to(stored["mask.bias"].astype(np.float64), (b, heads, t, n)).copy()
        return attend, bias
    if m.additive_density is not None:
        draws = stream(case.data_key, "mask.additive").random((b, heads, t, n))
        bias = np.where(draws < m.additive_density, -np.inf, 0.0)
    if m.bias_scale is not None:
        values = m.bias_scale * stream(case.data_key, "mask.bias").standard_normal((b, heads, t, n))
        bias = values if bias is None else bias + values
    # --- issue 14: ALiBi is an additive bias [B, H, T, S] (conformance.score_terms) ---
    alibi = alibi_for_case(case)
    if alibi is not None:
        bias = alibi if bias is None else bias + alibi  # broadcasts 1 -> H heads
    # --- end issue 14 ---
    return attend, bias


def _stored_masks(case: Case) -> dict[str, np.ndarray]:
    if not case.inputs:
        return {}
    from .inputs import STORED_MASKS, stored_group  # local: inputs is the heavier module

    return {k: v for k, v in stored_group(case.inputs).items() if k in STORED_MASKS}


def visible(case: Case) -> np.ndarray | None:
    """Boolean [B, 1|H, T, S]: keys not masked by either the boolean or additive part."""
    attend, bias = build_mask(case)
    if bias is not None:
        finite = np.isfinite(bias)
        attend = finite if attend is None else attend & finite
    return attend


# --- conversions to framework conventions -------------------------------------------------


def to_true_masked(attend: np.ndarray) -> np.ndarray:
    """torch nn.MultiheadAttention's boolean convention: True = masked out."""
    return ~attend


def to_additive(attend: np.ndarray, dtype: str | np.dtype = np.float64) -> np.ndarray:
    """0 where attended, -inf where masked (torch/ONNX/JAX float masks)."""
    return np.where(attend, 0.0, -np.inf).astype(dtype)


def combined_additive(
    attend: np.ndarray | None, bias: np.ndarray | None, dtype: str | np.dtype = np.float64
) -> np.ndarray | None:
    """One additive mask carrying both parts, or None when the case has no mask."""
    if attend is None and bias is None:
        return None
    if attend is None:
        return bias.astype(dtype)
    out = to_additive(attend, np.float64)
    if bias is not None:
        out = out + bias
    return out.astype(dtype)


def picture(attend: np.ndarray | None, bias: np.ndarray | None = None, limit: int = 40) -> str:
    """A text picture of batch 0, head 0: '#' attended, '.' masked, '-' -inf additive."""
    if attend is None and bias is None:
        return "(no mask: every query attends to every key)"
    grid = attend[0, 0] if attend is not None else np.ones(bias.shape[2:], dtype=bool)
    neg = np.isneginf(bias[0, 0]) if bias is not None else np.zeros_like(grid)
    lines = []
    for t in range(min(grid.shape[0], limit)):
        chars = []
        for s in range(min(grid.shape[1], limit)):
            chars.append("-" if neg[t, s] else ("#" if grid[t, s] else "."))
        lines.append(f"t={t:<3d} " + "".join(chars))
    return "\n".join(lines)
