"""The calling conventions a plain function can declare (mask forms, layouts, weight layouts,
key/value heads) and the feature tags each can express: what `kernel_adapter` and
`layer_adapter` derive a Declaration from."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from .adapter import FILL_AS_WRITTEN

MASK_FORMS = ("additive", "attend", "masked", "none")


KERNEL_LAYOUTS = ("BHTK", "BTHK")


WEIGHT_LAYOUTS = ("canonical", "linear", "packed", "einsum", "fused")


PROJECTIONS = ("q", "k", "v", "o")


KV_HEADS = ("native", "repeat", "equal")


# What a boolean mask can carry; an additive one carries a finite bias too.
BOOL_MASK_FEATURES = frozenset({
    "causal", "causal-top-left", "causal-bottom-right", "key-padding", "query-padding",
    "bool-mask", "per-head-mask", "additive-mask", "window", "fully-masked-rows",
    "segments", "left-padding",  # issue 14: any mask, so packed rows and left padding too
})  # fmt: skip


# issue 14: an additive mask can carry a finite fill (-1e9, -10000, finfo.min) as users write it
ADDITIVE_MASK_FEATURES = BOOL_MASK_FEATURES | {"attn-bias", "finite-fill"}


GQA_FEATURES = frozenset({"grouped-query", "multi-query"})


_FRAMEWORK_OF = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def _with_fill(divergences: tuple, features: frozenset[str]) -> tuple:
    """Issue 14: an adapter taking finite fills computes fully masked rows as written."""
    if "finite-fill" in features and FILL_AS_WRITTEN.id not in {d.id for d in divergences}:
        return (*divergences, FILL_AS_WRITTEN)
    return divergences


def _accepts(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _features(
    mode: str,
    fn: Callable,
    mask: str,
    returns_weights: bool,
    kv_heads: str,
    weights: str | None,
    features: Iterable[str] | None,
    add: Iterable[str],
    drop: Iterable[str],
    gradients: str | None = None,
) -> frozenset[str]:
    if features is not None:
        tags = set(features) | {mode}
    else:
        tags = {mode, "kv-len", "value-dim"}
        if mode == "layer":
            tags |= {"cross-attention", "kv-input-dims", "output-dim", "no-bias"}
        tags |= {"additive": ADDITIVE_MASK_FEATURES, "none": set()}.get(mask, BOOL_MASK_FEATURES)
        if kv_heads != "equal":
            tags |= GQA_FEATURES
        if _accepts(fn, "scale"):
            tags.add("scale")
        if returns_weights:
            tags |= {"weights", "weights-mean"}
        if mask in ("attend", "masked") and _accepts(fn, "bias"):
            tags.add("attn-bias")  # the finite bias travels apart from the boolean mask
        if gradients == "autodiff" or _accepts(fn, "grad_output"):
            tags.add("gradients")
        if all(_accepts(fn, p) for p in ("dropout_p", "training", "seed")):
            tags |= {"dropout", "dropout-training"}
        if weights == "fused":  # one qkv matrix applied to one input: self-attention only
            tags -= {"cross-attention", "kv-input-dims"}
        if weights == "packed":  # torch's packed in_proj: one E for q, k, v and the output
            tags -= {"kv-input-dims", "value-dim", "output-dim"} | GQA_FEATURES
    return frozenset((tags | set(add)) - set(drop))


def _notes(kv_heads: str, returns_weights: bool, notes: str) -> str:
    parts = [notes] if notes else []
    if kv_heads == "repeat":
        parts.append(
            "grouped/multi-query cases run with the key/value heads repeated by the helper "
            "(conformance.cases.layouts.repeat_kv_heads), not by the implementation"
        )
    if returns_weights:
        parts.append("weights_mean is the mean over heads of the returned per-head weights")
    return "; ".join(parts)
