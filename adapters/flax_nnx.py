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

Gradients: the jitted forward also runs jax.vjp w.r.t. the inputs and the parameter tree that
becomes the module's nnx.Param state, with the case's grad_output as the cotangent; kernels map
back with layouts.from_einsum_kernel. Self-attention uses the layer's own self-attention call
(inputs_k = inputs_v = None), so grad_query is the total through q, k and v.

Dropout (`flax.nnx.explicit` only: any dropout rate sends flax down the explicit path, even at
inference): `dropout_rate=p` at construction, `deterministic` per call, the dropout key
`nnx.Rngs(dropout=jax.random.key(seed))` passed to the call (a traced seed: one program for all
draws). broadcast_dropout=True, the default, shares one [T, S] mask across batch and heads.

Modules are built abstractly (nnx.eval_shape: no initializer runs, nothing compiles) once per
weight structure and shared by both variants; the canonical weights become the parameters inside
the jitted call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, DropoutBehavior, Unsupported
from conformance.adapter_api.feature_sets import DROPOUT, GROUPED_HEADS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, causal_offset

from .flax_common import (
    LAYER_FEATURES,
    FlaxAdapter,
    decode_token_by_token,
    layer_call,
    layer_outputs,
    layer_refusals,
)
from .jax_dpa import (
    MASKED_UNIFORM,
    MASKED_UNIFORM_LINK,
    SOFTMAX_F32,
    compose,
    softmax_float32,
    tf32_on_cuda,
)
from .jax_runtime import (
    JAX_ENV,
    cpu_f16_refusal,
    flax_params,
    jax_device,
    jax_dtype,
    release_programs,
    strip_mask,
    to_jax,
)

FLAX_SRC = "https://github.com/google/flax/blob/v0.12.8/flax/nnx/nn/attention.py"

_UNSUPPORTED = {
    **layer_refusals("nnx"),
    "weights": "only the explicit path (sow_weights=True) exposes the weights",
}

_EXPLICIT_UNIFORM = (
    "dot_product_attention_weights replaces masked logits by jnp.finfo(dtype).min, a finite "
    "value, not -inf: a row whose every key is masked has equal logits and gets uniform "
    "weights over all S keys (the mean of V) instead of NaN"
)
_EXPLICIT_UNIFORM_LINK = f"{FLAX_SRC}#L165-L179"

_FUSED_NO_DROPOUT = (
    "a dropout rate switches flax to its explicit path even in inference mode: the layer "
    "passes dropout_rate to dot_product_attention, which calls jax.nn.dot_product_attention "
    f"only when `dropout_rate == 0.0 and module is None` ({FLAX_SRC}#L278); the explicit "
    "path is flax.nnx.explicit"
)

# broadcast_dropout=True (the default): one keep mask of shape [T, S] for every batch element
# and head ("dropout is broadcast across the batch + head dimensions"); the weights are sown
# before dropout (attention.py#L182 sows, #L185-L196 drops).
NNX_DROPOUT = DropoutBehavior(
    target="weights", shared=("batch", "heads"), returned_weights="undropped"
)


class _Built:
    """One abstract module per structure (no initializer runs) and the jitted functions.

    Shared by both variants: the module is built under `nnx.eval_shape`, so its randomly
    initialised parameters are never computed (each initializer would compile small eager
    programs per shape: two thirds of the fused variant's compilations before); the canonical weights
    become its parameters inside the jitted call.
    """

    def __init__(self, graphdef: Any, params: Any, cache: Any, fwd: Any, step: Any) -> None:
        self.graphdef = graphdef
        self.params = params  # abstract nnx.State of the nnx.Param variables
        self.cache = cache  # abstract nnx.State of the decode cache (None without decode)
        self.fwd = fwd
        self.step = step


_BUILT: dict[tuple, _Built] = {}


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


def check_path(fused: bool, calls: int, sown: bool) -> None:
    """Raise if flax took a different path than the variant is named after."""
    if fused and (calls != 1 or sown):
        raise RuntimeError(
            f"expected the fused path (one jax.nn.dot_product_attention call, nothing "
            f"sown), saw {calls} fused call(s), sown={sown}"
        )
    if not fused and (calls != 0 or not sown):
        raise RuntimeError(
            f"expected the explicit path (weights sown, no fused call), saw {calls} fused "
            f"call(s), sown={sown}"
        )


