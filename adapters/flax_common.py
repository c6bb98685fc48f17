"""What the Flax layer adapters (`flax.linen`, `flax.nnx.*`) share.

Both layers take the same parameter tree (jax_runtime.flax_params), one boolean mask, the layer's
own self-attention call (key and value None), a decode cache that takes one token per call,
and both return per-head weights only when sown. This module holds those pieces once: the
common feature tags and refusals, the adapter's setup, the call's arguments, the
token-by-token decode loop and the outputs in canonical names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter
from conformance.adapter_api.feature_sets import (
    EVERY_BOOLEAN_MASK,
    LAYER_INPUTS,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .jax_runtime import (
    flax_param_grads,
    jax_device_names,
    jax_versions,
    setup_jax,
    to_jax,
    to_numpy,
)

# Tags both layers take: a projecting layer with one boolean mask and a decode cache.
LAYER_FEATURES = (
    LAYER_INPUTS
    | EVERY_BOOLEAN_MASK
    | {"output-dim", "kv-len", "no-bias", "decode", "gradients"}
    # issue 14: packed segments and padding on either side are entries of the boolean mask
    # (what nn.make_attention_mask(segment_ids, segment_ids, jnp.equal) builds)
    | SEGMENTS_AND_LEFT_PADDING
)


def layer_refusals(layer: str) -> dict[str, str]:
    """Why both layers refuse these tags; `layer` names the one in the messages."""
    return {
        "kernel": "a layer: it always projects its inputs",
        "decode-chunked": f"the decode cache takes exactly one token per call ({layer} raises "
        "on longer inputs)",
        "value-dim": "one head dim for query, key and value (qkv_features // num_heads)",
        "scale": "no scale argument: the logits are always scaled by 1/sqrt(head dim)",
        "additive-mask": "the layer takes a boolean mask only (no bias argument)",
        "attn-bias": "the layer takes a boolean mask only (no bias argument)",
        "bias-kv": "torch-only feature",
        "zero-attn": "torch-only feature",
        "multi-axis": "leading axes are batch axes; attention runs over the one axis before "
        "the features",
        "weights-mean": f"{layer} sows per-head weights only; a head average is not one of its "
        "outputs",
    }


class FlaxAdapter(Adapter):
    """Setup, devices and versions of a Flax layer adapter."""

    flax_module = "flax"  # imported once in setup(): the import cost is paid there

    def setup(self) -> None:
        setup_jax()
        importlib.import_module(self.flax_module)

    def devices(self) -> list[str]:
        return jax_device_names()

    def versions(self) -> dict[str, str]:
        return jax_versions()


@dataclass(frozen=True)
class LayerCall:
    """The arguments of one forward call, as device arrays (key and value None for
    self-attention: the layer's own self-attention call, so grad_query is the total)."""

    query: Any
    key: Any
    value: Any
    training: bool  # dropout draws, not inference
    seed: np.int64  # the dropout key's seed (a traced argument: one program for all draws)
    grad_output: Any  # the cotangent for jax.vjp, None without gradients
    sow: bool  # sow the weights (a case that compares them)


def layer_call(case: Case, inputs: CaseInputs, device: Any) -> LayerCall:  # noqa: ANN401
    dt = case.dtype
    training = case.dropout is not None and case.dropout.training
    return LayerCall(
        query=to_jax(inputs.native("query"), dt, device),
        key=None if case.self_attention else to_jax(inputs.native("key"), dt, device),
        value=None if case.self_attention else to_jax(inputs.native("value"), dt, device),
        training=training,
        seed=np.int64(case.dropout.seed if training else 0),
        grad_output=to_jax(inputs.native("grad_output"), dt, device) if case.gradients else None,
        sow="weights" in case.compare,
    )


def decode_token_by_token(
    case: Case,
    inputs: CaseInputs,
    device: Any,  # noqa: ANN401
    state: Any,  # noqa: ANN401
    step: Callable[[Any, Any], tuple[Any, Any]],
) -> dict[str, np.ndarray]:
    """Feed every position, prefix included, as one step (Flax's caches take exactly one
    token per call); the step outputs concatenated along T are the output."""
    query = inputs.native("query")
    outs = []
    for t in range(case.shape.query_len):
        x = to_jax(query[:, t : t + 1], case.dtype, device)  # sliced on the host: no eager op
        y, state = step(state, x)
        outs.append(to_numpy(y))
    return {"output": np.concatenate(outs, axis=1)}


def layer_outputs(case: Case, y: Any, weights: Any, grads: Any) -> dict[str, np.ndarray]:  # noqa: ANN401
    """The output, the sown weights and (params, query, key, value) gradients in canonical
    names (key and value gradients only for cross-attention: self-attention's is in the
    query's)."""
    out = {"output": to_numpy(y)}
    if weights is not None:
        out["weights"] = to_numpy(weights)
    if grads is not None:
        g_params, g_query, g_key, g_value = grads
        out["grad_query"] = to_numpy(g_query)
        if not case.self_attention:
            out["grad_key"], out["grad_value"] = to_numpy(g_key), to_numpy(g_value)
        out.update(flax_param_grads(g_params))
    return out
