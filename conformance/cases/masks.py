"""Neutral masks: build them from a case, convert them to each framework's convention.

Neutral form (the reference's): `attend` is a boolean array [B, 1|H, T, S], True = the query
may attend to the key; `bias` is a float64 array [B, 1|H, T, S] added to the logits (0/-inf
entries for an additive mask, finite values for an attention bias). Either may be None.

The conversions live here once, so adapters never rewrite them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .inputs import STORED_MASKS, stored_group
from .score_terms import alibi_for_case
from .seeding import stream

if TYPE_CHECKING:  # annotations only: case imports this module (Case.features)
    from .case import Case


def causal_offset(case: Case) -> int:
    """Diagonal offset of the causal/window band: 0 top-left, S - T bottom-right."""
    s = case.shape
    return s.kv_len - s.query_len if case.mask.causal == "bottom-right" else 0


def drawn_masks(case: Case) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The seeded (or stored) dense parts of a mask: (random attend, additive bias), each
    [B, 1|H, T, S] or None. Drawn whole, so a block of rows sees exactly the numbers the full
    mask has; the loader bounds their size per tier (spec.estimate_bytes)."""
    s, m = case.shape, case.mask
    b, t, n = s.batch, s.query_len, s.kv_len
    heads = s.num_heads if m.per_head else 1
    # A case with stored inputs (an imported peer-suite case) carries its own random/additive
    # mask arrays: `random`/`additive`/`bias` then describe them instead of drawing them.
    stored = _stored_masks(case)
    attend = None
    if m.random_density is not None:
        if "mask.attend" in stored:
            attend = np.broadcast_to(stored["mask.attend"].astype(bool), (b, heads, t, n))
        else:
            draws = stream(case.data_key, "mask.random").random((b, heads, t, n))
            attend = draws >= m.random_density
    bias = None
    if "mask.bias" in stored and (m.additive_density is not None or m.bias_scale is not None):
        bias = np.broadcast_to(stored["mask.bias"].astype(np.float64), (b, heads, t, n))
        return attend, bias
    if m.additive_density is not None:
        draws = stream(case.data_key, "mask.additive").random((b, heads, t, n))
        bias = np.where(draws < m.additive_density, -np.inf, 0.0)
    if m.bias_scale is not None:
        values = m.bias_scale * stream(case.data_key, "mask.bias").standard_normal((b, heads, t, n))
        bias = values if bias is None else bias + values
    return attend, bias


def build_mask(
    case: Case,
    rows: tuple[int, int] | None = None,
    drawn: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    parts: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(attend [B, 1|H, T, S] bool or None, bias [B, 1|H, T, S] float64 or None).

    `rows` = (t0, t1) builds query rows t0 <= t < t1 only ([B, 1|H, t1 - t0, S]): the
    reference works through long cases a block of rows at a time. `drawn` passes the
    case's drawn_masks() when the caller already has them (drawing once per case).
    `parts`, when given, receives each mask source's own attend array (broadcast views keyed
    by the source names of conformance.cases.written: "causal", "key-padding", ...); `attend`
    is their AND. The "as-written" masked-row policy needs to know which sources hid a key.
    """
    s, m = case.shape, case.mask
    b, t, n = s.batch, s.query_len, s.kv_len
    t0, t1 = rows if rows is not None else (0, t)
    heads = s.num_heads if m.per_head else 1
    rows_ = np.arange(t0, t1)[:, None]  # absolute query positions
    cols = np.arange(n)[None, :]
    attend = None

    def restrict(extra: np.ndarray, source: str) -> None:
        nonlocal attend
        full = np.broadcast_to(extra, (b, heads, t1 - t0, n))
        if parts is not None:
            parts[source] = full if source not in parts else parts[source] & full
        attend = full.copy() if attend is None else attend & full

    offset = causal_offset(case)
    if case.cache is not None and case.cache.lengths is not None:  # issue 14: mixed lengths
        # Sequence b holds held[b] keys and its queries end them: the band's offset is per
        # sequence (the loader requires bottom-right alignment), later keys are unused.
        held = np.asarray(case.cache.lengths)[:, None, None, None]
        offset = held - t
        restrict(np.arange(n)[None, None, None, :] < held, "cache-lengths")
    if m.causal:
        restrict(cols <= rows_ + offset, "causal")
    if m.window is not None:
        left, right = m.window
        restrict((cols >= rows_ + offset - left) & (cols <= rows_ + offset + right), "window")
    left = m.padding_side == "left"  # issue 14: valid tokens end the row (generation batches)
    if m.key_padding is not None:
        lengths = np.asarray(m.key_padding)[:, None, None, None]
        keys = np.arange(n)[None, None, None, :]
        restrict(keys >= n - lengths if left else keys < lengths, "key-padding")
    if m.query_padding is not None:
        lengths = np.asarray(m.query_padding)[:, None, None, None]
        queries = np.arange(t0, t1)[None, None, :, None]
        restrict(queries >= t - lengths if left else queries < lengths, "query-padding")
    if m.segments is not None:  # issue 14: packed sequences attend within their segment
        ids = segment_ids(case)  # [B, T] (T = S)
        restrict(ids[:, None, t0:t1, None] == ids[:, None, None, :], "segments")
    random_attend, bias = drawn if drawn is not None else drawn_masks(case)
    if random_attend is not None:
        restrict(random_attend[:, :, t0:t1], "bool-mask")
    if m.masked_rows:
        keep = np.ones((b, 1, t1 - t0, 1), dtype=bool)
        for bi, ti in m.masked_rows:
            if t0 <= ti < t1:
                keep[bi, 0, ti - t0, 0] = False
        restrict(keep, "masked-rows")
    if bias is not None:
        bias = np.array(bias[:, :, t0:t1], dtype=np.float64)
    # ALiBi is an additive bias (conformance.cases.score_terms), built for these rows only.
    alibi = alibi_for_case(case, (t0, t1))
    if alibi is not None:
        bias = alibi if bias is None else bias + alibi  # broadcasts 1 -> H heads
    return attend, bias


def segment_ids(case: Case) -> np.ndarray:
    """[B, T] int: the segment each token of a packed row belongs to (0, 1, ...), from the
    case's segment lengths (mask.segments; they sum to T = S)."""
    lengths = case.mask.segments
    return np.stack([np.repeat(np.arange(len(row)), row) for row in lengths])


