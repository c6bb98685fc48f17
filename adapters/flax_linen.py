"""`flax.linen`: flax.linen.MultiHeadDotProductAttention (layer mode) with the canonical weights.

Parameters are handed to `apply` as the canonical arrays in linen's layout:
query/key/value {"kernel": [D, H, K] = to_einsum_kernel(w), "bias": [H, K]}, out {"kernel":
[H, V, Do] (canonical wo), "bias": [Do]}. linen has one head dim for q, k and v, no grouped-query
attention (it asserts equal head counts), and infers each input dim from its input, so key and
value may have different model dims.

Path: linen always runs its own einsum + softmax (flax.linen.attention.dot_product_attention);
`sow_weights=True` (used when a case compares weights) only stores the weights it computed.

Masks: linen has no causal flag (its docs build one with nn.make_causal_mask), so every mask
component, causal included, travels as the boolean `mask` [B, 1|H, T, S], True = attend.

Decoding (`decode=True`): the cache variables are created by `init` with the full-length input
and then filled one token per `apply(..., mutable=["cache"])` call (linen raises on longer
inputs), so every position, prefix included, is one step; the step outputs concatenated along T
are compared with full causal attention.

Gradients: the jitted forward also runs jax.vjp w.r.t. the inputs and the `params` tree, with
the case's grad_output as the cotangent; kernels map back with layouts.from_einsum_kernel.
Self-attention calls `apply(params, xq)` (inputs_k = inputs_v = None: linen's own self-attention
form), so grad_query is the total through q, k and v.

Dropout: `dropout_rate=p` at construction, `deterministic` per call, `rngs={"dropout":
jax.random.key(seed)}` for training draws (a traced seed: one program for all draws).
broadcast_dropout=True, the default, shares one [T, S] mask across batch and heads; the sown
weights are the undropped ones.

Jitted functions are cached per weight structure; parameters are plain arguments, set per case.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, DropoutBehavior
from conformance.adapter_api.feature_sets import DROPOUT
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask

from .flax_common import (
    LAYER_FEATURES,
    FlaxAdapter,
    decode_token_by_token,
    layer_call,
    layer_outputs,
    layer_refusals,
)
from .jax_dpa import compose, tf32_on_cuda
from .jax_runtime import JAX_ENV, flax_params, jax_device, jax_dtype, release_programs, to_jax

LINEN_SRC = "https://github.com/google/flax/blob/v0.12.8/flax/linen/attention.py"

_UNSUPPORTED = {
    **layer_refusals("linen"),
    "grouped-query": "no num_kv_heads: dot_product_attention asserts equal q/k/v head counts",
    "multi-query": "no num_kv_heads: dot_product_attention asserts equal q/k/v head counts",
}


class FlaxLinen(FlaxAdapter):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="flax.linen",
        summary="flax.linen.MultiHeadDotProductAttention: einsum + softmax in flax, every mask "
        "(causal included) as the boolean mask, decode cache, weights via sow_weights",
        framework="flax",
        features=LAYER_FEATURES | {"weights"} | DROPOUT,
        requires=("flax", "jax"),
        worker="jax",
        env=JAX_ENV,
        divergences=compose(
            [
                Divergence(
                    id="masked-rows-uniform",
                    reason="dot_product_attention_weights replaces masked logits by "
                    "jnp.finfo(dtype).min, a finite value, not -inf: a row whose every key is "
                    "masked has equal logits and gets uniform weights over all S keys (the mean "
                    "of V) instead of NaN",
                    link=f"{LINEN_SRC}#L137-L146",
                    when=frozenset({"fully-masked-rows"}),
                    masked_rows="uniform",
                )
            ],
            [tf32_on_cuda()],
        ),
        unsupported_reasons=_UNSUPPORTED,
        # broadcast_dropout=True (the default): one keep mask [T, S] for every batch element
        # and head; the weights are sown before dropout (attention.py#L149 sows, #L152-L161
        # drops).
        dropout=DropoutBehavior(
            target="weights", shared=("batch", "heads"), returned_weights="undropped"
        ),
    )

    flax_module = "flax.linen"

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[Any, Any, Any, Any]] = {}

    def _build(self, case: Case) -> tuple[Any, Any, Any, Any]:
        """(model, jitted forward, jitted decode step, abstract decode cache) for this weight
        structure."""
        import jax
        from flax import linen as nn

        s = case.shape
        decode = case.decode is not None
        rate = float(case.dropout.rate) if case.dropout is not None else 0.0
        key = (s.num_heads, s.key_dim, s.output_dim, case.use_bias, case.dtype, decode, rate)
        if decode:  # the cache's shape comes from the full-length input
            key += (s.batch, s.query_len, s.query_dim)
        if key in self._built:
            return self._built[key]
        model = nn.MultiHeadDotProductAttention(
            num_heads=s.num_heads,
            qkv_features=s.num_heads * s.key_dim,
            out_features=s.output_dim,
            use_bias=case.use_bias,
            param_dtype=jax_dtype(case.dtype),
            dropout_rate=rate,  # broadcast_dropout=True, the default
            decode=decode,
        )

        def fwd(params, xq, xk, xv, mask, seed, d_out, *, sow, training):  # noqa: ANN001, ANN202
            """Forward; with `d_out` also jax.vjp w.r.t. the inputs and every parameter.

            Self-attention passes xk = xv = None: linen then uses `xq` for all three (its own
            self-attention call), so the query's gradient is the total.
            """
            extra: dict[str, Any] = {}
            if rate:
                extra["deterministic"] = not training
                if training:
                    extra["rngs"] = {"dropout": jax.random.key(seed)}

            def forward(params: Any, xq: Any, xk: Any, xv: Any) -> tuple[Any, Any]:
                if not sow:
                    return model.apply({"params": params}, xq, xk, xv, mask=mask, **extra), None
                y, state = model.apply(
                    {"params": params}, xq, xk, xv, mask=mask, sow_weights=True,
                    mutable=["intermediates"], **extra,
                )  # fmt: skip
                return y, state["intermediates"]["attention_weights"][0]

            if d_out is None:
                return forward(params, xq, xk, xv), None
            y, vjp, weights = jax.vjp(forward, params, xq, xk, xv, has_aux=True)
            return (y, weights), vjp(d_out)

        def step(params: Any, cache: Any, x: Any) -> Any:
            extra = {"deterministic": True} if rate else {}
            y, state = model.apply({"params": params, "cache": cache}, x, mutable=["cache"],
                                   **extra)  # fmt: skip
            return y, state["cache"]

        cache = None
        if decode:
            # The cache's structure from linen's own init (traced, not run): zeros and index 0
            # are exactly what a fresh init holds.
            shape = (s.batch, s.query_len, s.query_dim)
            x = jax.ShapeDtypeStruct(shape, jax_dtype(case.dtype))
            cache = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["cache"]
        built = (
            model,
            jax.jit(fwd, static_argnames=("sow", "training")),
            jax.jit(step),
            cache,
        )
        self._built[key] = built
        return built

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import jax

        release_programs()
        dev = jax_device(device)
        _, fwd, step, cache_shapes = self._build(case)
        params = flax_params(case, inputs, dev)

        if case.decode is not None:
            cache = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), dev),
                                 cache_shapes)  # fmt: skip
            return decode_token_by_token(
                case, inputs, dev, cache, lambda cache, x: step(params, cache, x)
            )

        call = layer_call(case, inputs, dev)
        attend, _ = build_mask(case)  # additive parts are declared unsupported
        mask = None if attend is None else to_jax(attend, "bool", dev)
        (y, weights), grads = fwd(params, call.query, call.key, call.value, mask, call.seed,
                                  call.grad_output, sow=call.sow, training=call.training)  # fmt: skip
        return layer_outputs(case, y, weights, grads)


ADAPTERS = [FlaxLinen]
