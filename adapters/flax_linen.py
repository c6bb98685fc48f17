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

Jitted functions are cached per weight structure; parameters are plain arguments, set per case.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.adapter import Adapter, Declaration, Divergence
from conformance.case import Case
from conformance.inputs import CaseInputs
from conformance.layouts import to_einsum_kernel
from conformance.masks import build_mask

from .jax_dpa import (
    JAX_ENV,
    compose,
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
    }
)

_UNSUPPORTED = {
    "kernel": "a layer: it always projects its inputs",
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
    )

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[Any, Any, Any]] = {}

    def setup(self) -> None:
        setup_jax()
        import flax.linen  # noqa: F401 - import cost paid once, here

    def devices(self) -> list[str]:
        return jax_device_names()

    def versions(self) -> dict[str, str]:
        return jax_versions()

    def _build(self, case: Case) -> tuple[Any, Any, Any]:
        """(model, jitted forward, jitted decode step) for this weight structure."""
        import jax
        from flax import linen as nn

        s = case.shape
        decode = case.decode is not None
        key = (s.num_heads, s.key_dim, s.output_dim, case.use_bias, case.dtype, decode)
        if key in self._built:
            return self._built[key]
        model = nn.MultiHeadDotProductAttention(
            num_heads=s.num_heads,
            qkv_features=s.num_heads * s.key_dim,
            out_features=s.output_dim,
            use_bias=case.use_bias,
            param_dtype=jax_dtype(case.dtype),
            decode=decode,
        )

        def fwd(params: Any, xq: Any, xk: Any, xv: Any, mask: Any, sow: bool) -> Any:
            if not sow:
                return model.apply({"params": params}, xq, xk, xv, mask=mask), None
            y, state = model.apply(
                {"params": params}, xq, xk, xv, mask=mask, sow_weights=True,
                mutable=["intermediates"],
            )  # fmt: skip
            return y, state["intermediates"]["attention_weights"][0]

        def step(params: Any, cache: Any, x: Any) -> Any:
            y, state = model.apply({"params": params, "cache": cache}, x, mutable=["cache"])
            return y, state["cache"]

        built = (model, jax.jit(fwd, static_argnames=("sow",)), jax.jit(step))
        self._built[key] = built
        return built

    def params(self, case: Case, inputs: CaseInputs, device: Any) -> dict[str, Any]:
        """Canonical weights in linen's parameter tree."""
        dt = case.dtype
        tree: dict[str, Any] = {}
        for proj, n in (("query", "q"), ("key", "k"), ("value", "v")):
            tree[proj] = {"kernel": to_jax(to_einsum_kernel(inputs.native(f"w{n}")), dt, device)}
            if case.use_bias:
                tree[proj]["bias"] = to_jax(inputs.native(f"b{n}"), dt, device)
        tree["out"] = {"kernel": to_jax(inputs.native("wo"), dt, device)}
        if case.use_bias:
            tree["out"]["bias"] = to_jax(inputs.native("bo"), dt, device)
        return tree

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import jax
        import jax.numpy as jnp

        dev = jax_device(device)
        dt = case.dtype
        model, fwd, step = self._build(case)
        params = self.params(case, inputs, dev)
        xq = to_jax(inputs.native("query"), dt, dev)

        if case.decode is not None:
            # The cache's structure comes from linen's own init (traced, not run): zeros,
            # index 0, exactly what a fresh init holds.
            shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), xq)["cache"]
            cache = jax.tree.map(lambda a: jax.device_put(jnp.zeros(a.shape, a.dtype), dev), shapes)
            outs = []
            for t in range(case.shape.query_len):  # one token per call: linen's cache demands it
                y, cache = step(params, cache, xq[:, t : t + 1])
                outs.append(to_numpy(y))
            return {"output": np.concatenate(outs, axis=1)}

        xk = xq if case.self_attention else to_jax(inputs.native("key"), dt, dev)
        xv = xq if case.self_attention else to_jax(inputs.native("value"), dt, dev)
        attend, _ = build_mask(case)  # additive parts are declared unsupported
        mask = None if attend is None else to_jax(attend, "bool", dev)
        sow = "weights" in case.compare
        y, weights = fwd(params, xq, xk, xv, mask, sow=sow)
        out = {"output": to_numpy(y)}
        if weights is not None:
            out["weights"] = to_numpy(weights)
        return out


ADAPTERS = [FlaxLinen]