def _build(case: Case, rate: float) -> _Built:
    """The abstract module and jitted functions for this weight structure (cached)."""
    import jax
    from flax import nnx

    s = case.shape
    decode = case.decode is not None
    key = (s.query_dim, s.key_input_dim, s.num_heads, s.num_kv_heads, s.key_dim)
    key += (s.output_dim, case.use_bias, case.dtype, decode, rate)
    if decode:  # the cache's shape is part of the module's state
        key += (s.batch, s.query_len)
    if key in _BUILT:
        return _BUILT[key]
    dt = jax_dtype(case.dtype)

    def make() -> Any:
        module = nnx.MultiHeadAttention(
            num_heads=s.num_heads,
            in_features=s.query_dim,
            qkv_features=s.num_heads * s.key_dim,
            out_features=s.output_dim,
            num_kv_heads=s.num_kv_heads,
            in_kv_features=s.key_input_dim,
            use_bias=case.use_bias,
            param_dtype=dt,
            dropout_rate=rate,
            # The dropout key comes with each call (nnx.Rngs(dropout=seed)), not from a stream
            # stored at construction.
            keep_rngs=False,
            decode=decode,
            rngs=nnx.Rngs(0),
        )
        if decode:
            module.init_cache((s.batch, s.query_len, s.query_dim), dtype=dt)
        return module

    graphdef, params, cache = nnx.split(nnx.eval_shape(make), nnx.Param, ...)

    def merge(pure: Any, cache_state: Any = None) -> Any:
        """The module with the canonical weights (a plain dict tree) as its parameters."""
        state = jax.tree.map(lambda leaf: leaf, params)  # a fresh State to fill
        nnx.replace_by_pure_dict(state, pure)
        return nnx.merge(graphdef, state, cache if cache_state is None else cache_state)

    def call(m: Any, fused: bool, sow: bool, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Call the module, capturing what it sows (nnx.capture, flax's intended API)."""
        with count_fused_calls() as calls:
            y, sown = nnx.capture(lambda mod: mod(*args, sow_weights=sow, **kwargs),
                                  nnx.Intermediate)(m)  # fmt: skip
        weights = sown["attention_weights"].get_value()[0] if "attention_weights" in sown else None
        check_path(fused, calls[0], weights is not None)
        return y, weights

    def dropout_kwargs(seed: Any, training: bool) -> dict[str, Any]:
        if not rate:
            return {}
        if not training:
            return {"deterministic": True}
        return {"deterministic": False, "rngs": nnx.Rngs(dropout=jax.random.key(seed))}

    def fwd(pure, xq, xk, xv, mask, seed, d_out, *, is_causal, training, fused, sow):  # noqa: ANN001, ANN202
        """Forward; with `d_out` also jax.vjp w.r.t. the inputs and every parameter.

        Self-attention passes xk = xv = None: the layer then uses `xq` for all three
        (flax's own self-attention call), so the query's gradient is the total.
        """
        extra = dropout_kwargs(seed, training)

        def forward(pure: Any, xq: Any, xk: Any, xv: Any) -> tuple[Any, Any]:
            return call(merge(pure), fused, sow, xq, xk, xv, mask=mask, is_causal=is_causal,
                        decode=False, **extra)  # fmt: skip

        if d_out is None:
            return forward(pure, xq, xk, xv), None
        y, vjp, weights = jax.vjp(forward, pure, xq, xk, xv, has_aux=True)
        return (y, weights), vjp(d_out)

    def step(pure, cache_state, x, *, fused, sow):  # noqa: ANN001, ANN202
        m = merge(pure, cache_state)
        y, _ = call(m, fused, sow, x, decode=True, **dropout_kwargs(None, False))
        return y, nnx.state(m, nnx.Cache)

    statics = ("is_causal", "training", "fused", "sow")
    built = _Built(graphdef, params, cache if decode else None,
                   jax.jit(fwd, static_argnames=statics),
                   jax.jit(step, static_argnames=("fused", "sow")))  # fmt: skip
    _BUILT[key] = built
    return built


def dropout_rate(case: Case) -> float:
    """The case's attention dropout rate (0 without one)."""
    return float(case.dropout.rate) if case.dropout is not None else 0.0


class _FlaxNnx(FlaxAdapter):
    flax_module = "flax.nnx"
    fused = True  # the path this variant is named after (checked on every trace)
    sow_weights = False  # what it passes to the layer to get there

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        try:
            return self._run(case, inputs, device)
        except ValueError as error:
            cpu_f16_refusal(error)
            raise

    def _run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import jax

        release_programs()
        s = case.shape
        if s.key_input_dim != s.value_input_dim:
            raise Unsupported(
                "key and value inputs with different dims: nnx.MultiHeadAttention has one "
                "in_kv_features for both"
            )
        dev = jax_device(device)
        built = _build(case, dropout_rate(case))
        pure = flax_params(case, inputs, dev)
        path = {"fused": self.fused, "sow": self.sow_weights}

        if case.decode is not None:
            # A fresh cache holds zeros and index 0, exactly what init_cache makes.
            state = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), dev),
                                 built.cache)  # fmt: skip
            return decode_token_by_token(
                case, inputs, dev, state, lambda state, x: built.step(pure, state, x, **path)
            )

        call = layer_call(case, inputs, dev)
        is_causal = bool(case.mask.causal) and causal_offset(case) == 0
        attend, bias = build_mask(strip_mask(case, causal=None) if is_causal else case)
        if bias is not None:  # declared unsupported; never reached through evaluate()
            raise Unsupported("additive masks: the layer takes a boolean mask only")
        mask = None if attend is None else to_jax(attend, "bool", dev)
        # the dropout seed is what nnx.Rngs(dropout=seed) keys
        (y, weights), grads = built.fwd(pure, call.query, call.key, call.value, mask, call.seed,
                                        call.grad_output, is_causal=is_causal,
                                        training=call.training, **path)  # fmt: skip
        return layer_outputs(case, y, weights, grads)


class FlaxNnxFused(_FlaxNnx):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="flax.nnx.fused",
        summary="flax.nnx.MultiHeadAttention, default path: jax.nn.dot_product_attention "
        "inside (no dropout, no sown weights); is_causal flag, boolean mask, decode cache",
        framework="flax",
        features=LAYER_FEATURES | GROUPED_HEADS,
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
        unsupported_reasons={
            **_UNSUPPORTED,
            "dropout": _FUSED_NO_DROPOUT,
            "dropout-training": _FUSED_NO_DROPOUT,
        },
    )
    fused = True
    sow_weights = False


class FlaxNnxExplicit(_FlaxNnx):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="flax.nnx.explicit",
        summary="flax.nnx.MultiHeadAttention(sow_weights=True): flax's own einsum + softmax "
        "(the path dropout takes), per-head weights sown and compared; attention dropout "
        "(broadcast_dropout=True, the default)",
        framework="flax",
        features=LAYER_FEATURES | GROUPED_HEADS | {"weights"} | DROPOUT,
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
        dropout=NNX_DROPOUT,
    )
    fused = False
    sow_weights = True


ADAPTERS = [FlaxNnxFused, FlaxNnxExplicit]
