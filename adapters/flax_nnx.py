"""`flax.nnx.*`: flax.nnx.MultiHeadAttention (layer mode) with the canonical weights.

Weights (see conformance.layouts): query/key/value kernels [D, N, K] = to_einsum_kernel(w),
biases [N, K] as they are; the output kernel [H, V, Do] and bias [Do] are canonical already.
nnx has one head dim for q, k and v (qkv_features // num_heads) and one input dim for key and
value (in_kv_features), and `num_kv_heads` for grouped-query attention.

Two execution paths, chosen inside flax.nnx.nn.attention.dot_product_attention:

- `flax.nnx.fused`: no dropout and no sown weights, so flax hands q/k/v to
  jax.nn.dot_product_attention (XLA). It inherits that function's float32 softmax.
- `flax.nnx.explicit`: `sow_weights=True`, so flax runs its own einsum + softmax in
  dot_product_attention_weights (the path dropout also takes) and sows the per-head weights,
  which this variant returns.

The adapter checks, each time a function is traced, that the intended path ran: a pass-through
counter on jax.nn.dot_product_attention must see exactly one call on the fused path and none on
the explicit one, and the explicit path must have sown its weights.

Masks: `is_causal=True` for a causal mask when it is top-left aligned (nnx builds tril(ones(T, S))
on both paths); every other component (padding, random/per-head, window, named rows, bottom-right
causal when T != S) travels as the boolean `mask` [B, 1|H, T, S], True = attend, the only other
masking input the layer has.

Decoding (`decode=True`, after `init_cache`): nnx's cache accepts exactly one token per call (it
raises on anything longer), so every position, prefix included, is fed as one step; the outputs of
all steps are concatenated along T and compared with full causal attention.

Built modules and jitted functions are cached per weight structure; weights are set per case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from conformance.adapter import Adapter, Declaration, Divergence, Unsupported
from conformance.case import Case
from conformance.inputs import CaseInputs
from conformance.layouts import to_einsum_kernel
from conformance.masks import build_mask, causal_offset

from .jax_dpa import (
    JAX_ENV,
    MASKED_UNIFORM,
    MASKED_UNIFORM_LINK,
    SOFTMAX_F32,
    compose,
    cpu_f16_refusal,
    jax_device,
    jax_device_names,
    jax_dtype,
    jax_versions,
    setup_jax,
    softmax_float32,
    strip_mask,
    tf32_on_cuda,
    to_jax,
    to_numpy,
)

FLAX_SRC = "https://github.com/google/flax/blob/v0.12.8/flax/nnx/nn/attention.py"

_FEATURES = frozenset(
    {
        "layer",
        "cross-attention",
        "kv-input-dims",
        "output-dim",
        "kv-len",
        "grouped-query",
        "multi-query",
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
    }
)

_UNSUPPORTED = {
    "kernel": "a layer: it always projects its inputs",
    "value-dim": "one head dim for query, key and value (qkv_features // num_heads)",
    "scale": "no scale argument: the logits are always scaled by 1/sqrt(head dim)",
    "additive-mask": "the layer takes a boolean mask only (no bias argument)",
    "attn-bias": "the layer takes a boolean mask only (no bias argument)",
    "bias-kv": "torch-only feature",
    "zero-attn": "torch-only feature",
    "multi-axis": "leading axes are batch axes; attention runs over the one axis before "
    "the features",
    "weights": "only the explicit path (sow_weights=True) exposes the weights",
    "weights-mean": "flax sows per-head weights only; a head average is not one of its outputs",
}

_EXPLICIT_UNIFORM = (
    "dot_product_attention_weights replaces masked logits by jnp.finfo(dtype).min, a finite "
    "value, not -inf: a row whose every key is masked has equal logits and gets uniform "
    "weights over all S keys (the mean of V) instead of NaN"
)
_EXPLICIT_UNIFORM_LINK = f"{FLAX_SRC}#L165-L179"


class _Built:
    """One module per weight structure, its graphdef and the jitted functions using it."""

    def __init__(self, module: Any, fwd: Any, step: Any) -> None:
        self.module = module
        self.fwd = fwd
        self.step = step


@contextlib.contextmanager
def count_fused_calls() -> Iterator[list[int]]:
    """Count calls of jax.nn.dot_product_attention while tracing (a pass-through, no mock).

    flax looks the function up as `jax.nn.dot_product_attention` at call time, so the counter
    sees exactly the calls flax makes. Tracing happens once per signature, in this thread.
    """
    import jax

    original = jax.nn.dot_product_attention
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    jax.nn.dot_product_attention = counted
    try:
        yield calls
    finally:
        jax.nn.dot_product_attention = original


class _FlaxNnx(Adapter):
    fused = True  # the path this variant is named after (checked on every trace)
    sow_weights = False  # what it passes to the layer to get there

    def __init__(self) -> None:
        self._built: dict[tuple, _Built] = {}

    def setup(self) -> None:
        setup_jax()
        import flax.nnx  # noqa: F401 - import cost paid once, here

    def devices(self) -> list[str]:
        return jax_device_names()

    def versions(self) -> dict[str, str]:
        return jax_versions()

    # --- building ---------------------------------------------------------------------------

    def _check_path(self, calls: int, sown: bool) -> None:
        """Raise if flax took a different path than this variant is named after."""
        if self.fused and (calls != 1 or sown):
            raise RuntimeError(
                f"expected the fused path (one jax.nn.dot_product_attention call, nothing "
                f"sown), saw {calls} fused call(s), sown={sown}"
            )
        if not self.fused and (calls != 0 or not sown):
            raise RuntimeError(
                f"expected the explicit path (weights sown, no fused call), saw {calls} fused "
                f"call(s), sown={sown}"
            )

    def _build(self, case: Case, decode: bool) -> _Built:
        import jax
        from flax import nnx

        s = case.shape
        if s.key_input_dim != s.value_input_dim:
            raise Unsupported(
                "key and value inputs with different dims: nnx.MultiHeadAttention has one "
                "in_kv_features for both"
            )
        key = (s.query_dim, s.key_input_dim, s.num_heads, s.num_kv_heads, s.key_dim)
        key += (s.output_dim, case.use_bias, case.dtype, decode)
        if decode:  # the cache's shape is part of the module's state
            key += (s.batch, s.query_len)
        if key in self._built:
            return self._built[key]
        dt = jax_dtype(case.dtype)
        module = nnx.MultiHeadAttention(
            num_heads=s.num_heads,
            in_features=s.query_dim,
            qkv_features=s.num_heads * s.key_dim,
            out_features=s.output_dim,
            num_kv_heads=s.num_kv_heads,
            in_kv_features=s.key_input_dim,
            use_bias=case.use_bias,
            param_dtype=dt,
            decode=decode,
            rngs=nnx.Rngs(0),
        )
        if decode:
            module.init_cache((s.batch, s.query_len, s.query_dim), dtype=dt)
        graphdef, _ = nnx.split(module)
        sow = self.sow_weights

        def call(m: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            """Call the module, capturing what it sows (nnx.capture, flax's intended API)."""
            with count_fused_calls() as calls:
                y, sown = nnx.capture(lambda mod: mod(*args, **kwargs), nnx.Intermediate)(m)
            weights = (
                sown["attention_weights"].get_value()[0] if "attention_weights" in sown else None
            )
            self._check_path(calls[0], weights is not None)
            return y, weights

        def fwd(state: Any, xq: Any, xk: Any, xv: Any, mask: Any, is_causal: bool) -> Any:
            m = nnx.merge(graphdef, state)
            return call(
                m, xq, xk, xv, mask=mask, is_causal=is_causal, sow_weights=sow, decode=False
            )

        def step(state: Any, x: Any) -> Any:
            m = nnx.merge(graphdef, state)
            y, _ = call(m, x, sow_weights=sow, decode=True)
            return y, nnx.state(m)

        built = _Built(
            module,
            jax.jit(fwd, static_argnames=("is_causal",)),
            jax.jit(step),
        )
        self._built[key] = built
        return built

    def _set_weights(self, module: Any, inputs: CaseInputs, case: Case, device: Any) -> None:
        dt = case.dtype
        for name, proj in (("q", module.query), ("k", module.key), ("v", module.value)):
            proj.kernel[...] = to_jax(to_einsum_kernel(inputs.native(f"w{name}")), dt, device)
            if case.use_bias:
                proj.bias[...] = to_jax(inputs.native(f"b{name}"), dt, device)
        module.out.kernel[...] = to_jax(inputs.native("wo"), dt, device)  # [H, V, Do] as is
        if case.use_bias:
            module.out.bias[...] = to_jax(inputs.native("bo"), dt, device)

    # --- running ----------------------------------------------------------------------------

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        try:
            return self._run(case, inputs, device)
        except ValueError as error:
            cpu_f16_refusal(error)
            raise

    def _run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        from flax import nnx

        dev = jax_device(device)
        dt = case.dtype
        decode = case.decode is not None
        built = self._build(case, decode)
        self._set_weights(built.module, inputs, case, dev)
        if decode:
            built.module.init_cache(
                (case.shape.batch, case.shape.query_len, case.shape.query_dim), dtype=jax_dtype(dt)
            )
        state = nnx.state(built.module)
        xq = to_jax(inputs.native("query"), dt, dev)

        if decode:
            outs = []
            for t in range(case.shape.query_len):  # one token per call: nnx's cache demands it
                y, state = built.step(state, xq[:, t : t + 1])
                outs.append(to_numpy(y))
            return {"output": np.concatenate(outs, axis=1)}

        # Self-attention hands the very same array to all three inputs, as users do.
        xk = xq if case.self_attention else to_jax(inputs.native("key"), dt, dev)
        xv = xq if case.self_attention else to_jax(inputs.native("value"), dt, dev)
        is_causal = bool(case.mask.causal) and causal_offset(case) == 0
        attend, bias = build_mask(strip_mask(case, causal=None) if is_causal else case)
        if bias is not None:  # declared unsupported; never reached through evaluate()
            raise Unsupported("additive masks: the layer takes a boolean mask only")
        mask = None if attend is None else to_jax(attend, "bool", dev)
        y, weights = built.fwd(state, xq, xk, xv, mask, is_causal=is_causal)
        out = {"output": to_numpy(y)}
        if weights is not None:
            out["weights"] = to_numpy(weights)
        return out


class FlaxNnxFused(_FlaxNnx):
    declaration = Declaration(
        name="flax.nnx.fused",
        summary="flax.nnx.MultiHeadAttention, default path: jax.nn.dot_product_attention "
        "inside (no dropout, no sown weights); is_causal flag, boolean mask, decode cache",
        framework="flax",
        features=_FEATURES,
        requires=("flax", "jax"),
        worker="jax",
        env=JAX_ENV,
        divergences=compose(
            [
                Divergence(
                    id="masked-rows-uniform",
                    reason=MASKED_UNIFORM + " (flax passes the mask on to "
                    "jax.nn.dot_product_attention)",
                    link=MASKED_UNIFORM_LINK,
                    when=frozenset({"fully-masked-rows"}),
                    masked_rows="uniform",
                )
            ],
            [
                softmax_float32("the fused path is jax.nn.dot_product_attention: " + SOFTMAX_F32),
                tf32_on_cuda(),
            ],
        ),
        unsupported_reasons=_UNSUPPORTED,
    )
    fused = True
    sow_weights = False


class FlaxNnxExplicit(_FlaxNnx):
    declaration = Declaration(
        name="flax.nnx.explicit",
        summary="flax.nnx.MultiHeadAttention(sow_weights=True): flax's own einsum + softmax "
        "(the path dropout takes), per-head weights sown and compared",
        framework="flax",
        features=_FEATURES | {"weights"},
        requires=("flax", "jax"),
        worker="jax",
        env=JAX_ENV,
        divergences=compose(
            [
                Divergence(
                    id="masked-rows-uniform",
                    reason=_EXPLICIT_UNIFORM,
                    link=_EXPLICIT_UNIFORM_LINK,
                    when=frozenset({"fully-masked-rows"}),
                    masked_rows="uniform",
                )
            ],
            [tf32_on_cuda()],
        ),
        unsupported_reasons={k: v for k, v in _UNSUPPORTED.items() if k != "weights"},
    )
    fused = False
    sow_weights = True


ADAPTERS = [FlaxNnxFused, FlaxNnxExplicit]
