"""Keras 3 `keras.layers.MultiHeadAttention` on the TensorFlow, JAX and PyTorch backends.

Six adapters, `keras.<backend>.<path>`:

- backend: Keras fixes its backend at import (KERAS_BACKEND), so each backend has its own
  worker process ("keras-tensorflow", "keras-jax", "keras-torch").
- path: `MultiHeadAttention._compute_attention` takes one of two code paths
  (keras/src/layers/attention/multi_head_attention.py, 3.15):
  * fused: `ops.dot_product_attention` (the backend's SDPA: tf einsum + where, jax.nn
    dot_product_attention, torch F.scaled_dot_product_attention) when no scores are requested,
    dropout is 0 and the projected tensors are 4-D (3-D inputs, one attention axis);
  * explicit: einsum + `keras.layers.Softmax(mask=...)` + einsum, whenever
    `return_attention_scores=True` (and for every multi-axis call).
  `setup()` checks, by counting calls to `ops.dot_product_attention`, that each variant really
  takes its path; the fused variant only declares cases that cannot fall back.

Neutral mask components map to the native arguments that express them, so each is exercised:
causal -> `use_causal_mask` (top-left), key padding -> `value_mask` (or `key_mask` for cross
attention), query padding -> a Keras mask attached to the query tensor (the mechanism
Embedding(mask_zero=True)/Masking use; the `query_mask=` call argument is overwritten inside
`call` and has no effect in Keras 3.15), window -> `sliding_window`, everything else (random,
per-head, explicit fully masked rows) -> `attention_mask` [B, T, S] or [B, H, T, S].
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from conformance.adapter_api.adapter import Declaration, Unsupported
from conformance.adapter_api.feature_sets import DTYPE_TAGS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .keras_common import (
    COMMON_UNSUPPORTED,
    EXPLICIT_ONLY,
    MHA_FEATURES,
    DotProductAttentionCounter,
    KerasAdapter,
    KerasMasks,
    device_scope_name,
    dropout_rate,
    einsum_weight_pairs,
    fused_refusals,
    keras_masks,
    layer_declaration,
    mha_arguments,
    mha_input_shapes,
    parameter_gradients,
    scores_to_canonical,
    to_numpy_float,
)

# Re-exported: tests and docs/adapters/keras.md name keras_mha.valid_tokens.
from .keras_common import valid_tokens as valid_tokens

PATHS = ("fused", "explicit")
# Key, in a layer's per-layer cache (next to its jitted functions), of the weights last set.
WEIGHTS_SET = "weights-set"


# --- the adapter ---------------------------------------------------------------------------


class KerasBug(RuntimeError):
    """Keras raised on an input the layer documents as valid: a bug, reported as `error`
    with an explanation of the bug (the original exception is chained and quoted)."""


@dataclass(frozen=True)
class KnownCrash:
    """An input on which the installed Keras raises instead of computing, recognised by the
    exception's type and message under the stated conditions only.

    bug=False: a platform limit the implementation genuinely cannot run (a kernel that
    refuses a dtype or a rank): reported as `unsupported` with the reason. bug=True: the layer
    claims to support the input and crashes on it: re-raised as KerasBug, so the verdict is
    `error` and its message names the bug instead of a bare traceback line.
    """

    backend: str | None  # None: every backend
    path: str | None  # None: both paths
    applies: Any  # Callable[[Case], bool]
    error: str  # exception class name
    message: str  # substring of the exception message
    reason: str
    bug: bool = False

    def explain(self, error: Exception) -> Exception:
        """The exception to raise instead of `error`."""
        first = str(error).strip().splitlines()[0][:200]
        text = f"{self.reason} [{type(error).__name__}: {first}]"
        return KerasBug(text) if self.bug else Unsupported(text)

    def matches(self, backend: str, path: str, case: Case, error: Exception) -> bool:
        return (
            self.backend in (None, backend)
            and self.path in (None, path)
            and self.applies(case)
            and type(error).__name__ == self.error
            and self.message in str(error)
        )


MHA_KNOWN_CRASHES = (
    KnownCrash(
        backend="jax",
        path="fused",
        applies=lambda case: case.shape.value_dim != case.shape.key_dim,
        error="TypeError",
        message="cannot reshape",
        reason="Keras 3.15 bug on the jax backend (MultiHeadAttention accepts value_dim != "
        "key_dim and runs it on every other backend): jax.nn.dot_product_attention requires "
        "the value head dim to equal the key head dim; keras.ops.dot_product_attention "
        "catches that error and falls back to its own XLA code, which reshapes the output "
        "to the query's shape (keras/src/backend/jax/nn.py: `output_shape = query.shape` ... "
        "`jnp.reshape(encoded, output_shape)`) and raises",
        bug=True,
    ),
    KnownCrash(
        backend="jax",
        path="fused",
        applies=lambda case: case.dtype == "float16",
        error="ValueError",
        message="is not supported by dot_general on CPU",
        reason="float16 under jax.jit on CPU: jax.nn.dot_product_attention asks for the "
        "F16_F16_F32 dot algorithm, which XLA:CPU refuses when the jitted program compiles; "
        "Keras's fallback (try/except around it) only catches errors raised while tracing, so "
        "the fused path works eagerly but not jitted, which is how model.predict/fit run it "
        "(the same refusal: https://github.com/keras-team/keras-hub/pull/2354)",
    ),
    KnownCrash(
        backend="tensorflow",
        path="explicit",
        applies=lambda case: (
            len(case.shape.attention_axes) == 1 and len(case.shape.query_shape) >= 3
        ),
        error="AbortedError",
        message="Input dims must be <= 5",
        reason="Keras 3.15 on tensorflow: a single attention axis of a 5-D input gives 6-D "
        "scores, and keras.layers.Softmax over one axis calls tf.nn.softmax, whose CPU "
        "kernel accepts at most 5 dims (several attention axes take a logsumexp path and work)",
    ),
)


class KerasMHAAdapter(KerasAdapter):
    """keras.layers.MultiHeadAttention on one backend, one code path.

    The layer is built once per configuration (a build costs tens of ms, and on jax every new
    variable shape compiles its initializer, hence the zero initializers: the case's weights
    replace them anyway) and gets the case's weights per call. On jax the call runs under
    jax.jit (stateless_call with the weights as arguments), as model.predict/fit run it:
    eager jax compiles each op for each new shape, about five times slower here.
    """

    backend: ClassVar[str]
    path: ClassVar[str]
    cache_size: ClassVar[int] = 32
    known_crashes: ClassVar[tuple[KnownCrash, ...]] = MHA_KNOWN_CRASHES

    def setup(self) -> None:
        super().setup()
        # Keras attaches masks to tensors this way (Embedding(mask_zero=True), Masking).
        from keras.src.backend.common.masking import set_keras_mask

        self._set_keras_mask = set_keras_mask
        if self.backend == "jax":
            import jax

            self._jax = jax
            self._jit = jax.jit
        self._layers: OrderedDict[tuple, tuple[Any, dict]] = OrderedDict()
        self._verify_path()

    # --- hooks the GroupQueryAttention adapter overrides -------------------------------------

    def _probe_layer(self) -> Any:
        return self.keras.layers.MultiHeadAttention(num_heads=2, key_dim=2, dtype="float32")

    def _layer_key(self, case: Case, masks: KerasMasks) -> tuple:
        s = case.shape
        return (
            s.num_heads, s.key_dim, s.value_dim, s.query_dim, s.key_input_dim,
            s.value_input_dim, s.output_dim, case.use_bias, s.attention_axes,
            masks.sliding_window, len(s.query_shape), len(s.kv_shape), dropout_rate(case),
        )  # fmt: skip

    def _new_layer(self, case: Case, masks: KerasMasks) -> Any:
        kwargs: dict[str, Any] = {}
        if masks.sliding_window is not None:
            kwargs["sliding_window"] = masks.sliding_window
        # seed: without one, the torch backend's Dropout takes its unseeded fast path
        # (torch.nn.functional.dropout on torch's global generator), so resetting the
        # SeedGenerator per draw would not make a draw reproducible.
        layer = self.keras.layers.MultiHeadAttention(
            **mha_arguments(case), bias_initializer="zeros", seed=0, **kwargs
        )
        layer.build(*mha_input_shapes(case, case.shape.batch))
        return layer

    def _weight_pairs(self, layer: Any, case: Case, inputs: CaseInputs) -> list[tuple[Any, Any]]:
        """(variable, canonical value in the variable's layout) for every weight."""
        denses = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
        return einsum_weight_pairs(denses, case, inputs)

    def _mask_kwargs(self, masks: KerasMasks, query: Any, cross: bool) -> dict[str, Any]:
        """Keras call arguments for the masks; attaches the query padding to `query`."""
        ops = self.ops
        kwargs: dict[str, Any] = {}
        if masks.use_causal_mask:
            kwargs["use_causal_mask"] = True
        if masks.attention_mask is not None:
            kwargs["attention_mask"] = masks.attention_mask
        if masks.key_valid is not None:
            # Cross attention exercises key_mask (Keras reads it only when key is a tensor of
            # its own); self-attention uses value_mask.
            kwargs["key_mask" if cross else "value_mask"] = masks.key_valid
        if masks.query_valid is not None:
            # MultiHeadAttention.call overwrites its query_mask argument with the query
            # tensor's Keras mask, so the mask must travel on the tensor.
            self._set_keras_mask(query, ops.convert_to_tensor(masks.query_valid))
        return kwargs

    # --- running -----------------------------------------------------------------------------

    def _verify_path(self) -> None:
        """Run a tiny layer through this variant's call and check the path it takes, forward
        and with gradients (the backward differentiates the same call, so it must see the same
        path: a gradient is never taken on the other path)."""
        layer = self._probe_layer()
        x = np.ones((1, 3, 4), dtype=np.float32)
        layer.build(x.shape, x.shape, x.shape)
        values = [v.value for v in layer.trainable_variables]
        d_out = self.ops.convert_to_tensor(x)
        with DotProductAttentionCounter() as counter:
            for masks, grad in (
                (KerasMasks(use_causal_mask=True), None),
                (KerasMasks(key_valid=np.ones((1, 3), bool)), None),
                (KerasMasks(use_causal_mask=True), d_out),
            ):
                _, _, grads = self._call((layer, {}), values, x, x.copy(), None, masks, d_out=grad)
        if counter.calls != (3 if self.path == "fused" else 0):
            raise RuntimeError(
                f"{self.declaration.name}: expected the {self.path} path, but "
                f"ops.dot_product_attention ran {counter.calls} times in 3 calls"
            )
        if grads is None or any(g is None for g in grads["params"].values()):
            raise RuntimeError(f"{self.declaration.name}: the probe's gradients are missing")

    def _call(
        self, entry: tuple[Any, dict], values: list | None, query: Any, value: Any, key: Any,
        masks: KerasMasks, training: bool = False, seed: int = 0, d_out: Any = None,
    ) -> tuple[Any, Any, dict | None]:  # fmt: skip
        """One layer call; returns (output, scores or None, gradients or None).

        training: dropout in training mode, its generator seeded with `seed` (Keras's Dropout
        draws from a SeedGenerator whose state is [seed, counter]; resetting it per draw makes
        a draw reproducible).
        d_out: the upstream gradient, in the output's layout and dtype. With it, the same call
        also differentiates <d_out, output> (the backend's own autodiff: tf.GradientTape,
        torch autograd, jax.vjp inside the jitted function) and returns {"query", "value",
        "key" (None in self-attention), "params": {id(variable): gradient}} over the layer's
        trainable variables.
        """
        layer, jitted = entry
        scores = self.path == "explicit"
        generator = layer._dropout_layer.seed_generator if training else None
        if self.backend == "jax":
            return self._call_jax(entry, values, query, value, key, masks, training, seed, d_out)
        if generator is not None:
            generator.state.assign(
                self.ops.convert_to_tensor([seed, 0], dtype=generator.state.dtype)
            )
        ops = self.ops
        query, value = ops.convert_to_tensor(query), ops.convert_to_tensor(value)
        key = None if key is None else ops.convert_to_tensor(key)
        kwargs = self._mask_kwargs(masks, query, key is not None)
        kwargs = {k: ops.convert_to_tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in kwargs.items()}  # fmt: skip

        def forward() -> tuple[Any, Any]:
            result = layer(query, value, key, training=training,
                           return_attention_scores=scores, **kwargs)  # fmt: skip
            return result if scores else (result, None)

        if d_out is None:
            return (*forward(), None)
        variables = list(layer.trainable_variables)
        leaves = [query, value] + ([] if key is None else [key])
        if self.backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                for leaf in leaves:
                    tape.watch(leaf)
                output, attn = forward()
            found = tape.gradient(
                output, leaves + [v.value for v in variables], output_gradients=d_out
            )
        else:  # torch
            import torch

            for leaf in leaves:
                leaf.requires_grad_(True)
            with torch.enable_grad():
                output, attn = forward()
                found = torch.autograd.grad(output, leaves + [v.value for v in variables], d_out)
            output = output.detach()
            attn = None if attn is None else attn.detach()
        grads = {"query": found[0], "value": found[1], "key": None if key is None else found[2]}
        grads["params"] = {id(v): g for v, g in zip(variables, found[len(leaves) :], strict=True)}
        return output, attn, grads

    def _call_jax(
        self, entry: tuple[Any, dict], values: list, query: Any, value: Any, key: Any,
        masks: KerasMasks, training: bool, seed: int, d_out: Any,
    ) -> tuple[Any, Any, dict | None]:  # fmt: skip
        """_call on jax: stateless_call under jax.jit; which masks are present (and whether
        gradients are taken) is static, the mask arrays are jit arguments."""
        layer, jitted = entry
        scores = self.path == "explicit"
        generator = layer._dropout_layer.seed_generator if training else None
        grad = d_out is not None
        present = (masks.use_causal_mask, masks.attention_mask is not None,
                   masks.key_valid is not None, masks.query_valid is not None, key is None,
                   training, grad)  # fmt: skip
        fn = jitted.get(present)
        if fn is None:
            jax = self._jax

            def call(
                values: list, states: list, query: Any, value: Any, key: Any, arrays: dict,
                d_out: Any,
            ) -> Any:  # fmt: skip
                def forward(values: list, query: Any, value: Any, key: Any) -> Any:
                    traced = KerasMasks(use_causal_mask=masks.use_causal_mask, **arrays)
                    kwargs = self._mask_kwargs(traced, query, key is not None)
                    result, _ = layer.stateless_call(
                        values, states, query, value, key, training=training,
                        return_attention_scores=scores, **kwargs,
                    )  # fmt: skip
                    return result if scores else (result, None)

                if not grad:
                    return (*forward(values, query, value, key), None)
                # The vjp inside the jitted function: the backward compiles with the forward,
                # the same path; the output's scores ride along as auxiliary data.
                output, vjp, attn = jax.vjp(forward, values, query, value, key, has_aux=True)
                return output, attn, vjp(d_out)

            fn = jitted[present] = self._jit(call)
        arrays = {"key_valid": masks.key_valid, "query_valid": masks.query_valid,
                  "attention_mask": masks.attention_mask}  # fmt: skip
        states = [
            np.array([seed, 0], dtype=var.dtype) if generator is not None and var is generator.state
            else var.value
            for var in layer.non_trainable_variables
        ]  # fmt: skip
        output, attn, found = fn(values, states, query, value, key, arrays, d_out)
        if found is None:
            return output, attn, None
        g_values, g_query, g_value, g_key = found
        grads = {"query": g_query, "value": g_value, "key": g_key}
        grads["params"] = {
            id(v): g for v, g in zip(layer.trainable_variables, g_values, strict=True)
        }
        return output, attn, grads

    def _entry(self, case: Case, masks: KerasMasks, device: str) -> tuple[Any, dict]:
        key = (device, case.dtype, *self._layer_key(case, masks))
        entry = self._layers.get(key)
        if entry is None:
            entry = self._layers[key] = (self._new_layer(case, masks), {})
            if len(self._layers) > self.cache_size:
                self._layers.popitem(last=False)
        self._layers.move_to_end(key)
        return entry

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        self.release_compiled()
        dropout = getattr(case, "dropout", None)
        masks = self._masks(case)
        ops = self.ops
        with self.keras.device(device_scope_name(device, self.backend)):
            entry = self._entry(case, masks, device)
            layer = entry[0]
            pairs = self._weight_pairs(layer, case, inputs)
            # The weights this layer last got, with the CaseInputs they came from: a dropout
            # draw or another run of the same case sets exactly the same values again, so
            # setting them is skipped (the variables, or jax's argument arrays, already hold
            # them; nothing writes to them in between).
            last = entry[1].get(WEIGHTS_SET)
            if last is not None and last[0] is inputs:
                values = last[1]
            elif self.backend == "jax":
                by_id = {id(var): value for var, value in pairs}
                values = [ops.convert_to_tensor(by_id[id(var)], dtype=var.dtype)
                          for var in layer.trainable_variables]  # fmt: skip
            else:
                for var, value in pairs:
                    var.assign(ops.convert_to_tensor(value, dtype=var.dtype))
                values = None
            entry[1][WEIGHTS_SET] = (inputs, values)
            # Separate tensors for query and key/value even in self-attention: a Keras mask on
            # the query tensor must not also mask the keys.
            query = ops.convert_to_tensor(inputs.native("query"), dtype=case.dtype)
            value = ops.convert_to_tensor(inputs.native("value"), dtype=case.dtype)
            key = None
            if not case.self_attention:
                key = ops.convert_to_tensor(inputs.native("key"), dtype=case.dtype)
            d_out = None
            if case.gradients:  # [B, T, Do]: the output's layout already
                d_out = ops.convert_to_tensor(inputs.native("grad_output"), dtype=case.dtype)
            try:
                training = dropout is not None and dropout.training
                output, scores, grads = self._call(
                    entry, values, query, value, key, masks, training,
                    dropout.seed if training else 0, d_out,
                )  # fmt: skip
            except Exception as error:
                for crash in self.known_crashes:
                    if crash.matches(self.backend, self.path, case, error):
                        raise crash.explain(error) from error
                raise
            result = {"output": to_numpy_float(output, ops)}
            if scores is not None:
                result["weights"] = scores_to_canonical(to_numpy_float(scores, ops), case)
            if grads is not None:
                result.update(self._canonical_gradients(grads, pairs, case))
        return result

    def _canonical_gradients(
        self, grads: dict, pairs: list[tuple[Any, Any]], case: Case
    ) -> dict[str, np.ndarray]:
        """The backend's gradients in the canonical layout (conformance.backward names)."""
        ops = self.ops
        if case.self_attention:
            # query and value are separate tensors (a query mask must not mask the keys); the
            # gradient w.r.t. the one input is the sum of both, added in the case dtype.
            out = {"grad_query": to_numpy_float(grads["query"] + grads["value"], ops)}
        else:
            out = {
                "grad_query": to_numpy_float(grads["query"], ops),
                "grad_key": to_numpy_float(grads["key"], ops),
                "grad_value": to_numpy_float(grads["value"], ops),
            }
        out.update(
            parameter_gradients([to_numpy_float(grads["params"][id(var)], ops) for var, _ in pairs])
        )
        return out

    def _masks(self, case: Case) -> KerasMasks:
        return keras_masks(case)


def _declaration(backend: str, path: str) -> Declaration:
    features = MHA_FEATURES | DTYPE_TAGS | (EXPLICIT_ONLY if path == "explicit" else frozenset())
    reasons = dict(COMMON_UNSUPPORTED)
    if path == "fused":
        reasons.update(fused_refusals(backend))
    how = (
        "ops.dot_product_attention (no scores, no dropout, 3-D inputs)"
        if path == "fused"
        else "einsum + keras.layers.Softmax(mask) (return_attention_scores=True)"
    )
    return layer_declaration(
        name=f"keras.{backend}.{path}",
        summary=f"keras.layers.MultiHeadAttention on the {backend} backend, {path} path: {how}",
        backend=backend,
        path=path,
        features=features,
        unsupported_reasons=reasons,
        notes=(
            "Masks: causal -> use_causal_mask, key padding -> value_mask/key_mask, query "
            "padding -> Keras mask on the query tensor, window -> sliding_window, the rest -> "
            "attention_mask. The query_mask= call argument is silently ignored by Keras 3.15 "
            "MultiHeadAttention (call() overwrites it with the query tensor's Keras mask)."
        ),
    )


def _make(backend: str, path: str) -> type[KerasMHAAdapter]:
    name = f"Keras{backend.capitalize()}{path.capitalize()}"
    return type(
        name,
        (KerasMHAAdapter,),
        {"backend": backend, "path": path, "declaration": _declaration(backend, path),
         "__module__": __name__, "__qualname__": name},
    )  # fmt: skip


KerasTensorflowFused = _make("tensorflow", "fused")
KerasTensorflowExplicit = _make("tensorflow", "explicit")
KerasJaxFused = _make("jax", "fused")
KerasJaxExplicit = _make("jax", "explicit")
KerasTorchFused = _make("torch", "fused")
KerasTorchExplicit = _make("torch", "explicit")

ADAPTERS = [
    KerasTensorflowFused,
    KerasTensorflowExplicit,
    KerasJaxFused,
    KerasJaxExplicit,
    KerasTorchFused,
    KerasTorchExplicit,
]
