"""A case's mask in the form a plain function takes (`mask_for`): additive, attend or masked,
and a finite bias apart from a boolean mask (`bias_for`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cases.case import Case
from ..cases.masks import build_mask, combined_additive, fill_value, to_true_masked, visible
from .adapter import Unsupported
from .conventions import MASK_FORMS


def mask_for(case: Case, form: str, *, broadcast: bool = True) -> np.ndarray | None:
    """The case's mask in one of MASK_FORMS, [B, H, T, S] (or [B, 1|H, T, S] unbroadcast).

    additive: float in the case dtype's storage form, 0 / -inf plus any finite bias
    attend:   bool, True = the query may attend to the key (SDPA, JAX, Keras, Flax, ONNX)
    masked:   bool, True = masked out (torch nn.MultiheadAttention)
    None when the case has no mask.
    """
    if form not in MASK_FORMS:
        raise ValueError(f"mask must be one of {MASK_FORMS}, got {form!r}")
    if case.mask.is_empty() or form == "none":
        return None
    from ..cases.dtypes import STORAGE

    attend, bias = build_mask(case)
    if form == "additive":
        mask = combined_additive(attend, bias, STORAGE[case.dtype], fill=fill_value(case))
    else:
        if bias is not None and np.any(np.isfinite(bias) & (bias != 0)):
            raise Unsupported("a finite attention bias cannot travel as a boolean mask")
        seen = visible(case)
        mask = seen if form == "attend" else to_true_masked(seen)
    if broadcast and mask is not None:
        s = case.shape
        mask = np.ascontiguousarray(
            np.broadcast_to(mask, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return mask


def bias_for(case: Case, *, broadcast: bool = True) -> np.ndarray | None:
    """The finite additive bias of a case, [B, H, T, S] in the storage dtype (masked positions
    hold 0: the boolean mask removes them), or None when the case has no finite bias. With a
    boolean mask this is the pair "bool mask + separate bias" (e.g. SDPA-like kernels taking
    attn_mask and a relative-position bias apart)."""
    from ..cases.dtypes import STORAGE

    _, bias = build_mask(case)
    if bias is None or not np.any(np.isfinite(bias) & (bias != 0)):
        return None
    out = np.where(np.isfinite(bias), bias, 0.0).astype(STORAGE[case.dtype])
    if broadcast:
        s = case.shape
        out = np.ascontiguousarray(
            np.broadcast_to(out, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return out


def _split_mask(case: Case, form: str, broadcast: bool) -> tuple[np.ndarray | None, Any]:
    """(boolean mask in `form` without the bias check, finite bias or None)."""
    if case.mask.is_empty():
        return None, None
    seen = visible(case)
    mask = None if seen is None else (seen if form == "attend" else to_true_masked(seen))
    if broadcast and mask is not None:
        s = case.shape
        mask = np.ascontiguousarray(
            np.broadcast_to(mask, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return mask, bias_for(case, broadcast=broadcast)
