"""The `scores:` section: logit soft-capping, ALiBi slopes and attention sinks (issue 14)."""

from __future__ import annotations

import math
from typing import Any

from ..cases.score_terms import ScoreTerms, standard_alibi_slopes
from .keys import SCORE_KEYS
from .values import _check_keys, _Ctx, _mapping, _number, _per_head, _show
from .yamlload import LocatedDict


def _resolve_scores(ctx: _Ctx, node: LocatedDict, shape: dict) -> ScoreTerms:
    """The `scores` key: softcap, ALiBi slopes and sink logits (issue 14)."""
    snode = _mapping(ctx, node["scores"], node, "scores")
    _check_keys(ctx, snode, SCORE_KEYS, "scores")
    heads = shape["num_heads"]
    kw: dict[str, Any] = {}
    if snode.get("softcap") is not None:
        cap = _number(ctx, snode["softcap"], snode, "softcap")
        if not (math.isfinite(cap) and cap > 0):
            raise ctx.error(
                f"softcap must be a finite number > 0, got {_show(cap)}", snode, "softcap",
                "Gemma 2 uses 50.0 for attention logits",
            )  # fmt: skip
        kw["softcap"] = cap
    if snode.get("alibi") is not None:
        value = snode["alibi"]
        if value == "standard":
            kw["alibi"], kw["alibi_standard"] = standard_alibi_slopes(heads), True
        elif isinstance(value, list):
            kw["alibi"] = _per_head(ctx, value, snode, "alibi", heads)
            if any(v < 0 for v in kw["alibi"]):
                raise ctx.error("ALiBi slopes must be >= 0 (the bias is -slope * distance)",
                                snode, "alibi")  # fmt: skip
        else:
            raise ctx.error(
                f"must be 'standard' or a list of {heads} slopes, got {_show(value)}", snode,
                "alibi",
            )  # fmt: skip
    if snode.get("sink") is not None:
        value = snode["sink"]
        if value == "zero":
            kw["sink"] = (0.0,) * heads
        elif isinstance(value, list):
            kw["sink"] = _per_head(ctx, value, snode, "sink", heads)
        else:
            raise ctx.error(
                f"must be 'zero' or a list of {heads} sink logits, got {_show(value)}", snode,
                "sink",
            )  # fmt: skip
    terms = ScoreTerms(**kw)
    if terms.is_empty():
        raise ctx.error("scores sets no term", node, "scores", f"keys: {', '.join(SCORE_KEYS)}")
    return terms
