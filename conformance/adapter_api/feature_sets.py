"""Named sets of feature tags (conformance.cases.case.FEATURES) that adapters combine.

A Declaration's `features` is the set of tags an implementation takes. Most adapters take
whole groups of them, the same way (every causal alignment, both paddings, every boolean mask
component), so the groups are named here once and an adapter writes, for example,
`KERNEL_SHAPES | EVERY_BOOLEAN_MASK | ADDITIVE_MASKS | {"scale"}`. Tags an adapter takes for a
reason of its own stay written out beside the comment that gives the reason.
"""

from __future__ import annotations

from ..cases.case import DTYPES, FEATURES

# Causal masks in both alignments when T != S (top-left: query i sees keys <= i;
# bottom-right: the last query sees every key).
CAUSAL_ALIGNED = frozenset({"causal", "causal-top-left", "causal-bottom-right"})
# Per-batch valid lengths of keys and of queries.
PADDING = frozenset({"key-padding", "query-padding"})
# An explicit boolean mask, shared by the heads or one per head.
BOOLEAN_MASKS = frozenset({"bool-mask", "per-head-mask"})
# Everything the neutral boolean mask (conformance.cases.masks.build_mask's `attend`) can hold: what
# an adapter takes when it passes that one array to its framework's mask argument.
EVERY_BOOLEAN_MASK = CAUSAL_ALIGNED | PADDING | BOOLEAN_MASKS | {"window", "fully-masked-rows"}
# Additive masks: -inf/0 masks given as floats, and finite biases added to the logits.
ADDITIVE_MASKS = frozenset({"additive-mask", "attn-bias"})
# Packed sequences (several segments per row) and padding at the start of the row (issue 14):
# entries of any boolean or additive mask, so a framework whose mask argument takes the neutral
# mask takes these too.
SEGMENTS_AND_LEFT_PADDING = frozenset({"segments", "left-padding"})
# A mask the user wrote themselves and passes as written: a finite fill value, packed segments,
# left padding (issue 14).
MASKS_AS_WRITTEN = frozenset({"finite-fill"}) | SEGMENTS_AND_LEFT_PADDING
# Fewer key/value heads than query heads.
GROUPED_HEADS = frozenset({"grouped-query", "multi-query"})
# The kernel's per-head inputs: key length != query length, value head dim != key head dim.
KERNEL_SHAPES = frozenset({"kernel", "kv-len", "value-dim"})
# A projecting layer: separate key/value inputs, and key/value model dims != the query's.
LAYER_INPUTS = frozenset({"layer", "cross-attention", "kv-input-dims"})
# ALiBi: explicit slopes and the standard geometric ones.
ALIBI = frozenset({"alibi", "alibi-standard"})
# Rotary embeddings: both conventions and partial rotary dims.
ROPE = frozenset({"rope-half", "rope-interleaved", "rope-partial"})
# Attention dropout: inference mode (a no-op) and training draws.
DROPOUT = frozenset({"dropout", "dropout-training"})
# Every case dtype as a tag (for adapters that declare dtypes as features).
DTYPE_TAGS = frozenset(DTYPES)

NAMED_SETS: dict[str, frozenset[str]] = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, frozenset)
}

_unknown = {tag for tags in NAMED_SETS.values() for tag in tags} - set(FEATURES)
if _unknown:  # a typo here would silently widen or narrow every adapter that uses the set
    raise ImportError(
        f"conformance.adapter_api.feature_sets names unknown feature tags: {sorted(_unknown)}"
    )
