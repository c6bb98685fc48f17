"""The `mask:` section: the neutral mask components (causal, padding, seeded masks, windows,
masked rows), packed segments, padding side and finite fills.
"""

from __future__ import annotations

from typing import Any

from ..cases.case import CAUSAL_ALIGNMENTS, FILL_WORDS, MASKED_ROW_POLICIES, PADDING_SIDES, Mask
from .keys import MASK_KEYS
from .limits import MAX_BIAS_SCALE, yaml_number_hint
from .values import _bool, _check_keys, _choice, _Ctx, _density, _int_list, _mapping, _number, _show
from .yamlload import LocatedDict


def _resolve_mask(ctx: _Ctx, node: LocatedDict, shape: dict) -> Mask:
    _check_keys(ctx, node, MASK_KEYS, "mask")
    kw: dict[str, Any] = {}
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "causal" in node:
        value = node["causal"]
        if value is True:
            value = "top-left"
        if value is not False:
            kw["causal"] = _choice(ctx, value, node, "causal", CAUSAL_ALIGNMENTS)
    for key, limit in (("key_padding", s), ("query_padding", t)):
        if key in node:
            lengths = _int_list(ctx, node[key], node, key)
            if len(lengths) != b:
                raise ctx.error(
                    f"needs one length per batch element ({b}), got {len(lengths)}", node, key
                )
            if max(lengths) > limit:
                raise ctx.error(f"lengths must be <= {limit}, got {max(lengths)}", node, key)
            kw[key] = lengths
    if "random" in node:
        kw["random_density"] = _density(ctx, node["random"], node, "random")
    if "additive" in node:
        kw["additive_density"] = _density(ctx, node["additive"], node, "additive")
    if "bias" in node:
        inner = _mapping(ctx, node["bias"], node, "bias")
        _check_keys(ctx, inner, {"scale": "standard deviation"}, "mask.bias")
        kw["bias_scale"] = _number(ctx, inner.get("scale", 1.0), inner, "scale")
        if not 0 <= kw["bias_scale"] <= MAX_BIAS_SCALE:  # issue 18: no inf biases
            raise ctx.error(
                f"bias scale must be within [0, {MAX_BIAS_SCALE:g}], got {kw['bias_scale']:g}",
                inner, "scale",
            )  # fmt: skip
    if "per_head" in node:
        kw["per_head"] = _bool(ctx, node["per_head"], node, "per_head")
        if kw["per_head"] and not ({"random_density", "additive_density", "bias_scale"} & set(kw)):
            raise ctx.error(
                "per_head needs a random, additive or bias mask to vary", node, "per_head"
            )
    if "window" in node:
        window = _int_list(ctx, node["window"], node, "window")
        if len(window) != 2:
            raise ctx.error("must be [left, right]", node, "window")
        kw["window"] = window
    if "masked_rows" in node:
        rows = node["masked_rows"]
        if not isinstance(rows, list) or not all(
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in r)
            for r in rows
        ):
            raise ctx.error("must be a list of [batch, query_row] pairs", node, "masked_rows")
        for bi, ti in rows:
            if not (0 <= bi < b and 0 <= ti < t):
                raise ctx.error(
                    f"row [{bi}, {ti}] is outside batch {b} x query_len {t}", node, "masked_rows"
                )
        kw["masked_rows"] = tuple(tuple(r) for r in rows)
    if "fully_masked_rows" in node:
        kw["fully_masked_rows"] = _choice(
            ctx, node["fully_masked_rows"], node, "fully_masked_rows", MASKED_ROW_POLICIES
        )
    _resolve_packing(ctx, node, shape, kw)  # issue 14
    return Mask(**kw)


# Mask components that remove keys (a fill replaces their -inf).
_MASKING = ("causal", "key_padding", "query_padding", "random_density", "additive_density",
            "window", "masked_rows", "segments")  # fmt: skip


def _resolve_packing(ctx: _Ctx, node: LocatedDict, shape: dict, kw: dict[str, Any]) -> None:
    """Issue 14: `segments` (packed sequences), `padding_side` and `fill` (finite masking
    values as users write them)."""
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "segments" in node:
        rows = node["segments"]
        example = "e.g. segments: [[3, 5, 2], [10]] for batch 2, query_len 10"
        if not isinstance(rows, list) or not all(isinstance(r, list) and r for r in rows):
            raise ctx.error(
                "must be a list with one list of segment lengths per batch element", node,
                "segments", example,
            )  # fmt: skip
        if t != s:
            raise ctx.error(
                f"packed segments cover the query and key rows alike: query_len ({t}) must "
                f"equal kv_len ({s})", node, "segments",
            )  # fmt: skip
        if len(rows) != b:
            raise ctx.error(
                f"needs one list of segment lengths per batch element ({b}), got {len(rows)}",
                node, "segments", example,
            )  # fmt: skip
        out = []
        for i, row in enumerate(rows):
            lengths = _int_list(ctx, row, node, "segments", minimum=1)
            if sum(lengths) != t:
                raise ctx.error(
                    f"segment lengths of batch element {i} sum to {sum(lengths)}, not to the row "
                    f"length {t} (query_len = kv_len)", node, "segments",
                    "pad the row with a last segment, or use key_padding for padding",
                )  # fmt: skip
            out.append(lengths)
        kw["segments"] = tuple(out)
    if "padding_side" in node:
        kw["padding_side"] = _choice(ctx, node["padding_side"], node, "padding_side", PADDING_SIDES)
        if "key_padding" not in kw and "query_padding" not in kw:
            raise ctx.error(
                "padding_side says where key_padding/query_padding lengths sit; this mask has "
                "neither", node, "padding_side", "add key_padding: [...] or drop padding_side",
            )  # fmt: skip
    if "fill" in node:
        value = node["fill"]
        if value in FILL_WORDS:
            kw["fill"] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(
                f"must be a negative number or finfo-min, got {_show(value)}", node, "fill",
                yaml_number_hint(value) or "e.g. fill: -1.0e9, fill: -10000 or fill: finfo-min",
            )  # fmt: skip
        else:
            fill = _number(ctx, value, node, "fill")
            if fill >= 0:
                raise ctx.error(
                    f"a fill must be < 0 (it is added to the masked logits), got {_show(value)}",
                    node, "fill", "e.g. -1.0e9 (tf_keras), -10000 (BERT) or finfo-min (HF)",
                )  # fmt: skip
            kw["fill"] = fill
        if not any(kw.get(k) not in (None, ()) for k in _MASKING):
            raise ctx.error(
                "a fill replaces the -inf of masked keys, and this mask masks no key", node,
                "fill", "add a mask component (causal, key_padding, random, ...)",
            )  # fmt: skip
    if kw.get("fully_masked_rows") == "fill" and "fill" not in kw:
        raise ctx.error(
            "fully_masked_rows: fill means the row as a finite fill writes it; this mask has "
            "no fill", node, "fully_masked_rows", "add fill: -1.0e9 (or -10000, finfo-min)",
        )  # fmt: skip