def cu_seqlens(case: Case) -> np.ndarray:
    """[B, segments + 1] cumulative segment lengths per batch element (FlashAttention's
    cu_seqlens of each row), padded with the row length when rows differ in segment count."""
    rows = [np.concatenate([[0], np.cumsum(r)]) for r in case.mask.segments]
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), mode="edge") for r in rows])


def fill_value(case: Case) -> float:
    """The value masked keys carry in the case's additive float mask: -inf unless the case
    states a finite fill (mask.fill), which is then rounded to the case dtype, as a user's
    `mask * fill` in that dtype is: -1e9 overflows to -inf in float16, "finfo-min" is the
    dtype's most negative finite number."""
    fill = case.mask.fill
    if fill is None:
        return -np.inf
    from .dtypes import round_to

    if fill == "finfo-min":
        return dtype_min(case.dtype)
    with np.errstate(over="ignore"):
        return float(round_to(np.float64(fill), case.dtype))


def dtype_min(dtype: str) -> float:
    """The most negative finite number of `dtype` (torch.finfo(dtype).min)."""
    if dtype == "bfloat16":  # NumPy has no bfloat16: -(2 - 2^-7) * 2^127
        return -(2.0 - 2.0**-7) * 2.0**127
    from .dtypes import STORAGE

    return float(np.finfo(STORAGE[dtype]).min)


def row_blocks(case: Case, budget: int) -> list[tuple[int, int]]:
    """Query-row ranges [(t0, t1), ...] whose [B, H, rows, S] arrays hold <= budget elements
    (at least one row each)."""
    s = case.shape
    per_row = max(1, s.batch * s.num_heads * (s.kv_len + case.extra_keys))
    step = max(1, budget // per_row)
    return [(t0, min(t0 + step, s.query_len)) for t0 in range(0, s.query_len, step)]


def _stored_masks(case: Case) -> dict[str, np.ndarray]:
    if not case.inputs:
        return {}
    return {k: v for k, v in stored_group(case.inputs).items() if k in STORED_MASKS}


def visible(case: Case) -> np.ndarray | None:
    """Boolean [B, 1|H, T, S]: keys not masked by either the boolean or additive part."""
    attend, bias = build_mask(case)
    if bias is not None:
        finite = np.isfinite(bias)
        attend = finite if attend is None else attend & finite
    return attend


VISIBILITY_BUDGET = 2**24  # elements of one block of rows when scanning a long case's mask


def any_fully_masked_row(case: Case) -> bool:
    """Whether some query row sees no key, scanned a block of rows at a time (flat memory)."""
    drawn = drawn_masks(case)
    for rows in row_blocks(case, VISIBILITY_BUDGET):
        attend, bias = build_mask(case, rows, drawn)
        if bias is not None:
            finite = np.isfinite(bias)
            attend = finite if attend is None else attend & finite
        if attend is not None and bool((~attend.any(axis=-1)).any()):
            return True
    return False


# --- conversions to framework conventions -------------------------------------------------


def to_true_masked(attend: np.ndarray) -> np.ndarray:
    """torch nn.MultiheadAttention's boolean convention: True = masked out."""
    return ~attend


def to_additive(attend: np.ndarray, dtype: str | np.dtype = np.float64) -> np.ndarray:
    """0 where attended, -inf where masked (torch/ONNX/JAX float masks)."""
    return np.where(attend, 0.0, -np.inf).astype(dtype)


def combined_additive(
    attend: np.ndarray | None,
    bias: np.ndarray | None,
    dtype: str | np.dtype = np.float64,
    fill: float = -np.inf,
) -> np.ndarray | None:
    """One additive mask carrying both parts, or None when the case has no mask.

    `fill` (issue 14, masks.fill_value): the value masked keys carry, -inf by default; a finite
    fill is how BERT-era code (-10000), tf_keras (-1e9) and Hugging Face (finfo.min) write it:
    masked keys get `fill` plus any finite bias there."""
    if attend is None and bias is None:
        return None
    if np.isfinite(fill):
        masked = np.zeros((1, 1, 1, 1), dtype=bool) if attend is None else ~attend
        finite = np.zeros((1, 1, 1, 1))
        if bias is not None:
            masked = masked | ~np.isfinite(bias)
            finite = np.where(np.isfinite(bias), bias, 0.0)
        with np.errstate(over="ignore"):
            return (np.where(masked, fill, 0.0) + finite).astype(dtype)
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
