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

from conformance.adapter import Adapter, Declaration, Divergence, DropoutBehavior
from conformance.case import Case
from conformance.inputs import CaseInputs
from conformance.masks import build_mask

from .jax_dpa import (
    JAX_ENV,
    compose,
    flax_param_grads,
    flax_params,
    jax_device,
    jax_device_names,
    jax_dtype,
    jax_versions,
    setup_jax,
    tf32_on_cuda,
    to_jax,
    to_numpy,
)

LINEN_SRC = "https://github.com/google/flax/blob/v0.12.8/flax/linen/attention.py"

_FEATURES = frozenset(
    {
        "layer",
        "cross-attention",
        "kv-input-dims",
        "output-dim",
        "kv-len",
        "causal",
        "causal-top-left",
        "causal-bottom-right",
        "key-padding",
        "query-padding",
        "bool-mask",
        "per-head-mask",
        "window",
        "fully-masked-rows",
        "no-bias",
        "decode",
        "weights",
        "gradients",
        "dropout",
        "dropout-training",
        # issue 14: packed segments and padding on either side are entries of the boolean
        # mask (what nn.make_attention_mask(segment_ids, segment_ids, jnp.equal) builds)
        "segments",
        "left-padding",
    }
)

_UNSUPPORTED = {
    "kernel": "a layer: it always projects its inputs",
    "decode-chunked": "the decode cache takes one token per call (linen raises on longer inputs)",
    "value-dim": "one head dim for query, key and value (qkv_features // num_heads)",
    "grouped-query": "no num_kv_heads: dot_product_attention asserts equal q/k/v head counts",
    "multi-query": "no num_kv_heads: dot_product_attention asserts equal q/k/v head counts",
    "scale": "no scale argument: the query is always divided by sqrt(head dim)",
    "additive-mask": "the layer takes a boolean mask only (no bias argument)",
    "attn-bias": "the layer takes a boolean mask only (no bias argument)",
    "bias-kv": "torch-only feature",
    "zero-attn": "torch-only feature",
    "multi-axis": "leading axes are batch axes; attention runs over the one axis before "
    "the features",
    "weights-mean": "linen sows per-head weights only; a head average is not one of its outputs",
}


class FlaxLinen(Adapter):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="flax.linen",
        summary="flax.linen.MultiHeadDotProductAttention: einsum + softmax in flax, every mask "
        "(causal included) as the boolean mask, decode cache, weights via sow_weights",
        framework="flax",
        features=_FEATURES,
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

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[Any, Any, Any, Any]] = {}

    def setup(self) -> None:
        setup_jax()
        import flax.linen  # noqa: F401 - import cost paid once, here

    def devices(self) -> list[str]:
        return jax_device_names()

    def versions(self) -> dict[str, str]:
        return jax_versions()

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

        dev = jax_device(device)
        dt = case.dtype
        _, fwd, step, cache_shapes = self._build(case)
        params = flax_params(case, inputs, dev)
        query = inputs.native("query")

        if case.decode is not None:
            cache = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), dev),
                                 cache_shapes)  # fmt: skip
            outs = []
            for t in range(case.shape.query_len):  # one token per call: linen's cache demands it
                x = to_jax(query[:, t : t + 1], dt, dev)  # sliced on the host: no eager op
                y, cache = step(params, cache, x)
                outs.append(to_numpy(y))
            return {"output": np.concatenate(outs, axis=1)}

        xq = to_jax(query, dt, dev)
        xk = None if case.self_attention else to_jax(inputs.native("key"), dt, dev)
        xv = None if case.self_attention else to_jax(inputs.native("value"), dt, dev)
        attend, _ = build_mask(case)  # additive parts are declared unsupported
        mask = None if attend is None else to_jax(attend, "bool", dev)
        training = case.dropout is not None and case.dropout.training
        seed = np.int64(case.dropout.seed if training else 0)
        d_out = to_jax(inputs.native("grad_output"), dt, dev) if case.gradients else None
        sow = "weights" in case.compare
        (y, weights), grads = fwd(params, xq, xk, xv, mask, seed, d_out, sow=sow,
                                  training=training)  # fmt: skip
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


ADAPTERS = [FlaxLinen]
