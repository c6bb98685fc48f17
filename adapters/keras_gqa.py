"""Keras 3 `keras.layers.GroupQueryAttention` (grouped-query and multi-query attention).

Two adapters, `keras.gqa.torch.fused` and `keras.gqa.torch.explicit`, the same two code paths
as MultiHeadAttention (keras/src/layers/attention/grouped_query_attention.py, 3.15): the layer
projects G key/value heads, expands them to H with `ops.repeat(..., axis=2)` (contiguous groups:
query head h uses key/value head h // (H / G), the canonical mapping), then calls
`ops.dot_product_attention` (fused: no scores, no dropout) or einsum + `keras.layers.Softmax`
(explicit: `return_attention_scores=True`).

They run on the torch backend only, sharing the "keras-torch" worker: the layer's own code
(grouped projections, repeat, masks) is backend independent, and each backend's
`dot_product_attention` and Softmax are already covered by keras.<backend>.* on
MultiHeadAttention. Torch runs eagerly without per-shape compilation, which keeps the matrix
fast. Another backend is one `_make(...)` line below.

Layout: query kernel [Dq, H, hd] ("bqm,muh"), key/value kernels [D, G, hd], output kernel
[H, hd, Do], biases [H, hd], [G, hd], [Do]: the canonical per-head tensors transposed like
MultiHeadAttention's. One head_dim serves keys and values, and the output dim is the query's.
Masks follow keras_mha, except that GroupQueryAttention honours its `query_mask` argument.
"""

from __future__ import annotations

from typing import Any

from conformance.adapter_api.adapter import Declaration
from conformance.adapter_api.feature_sets import DTYPE_TAGS, GROUPED_HEADS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .keras_common import (
    COMMON_UNSUPPORTED,
    EXPLICIT_ONLY,
    LAYER_FEATURES,
    KerasMasks,
    dropout_rate,
    einsum_weight_pairs,
    fused_refusals,
    layer_declaration,
)
from .keras_mha import KerasMHAAdapter

# What GroupQueryAttention expresses (both paths): MultiHeadAttention's layer and masks
# (LAYER_FEATURES), with fewer key/value heads.
GQA_FEATURES = LAYER_FEATURES | GROUPED_HEADS
# The explicit path's own tags (GroupQueryAttention has no attention_axes: no multi-axis).
GQA_EXPLICIT_ONLY = EXPLICIT_ONLY - {"multi-axis"}
GQA_UNSUPPORTED = {
    **{k: v for k, v in COMMON_UNSUPPORTED.items() if k not in ("grouped-query", "multi-query")},
    "value-dim": "GroupQueryAttention has one head_dim for queries, keys and values",
    "output-dim": "GroupQueryAttention projects back to the query's feature dim (no output_shape)",
    "multi-axis": "GroupQueryAttention attends over axis 1 only (no attention_axes)",
    "decode": "GroupQueryAttention has no key/value cache",
}


class KerasGQAAdapter(KerasMHAAdapter):
    """keras.layers.GroupQueryAttention on one backend, one code path."""

    known_crashes = ()

    def _probe_layer(self) -> Any:
        return self.keras.layers.GroupQueryAttention(
            head_dim=2, num_query_heads=2, num_key_value_heads=1, dtype="float32"
        )

    def _layer_key(self, case: Case, masks: KerasMasks) -> tuple:
        s = case.shape
        return (
            s.num_heads, s.num_kv_heads, s.key_dim, s.query_dim, s.key_input_dim,
            s.value_input_dim, case.use_bias, masks.sliding_window, dropout_rate(case),
        )  # fmt: skip

    def _new_layer(self, case: Case, masks: KerasMasks) -> Any:
        s = case.shape
        layer = self.keras.layers.GroupQueryAttention(
            head_dim=s.key_dim,
            num_query_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            use_bias=case.use_bias,
            sliding_window=masks.sliding_window,
            dropout=dropout_rate(case),
            seed=0,  # see KerasMHAAdapter._new_layer: the torch backend's dropout needs a seed
            dtype=case.dtype,
            kernel_initializer="zeros",  # replaced by the case's weights before every call
            bias_initializer="zeros",
        )
        layer.build(
            (s.batch, s.query_len, s.query_dim),
            (s.batch, s.kv_len, s.value_input_dim),
            (s.batch, s.kv_len, s.key_input_dim),
        )
        return layer

    def _weight_pairs(self, layer: Any, case: Case, inputs: CaseInputs) -> list[tuple[Any, Any]]:
        # Query kernel [Dq, H, hd], key/value kernels [D, G, hd], output kernel [H, hd, Do].
        denses = (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
        return einsum_weight_pairs(denses, case, inputs)

    def _mask_kwargs(self, masks: KerasMasks, query: Any, cross: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if masks.use_causal_mask:
            kwargs["use_causal_mask"] = True
        if masks.attention_mask is not None:
            kwargs["attention_mask"] = masks.attention_mask
        if masks.key_valid is not None:
            kwargs["key_mask" if cross else "value_mask"] = masks.key_valid
        if masks.query_valid is not None:
            kwargs["query_mask"] = masks.query_valid  # honoured here, unlike in MHA
        return kwargs


def _declaration(backend: str, path: str) -> Declaration:
    explicit = GQA_EXPLICIT_ONLY if path == "explicit" else frozenset()
    features = GQA_FEATURES | DTYPE_TAGS | explicit
    reasons = dict(GQA_UNSUPPORTED)
    if path == "fused":
        reasons.update(fused_refusals(f"gqa.{backend}", GQA_EXPLICIT_ONLY))
    how = (
        "ops.dot_product_attention on the repeated heads (no scores, no dropout)"
        if path == "fused"
        else "einsum + keras.layers.Softmax(mask) (return_attention_scores=True)"
    )
    return layer_declaration(
        name=f"keras.gqa.{backend}.{path}",
        summary=f"keras.layers.GroupQueryAttention on the {backend} backend, {path} path: {how}",
        backend=backend,
        path=path,
        features=features,
        unsupported_reasons=reasons,
        notes="Keys/values are expanded with ops.repeat (contiguous groups). Masks: causal -> "
        "use_causal_mask, key padding -> value_mask/key_mask, query padding -> query_mask, "
        "window -> sliding_window, the rest -> attention_mask.",
    )


def _make(backend: str, path: str) -> type[KerasGQAAdapter]:
    name = f"KerasGQA{backend.capitalize()}{path.capitalize()}"
    attrs = {"backend": backend, "path": path, "declaration": _declaration(backend, path)}
    attrs.update({"__module__": __name__, "__qualname__": name})
    return type(name, (KerasGQAAdapter,), attrs)


KerasGQATorchFused = _make("torch", "fused")
KerasGQATorchExplicit = _make("torch", "explicit")

ADAPTERS = [KerasGQATorchFused, KerasGQATorchExplicit]
