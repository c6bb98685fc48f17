"""Trap adapters for Keras 3 MultiHeadAttention (TensorFlow backend): real calls, wrong form.

Each subclasses the careful adapter (adapters.keras_mha) and changes only how the mask is
passed; see docs/adapters/traps.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from conformance.cases.case import Case

from .keras_common import KerasMasks, keras_masks
from .keras_mha import KerasTensorflowExplicit, KerasTensorflowFused


class KerasAdditiveMask(KerasTensorflowExplicit):
    """attention_mask given as a torch-style additive float mask (0 = attend, -inf = masked).

    Keras reads attention_mask as boolean/0-1 (1 = attend) and casts it to bool
    (keras-team/keras#20511): 0 becomes False (masked) and -inf becomes True (attend), so the
    mask is inverted.
    """

    declaration = dataclasses.replace(
        KerasTensorflowExplicit.declaration,
        name="keras.tensorflow.explicit.additive-mask",
        summary="TRAP: keras MultiHeadAttention (TensorFlow) given attention_mask as an additive "
        "0/-inf float mask, torch style, where Keras reads 1 = attend",
        notes="The mask that would go in attention_mask is passed as 0 (attend) / -inf "
        "(masked) floats. MultiHeadAttention casts attention_mask to bool "
        "(keras-team/keras#20511), so every masked key becomes visible and every visible key "
        "masked. Cases whose mask maps to use_causal_mask, sliding_window or the padding "
        "masks pass no attention_mask and are unaffected.",
    )

    def _masks(self, case: Case) -> KerasMasks:
        masks = keras_masks(case)
        if masks.attention_mask is not None:
            additive = np.where(masks.attention_mask, 0.0, -np.inf).astype(case.dtype)
            masks = dataclasses.replace(masks, attention_mask=additive)
        return masks


class KerasUseCausalMaskDecode(KerasTensorflowFused):
    """use_causal_mask=True for queries at the END of the keys (a decode step or cache chunk).

    Keras builds the causal mask as tril(ones(T, S)), aligned at the top left (query i sees keys
    0..i), so a decode step with T=1 sees the first key only.
    """

    declaration = dataclasses.replace(
        KerasTensorflowFused.declaration,
        name="keras.tensorflow.fused.use-causal-mask-decode",
        summary="TRAP: keras MultiHeadAttention (TensorFlow) with use_causal_mask=True for a "
        "bottom-right (decode/cache) causal mask, where Keras aligns it at the top left",
        features=KerasTensorflowFused.declaration.features | {"causal-bottom-right"},
        notes="The user wants T new queries to attend causally over S >= T keys (decode or "
        "chunked prefill against a cache: bottom-right) and sets use_causal_mask=True. Keras's "
        "_compute_causal_mask is tril(ones(T, S)): top-left, so query i sees keys 0..i. Only "
        "bottom-right causal cases with T != S are affected.",
    )

    def _masks(self, case: Case) -> KerasMasks:
        m = case.mask
        if m.causal == "bottom-right":
            top_left = dataclasses.replace(m, causal="top-left")
            return keras_masks(dataclasses.replace(case, mask=top_left))
        return keras_masks(case)


class KerasQueryMaskArgument(KerasTensorflowExplicit):
    """Query padding passed as the documented `query_mask=` call argument.

    Keras 3.15's MultiHeadAttention.call overwrites its query_mask argument with the query
    tensor's own Keras mask (`query_mask = backend.get_keras_mask(query)`), so the argument is
    silently ignored: padded query rows attend as if they were real.
    """

    declaration = dataclasses.replace(
        KerasTensorflowExplicit.declaration,
        name="keras.tensorflow.explicit.query-mask-argument",
        summary="TRAP: keras MultiHeadAttention (TensorFlow) given query padding as the "
        "query_mask= call argument, which call() overwrites with the query tensor's Keras mask",
        notes="The user passes query_mask=[B, T] (1 = real query) as documented. "
        "MultiHeadAttention.call replaces it with the Keras mask attached to the query tensor "
        "(None for a plain tensor), so the padded query rows are computed as ordinary rows "
        "instead of being masked. Only cases with query padding are affected; the careful "
        "adapter attaches the mask to the query tensor (as Embedding(mask_zero=True) does).",
    )

    def _mask_kwargs(self, masks: KerasMasks, query: object, cross: bool) -> dict[str, object]:
        query_valid = masks.query_valid
        kwargs = super()._mask_kwargs(dataclasses.replace(masks, query_valid=None), query, cross)
        if query_valid is not None:
            kwargs["query_mask"] = query_valid
        return kwargs


ADAPTERS = [KerasAdditiveMask, KerasUseCausalMaskDecode, KerasQueryMaskArgument]
