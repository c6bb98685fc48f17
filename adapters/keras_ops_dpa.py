"""`keras.ops.dpa.<backend>`: keras.ops.dot_product_attention in kernel mode, one per backend.

What runs: `keras.ops.dot_product_attention(query, key, value, bias=, mask=, scale=,
is_causal=, flash_attention=False)` with query [B, T, H, K] and key/value [B, S, G, K|V]
(Keras's layout; converted from and back to the canonical [B, H, T, K]). Keras dispatches to
its backend: TensorFlow einsum + where, jax.nn.dot_product_attention, torch
F.scaled_dot_product_attention (keras/src/backend/<backend>/nn.py). Keras fixes its backend at
import, so each backend is its own worker ("keras-<backend>", shared with keras.<backend>.*).

flash_attention=False is passed explicitly: on CPU no backend has a flash kernel, and Keras's
default (None) means "decide", which here also resolves to no flash.

Masks: a mask that is only top-left causal -> is_causal=True (Keras builds tril(ones(T, S)),
top-left aligned); any other boolean part -> `mask` [B, 1|H, T, S] (True = attend); finite
additive parts -> `bias`. Path proof: the call is counted at keras.src.ops (the function the
public name is checked to be), and the backend is asserted at setup.

Fully masked rows: Keras replaces masked logits by -0.7 * float max (tf, jax) or adds it
(torch) -- the same code the fused MultiHeadAttention path reaches, so the same declared
divergences apply (adapters/keras_common.py keras_divergences).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    DTYPE_TAGS,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, combined_additive

from .jax_dpa import MASKED_AS_WRITTEN, MASKED_UNIFORM_LINK, XLA_AS_WRITTEN
from .keras_common import (
    DotProductAttentionCounter,
    KerasAdapter,
    backend_worker,
    device_scope_name,
    keras_divergences,
    to_numpy_float,
)
from .torch_sdpa import only_causal

FEATURES = (
    GROUPED_HEADS
    | {"kernel", "kv-len", "scale"}
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    | DTYPE_TAGS
    # issue 14: packed segments and left padding are entries of the boolean `mask`
    | SEGMENTS_AND_LEFT_PADDING
)

UNSUPPORTED = {
    "layer": "keras.ops.dot_product_attention is the kernel only (see keras.<backend>.* for "
    "the MultiHeadAttention layer)",
    "value-dim": "keras.ops.dot_product_attention requires the value head dim to equal the key's",
    "weights": "keras.ops.dot_product_attention returns the output only",
    "weights-mean": "keras.ops.dot_product_attention returns the output only",
    "decode": "no cache: the caller's loop",
    "multi-axis": "one sequence axis",
    "bias-kv": "MultiheadAttention (torch) only",
    "zero-attn": "MultiheadAttention (torch) only",
    "dropout": "the op has no dropout argument",
    "dropout-training": "the op has no dropout argument",
    "gradients": "not covered by this adapter",
}


KERAS_TF_NN = "https://github.com/keras-team/keras/blob/master/keras/src/backend/tensorflow/nn.py"

# Keras 3.15, backend/tensorflow/nn.py dot_product_attention: K/V heads are repeated only when
# `num_kv_heads > 1`, so one shared K/V head reaches tf.einsum("BTNH,BSNH->BNTS") with N=H on
# the query and N=1 on the key, which TensorFlow's einsum rejects. Left as an error (a crash
# of the library on a valid case); jax and torch backends accept G=1.
TF_MULTI_QUERY_BUG = (
    "Keras bug: the tensorflow backend's dot_product_attention repeats key/value heads only "
    "when num_kv_heads > 1, so multi-query attention (one K/V head) crashes in tf.einsum; "
    + KERAS_TF_NN
)

# Keras's torch backend adds a float bias as is: -inf entries reach torch SDPA, whose safe
# softmax returns zeros for a row with every key at -inf (the boolean-mask path instead
# offsets by -0.7 * float max: uniform, declared by keras_divergences).
# Keras's jax backend hands the boolean mask and the -inf bias to jax.nn.dot_product_attention,
# so a fully masked row mixing both gets jax.dpa.xla's per-row mixture (found by fuzzing:
# causal + additive 0/-inf, one key row).
JAX_MIXED_ROWS = Divergence(
    id="masked-rows-mixed-additive",
    reason=MASKED_AS_WRITTEN,
    link=MASKED_UNIFORM_LINK,
    when=frozenset({"fully-masked-rows", "additive-mask"}),
    masked_rows=XLA_AS_WRITTEN,  # verified as jax.dpa.xla's (formerly unverifiable)
)
TORCH_INF_BIAS_ROWS = Divergence(
    id="fully-masked-rows-zeros-inf-bias",
    reason="an additive -inf bias goes to torch SDPA unchanged; torch's safe softmax returns "
    "zeros for a row with every key at -inf",
    link="https://github.com/pytorch/pytorch/pull/133882",
    when=frozenset({"fully-masked-rows", "additive-mask"}),
    masked_rows="zeros",
)


class KerasOpsDpaAdapter(KerasAdapter):
    def setup(self) -> None:
        super().setup()
        import keras.src.ops as kops

        # The public name is the keras.src.ops function the counter wraps: calling it through
        # keras.src.ops (below) is calling keras.ops.dot_product_attention.
        if self.keras.ops.dot_product_attention is not kops.dot_product_attention:
            raise RuntimeError("keras.ops.dot_product_attention is not keras.src.ops's function")
        self.kops = kops

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        self.release_compiled()
        ops, dt = self.ops, case.dtype

        def tensor(name: str) -> Any:
            bhtk = inputs.native(name)
            return ops.convert_to_tensor(np.ascontiguousarray(bhtk.transpose(0, 2, 1, 3)), dt)

        kwargs: dict[str, Any] = {"flash_attention": False}
        if case.scale is not None:
            kwargs["scale"] = float(case.scale)
        if only_causal(case.mask) and case.mask.causal == "top-left":
            kwargs["is_causal"] = True
        else:
            attend, bias = build_mask(case)
            if attend is not None and bias is not None and self.backend == "torch":
                # Keras's torch backend refuses mask and bias together ("Only one of `bias`
                # and `mask` can be provided"): the caller folds them into one additive bias.
                kwargs["bias"] = ops.convert_to_tensor(combined_additive(attend, bias), dt)
            else:
                if attend is not None:
                    kwargs["mask"] = ops.convert_to_tensor(attend, "bool")
                if bias is not None:
                    kwargs["bias"] = ops.convert_to_tensor(bias, dt)
        counter = DotProductAttentionCounter()
        try:
            with device_scope(self.keras, device, self.backend), counter:
                out = self.kops.dot_product_attention(
                    tensor("q"), tensor("k"), tensor("v"), **kwargs
                )
        except Exception as error:
            s = case.shape
            if self.backend == "tensorflow" and s.num_kv_heads == 1 < s.num_heads:
                raise RuntimeError(TF_MULTI_QUERY_BUG + f" (TensorFlow: {error})") from None
            raise
        if counter.calls != 1:
            raise RuntimeError(f"keras.src.ops.dot_product_attention ran {counter.calls} times")
        out = to_numpy_float(out, ops)
        return {"output": out.transpose(0, 2, 1, 3)}  # [B, T, H, V] -> [B, H, T, V]


def device_scope(keras: Any, device: str, backend: str) -> Any:
    return keras.device(device_scope_name(device, backend))


def _make(backend: str) -> type[KerasOpsDpaAdapter]:
    name = f"KerasOpsDpa{backend.capitalize()}"
    declaration = Declaration(
        name=f"keras.ops.dpa.{backend}",
        summary=f"keras.ops.dot_product_attention on the {backend} backend, kernel, "
        "flash_attention=False",
        framework="keras",
        features=FEATURES,
        **backend_worker(backend),
        divergences=((TORCH_INF_BIAS_ROWS,) if backend == "torch" else ())
        + ((JAX_MIXED_ROWS,) if backend == "jax" else ())
        + keras_divergences(backend, "fused"),
        unsupported_reasons=UNSUPPORTED,
        notes="is_causal=True for a mask that is only top-left causal; other boolean masks as "
        "`mask` (True = attend), finite additive parts as `bias`. Inputs in Keras's [B, T, H, K]. "
        + (
            "Known Keras bug, left as an error: multi-query (one K/V head) crashes. Known "
            "precision bug, left as a fail: with no scale given, Keras computes the default "
            "1/sqrt(K) in float32, so float64 results are off by ~1e-8."
            if backend == "tensorflow"
            else ""
        ),
    )
    return type(
        name,
        (KerasOpsDpaAdapter,),
        {"backend": backend, "declaration": declaration, "__module__": __name__,
         "__qualname__": name},
    )  # fmt: skip


KerasOpsDpaTensorflow = _make("tensorflow")
KerasOpsDpaJax = _make("jax")
KerasOpsDpaTorch = _make("torch")

ADAPTERS = [KerasOpsDpaTensorflow, KerasOpsDpaJax, KerasOpsDpaTorch]
