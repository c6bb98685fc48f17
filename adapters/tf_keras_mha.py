"""`tf_keras.layers.MultiHeadAttention`: the Keras 2 layer (what `tf.keras` means with
TF_USE_LEGACY_KERAS=1 and on TensorFlow before 2.16), still under many production models.

One adapter, `tf_keras.mha`: Keras 2 has a single code path (einsum + tf_keras Softmax + einsum,
tf_keras/src/layers/attention/multi_head_attention.py, 2.21), so asking for the scores changes
nothing and this adapter always asks. Same weight layout as Keras 3 (EinsumDense kernels
[D, N, K], output kernel [H, V, Do]).

Masks: there are no query_mask/value_mask/key_mask arguments and no sliding_window: query and
key padding travel as the `_keras_mask` attribute of the query and value (or key) tensors, the
way tf_keras's Embedding(mask_zero=True) and Masking hand them on; causal -> use_causal_mask;
the rest -> attention_mask. tf_keras's Softmax (robust_masking=False, the MultiHeadAttention
default) *adds* -1e9 to masked logits (float16: -32752): see the declared divergences for what
that does to fully masked rows.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import DTYPE_TAGS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .keras_common import (
    COMMON_UNSUPPORTED,
    EXPLICIT_ONLY,
    KERAS_DROPOUT,
    MHA_FEATURES,
    KerasMasks,
    backend_devices,
    device_scope_name,
    dropout_rate,
    einsum_weight_pairs,
    keras_masks,
    mha_arguments,
    mha_input_shapes,
    parameter_gradients,
    scores_to_canonical,
)

TF_KERAS_SOFTMAX = (
    "https://github.com/keras-team/tf-keras/blob/master/tf_keras/src/layers/activation/softmax.py"
)

_ADDITIVE = (
    "tf_keras's Softmax (robust_masking=False, the MultiHeadAttention default) adds -1e9 "
    "(float16: -32752) to masked logits instead of replacing them"
)
DIVERGENCES = (
    Divergence(
        id="fully-masked-rows-unmasked-float64",
        reason=f"{_ADDITIVE}; in float64 the logits survive that offset to about 1e-7 (the "
        "spacing of doubles near 1e9 is 1.2e-7), so a row with every key masked comes out as "
        "its unmasked softmax, to float32-like precision (held to float32 tolerance); "
        "softmax_robust_masking=True would replace the logits and give a uniform row",
        link=TF_KERAS_SOFTMAX,
        when=frozenset({"fully-masked-rows"}),
        dtypes=frozenset({"float64"}),
        masked_rows="unmasked",
        compute_dtype="float32",
    ),
    Divergence(
        id="fully-masked-rows-uniform",
        reason=f"{_ADDITIVE}; in float32, float16 and bfloat16 the logits vanish next to the "
        "offset, so a row with every key masked has all-equal logits: uniform weights",
        link=TF_KERAS_SOFTMAX,
        when=frozenset({"fully-masked-rows"}),
        masked_rows="uniform",
    ),
)

UNSUPPORTED = {
    **COMMON_UNSUPPORTED,
    "window": "tf_keras MultiHeadAttention has no sliding_window (Keras 3 added it)",
}


class TfKerasMHA(Adapter):
    declaration = Declaration(
        name="tf_keras.mha",
        summary="tf_keras.layers.MultiHeadAttention (Keras 2): einsum + tf_keras Softmax(mask), "
        "masks as use_causal_mask / attention_mask / _keras_mask",
        framework="tf_keras",
        # Keras 2's one path is Keras 3's explicit one: scores, dropout, several axes.
        features=(MHA_FEATURES - {"window"}) | EXPLICIT_ONLY | DTYPE_TAGS,
        requires=("tf_keras", "tensorflow"),
        worker="tf_keras",
        env={"TF_USE_LEGACY_KERAS": "1"},
        divergences=DIVERGENCES,
        unsupported_reasons=UNSUPPORTED,
        # tf_keras Dropout on the softmax output, elementwise, as Keras 3's; the returned
        # scores are the ones from before the dropout.
        dropout=KERAS_DROPOUT,
        notes="Scores are always requested: Keras 2 has one code path either way. Training-mode "
        "dropout draws are seeded with tf.random.set_seed(seed).",
    )
    cache_size = 32

    def setup(self) -> None:
        import tensorflow as tf
        import tf_keras

        self.tf = tf
        self.tf_keras = tf_keras
        self._layers: OrderedDict[tuple, Any] = OrderedDict()
        # id(layer) -> the CaseInputs whose weights the layer's variables hold now.
        self._weights_set: dict[int, CaseInputs] = {}

    def devices(self) -> list[str]:
        return backend_devices("tensorflow")

    def versions(self) -> dict[str, str]:
        return {"tf_keras": self.tf_keras.__version__, "tensorflow": self.tf.__version__}

    def _layer(self, case: Case, device: str) -> Any:
        s = case.shape
        key = (
            device, case.dtype, s.num_heads, s.key_dim, s.value_dim, s.query_dim,
            s.key_input_dim, s.value_input_dim, s.output_dim, case.use_bias,
            s.attention_axes, len(s.query_shape), len(s.kv_shape), dropout_rate(case),
        )  # fmt: skip
        layer = self._layers.get(key)
        if layer is None:
            layer = self.tf_keras.layers.MultiHeadAttention(**mha_arguments(case))
            # Keras 2 builds from the first call's tensors.
            tf = self.tf
            query, value, key_in = (
                tf.zeros(shape, dtype=case.dtype) for shape in mha_input_shapes(case, 1)
            )
            layer(query, value, key_in)
            self._layers[key] = layer
            if len(self._layers) > self.cache_size:
                _, evicted = self._layers.popitem(last=False)
                self._weights_set.pop(id(evicted), None)
        self._layers.move_to_end(key)
        return layer

    def _weight_pairs(self, layer: Any, case: Case, inputs: CaseInputs) -> list[tuple[Any, Any]]:
        """(variable, canonical value in the variable's layout) for every weight."""
        denses = (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
        return einsum_weight_pairs(denses, case, inputs)

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        masks: KerasMasks = keras_masks(case, sliding_window=False)
        try:
            output, scores, grads = self._run(case, inputs, device, masks)
        except Exception as error:
            # The first call builds the layer, so a shape the layer cannot run fails there too.
            if type(error).__name__ == "AbortedError" and "dims must be <= 5" in str(error):
                raise Unsupported(
                    "tf_keras on tensorflow: a single attention axis of a 5-D input gives "
                    "6-D scores, and tf_keras's Softmax over one axis calls tf.nn.softmax, "
                    "whose CPU kernel accepts at most 5 dims "
                    f"[{type(error).__name__}: {str(error).splitlines()[0][:200]}]"
                ) from error
            raise
        result = {"output": _numpy(output)}
        if "weights" in case.compare:
            result["weights"] = scores_to_canonical(_numpy(scores), case)
        if grads is not None:
            result.update(grads)
        return result

    def _run(
        self, case: Case, inputs: CaseInputs, device: str, masks: KerasMasks
    ) -> tuple[Any, Any, dict[str, np.ndarray] | None]:
        """(output, scores, canonical gradients or None)."""
        tf = self.tf
        with tf.device(device_scope_name(device).upper()):
            layer = self._layer(case, device)
            pairs = self._weight_pairs(layer, case, inputs)
            # A dropout draw or another run of the same case would set the same values again.
            if self._weights_set.get(id(layer)) is not inputs:
                for variable, value in pairs:
                    variable.assign(tf.cast(tf.constant(value), variable.dtype))
                self._weights_set[id(layer)] = inputs

            def tensor(name: str) -> Any:
                return tf.cast(tf.constant(inputs.native(name)), case.dtype)

            # Distinct tensor objects, so a mask attached to one does not mask another.
            query, value = tensor("query"), tensor("value")
            key = None if case.self_attention else tensor("key")
            if masks.query_valid is not None:
                query._keras_mask = tf.constant(masks.query_valid)
            if masks.key_valid is not None:
                # tf_keras reads the key's mask only when key is a tensor of its own.
                (value if key is None else key)._keras_mask = tf.constant(masks.key_valid)
            dropout = getattr(case, "dropout", None)
            training = dropout is not None and dropout.training
            if training:
                # tf_keras's Dropout (no seed of its own) draws from TF's global generator.
                tf.random.set_seed(dropout.seed)
            kwargs: dict[str, Any] = {"training": training, "return_attention_scores": True}
            if masks.use_causal_mask:
                kwargs["use_causal_mask"] = True
            if masks.attention_mask is not None:
                kwargs["attention_mask"] = tf.constant(masks.attention_mask)
            if not case.gradients:
                return (*layer(query, value, key, **kwargs), None)
            # <dY, Y> differentiated in the same call: tf.GradientTape over the input tensors
            # (watched) and the layer's variables (watched already).
            leaves = [query, value] + ([] if key is None else [key])
            with tf.GradientTape() as tape:
                for leaf in leaves:
                    tape.watch(leaf)
                output, scores = layer(query, value, key, **kwargs)
            variables = [v for v, _ in pairs]
            d_out = tensor("grad_output")  # [B, T, Do]: the output's layout already
            found = tape.gradient(output, leaves + variables, output_gradients=d_out)
            grads = {}
            if key is None:
                # Separate query and value tensors (their Keras masks differ): the gradient
                # w.r.t. the one self-attention input is the sum of both, in the case dtype.
                grads["grad_query"] = _numpy(found[0] + found[1])
            else:
                grads.update(grad_query=_numpy(found[0]), grad_key=_numpy(found[2]),
                             grad_value=_numpy(found[1]))  # fmt: skip
            grads.update(parameter_gradients([_numpy(g) for g in found[len(leaves) :]]))
            return output, scores, grads


def _numpy(x: Any) -> np.ndarray:
    arr = np.asarray(x.numpy())
    if arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)  # exact: every bfloat16 value is a float32
    return arr


ADAPTERS = [TfKerasMHA]
