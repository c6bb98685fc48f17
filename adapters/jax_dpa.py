"""`jax.dpa.*`: jax.nn.dot_product_attention in kernel mode (B T N H layout).

What each variant calls (see docs/adapters/jax.md for the evidence behind every divergence):

- `jax.dpa.xla`: implementation="xla". The case's mask travels through the function's own
  arguments wherever one exists: `is_causal` (top-left aligned), `local_window_size`, `bias`
  (additive 0/-inf masks and finite biases), `scale` (only when the case sets one, so the
  default 1/sqrt(H) is exercised too); what no flag can express (random/per-head masks,
  padding, named masked rows, bottom-right causal alignment when T != S) goes in the boolean
  `mask` (True = attend).
- `jax.dpa.xla.seq-lengths`: the same, but key/query padding travel as
  `key_value_seq_lengths` / `query_seq_lengths` (int32 [B]) instead of in `mask`. That is a
  different path: padded query rows have their output multiplied by zero
  (`_get_padding_mask_encoded`), and on cuDNN it selects the PADDING mask types.
- `jax.dpa.cudnn`: implementation="cudnn" (cuDNN flash attention), float16/bfloat16 only; lists
  only CUDA devices, so it reports itself unavailable on a CPU-only machine. Padding travels as
  sequence lengths (cuDNN's own padding path), the rest as for `jax.dpa.xla`; cuDNN adds the
  boolean mask to the logits as a large negative bias. Shapes cuDNN refuses are `unsupported`
  with cuDNN's reason.

Gradient cases: the same jitted call runs jax.vjp of the attention w.r.t. q, k and v with the
case's grad_output (B T N H) as the cotangent; K/V gradients come back with G heads (JAX's
grouped-query path sums each group). No dropout argument: neither dropout tag.

All JAX/Flax adapters share the worker "jax", which runs with x64 enabled (set before any array
exists) so float64 cases really hand float64 arrays to JAX.

This module also holds the small helpers the Flax adapters share (device lookup, dtype casts).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import (
    FILL_AS_WRITTEN,
    Adapter,
    Declaration,
    Divergence,
    Unsupported,
)
from conformance.adapter_api.feature_sets import ADDITIVE_MASKS, EVERY_BOOLEAN_MASK, GROUPED_HEADS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.layouts import (
    bhtk_to_bthk,
    bthk_to_bhtk,
)
from conformance.cases.masks import build_mask, causal_offset, combined_additive, fill_value
from conformance.cases.written import BOOLEAN_SOURCES, AsWritten, Fill

from .jax_runtime import (
    JAX_ENV,
    cpu_f16_refusal,
    jax_device,
    jax_device_names,
    jax_versions,
    release_programs,
    setup_jax,
    strip_mask,
    to_jax,
    to_numpy,
)

JAX_SRC = "https://github.com/jax-ml/jax/blob/jax-v0.10.2/jax/_src/nn/functions.py"

# --- jax.nn.dot_product_attention --------------------------------------------------------------

_KERNEL_FEATURES = (
    GROUPED_HEADS
    | {"kernel", "kv-len", "scale", "gradients"}
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    | {
        "segments",  # issue 14: packed rows travel in the boolean mask
        # issue 14: per-sequence cache lengths; seq-lengths variants pass key_value_seq_lengths
        "cache-lengths",
    }
)
# issue 14: the XLA paths take the user's float mask as `bias`, finite fill included; left
# padding travels in the boolean mask (sequence lengths count valid tokens from the start)
_XLA_FEATURES = _KERNEL_FEATURES | {"finite-fill", "left-padding"}
_SEQ_LENGTHS_UNSUPPORTED = {
    "left-padding": "query_seq_lengths / key_value_seq_lengths count valid tokens from the "
    "start of the row: right padding only (jax.dpa.xla takes left padding as a mask)",
    "finite-fill": "this variant maps padding to sequence lengths; jax.dpa.xla takes the "
    "user's float mask as `bias`",
}

_UNSUPPORTED = {
    "value-dim": "jax.nn.dot_product_attention requires value to have the key's shape "
    "[B, S, K, H] (it checks value against key), so the value head dim must equal the key's",
    "weights": "jax.nn.dot_product_attention returns the output only, never the weights",
    "weights-mean": "jax.nn.dot_product_attention returns the output only, never the weights",
    "decode": "jax.nn.dot_product_attention has no key/value cache",
    "layer": "kernel only: no projections",
    "dropout": "jax.nn.dot_product_attention has no dropout argument",
    "dropout-training": "jax.nn.dot_product_attention has no dropout argument",
}

SOFTMAX_F32 = (
    "jax.nn.dot_product_attention casts the logits to float32 for the softmax whatever the "
    "input dtype ('Softmax and it is always carried out in fp32', "
    "_dot_product_attention_core: padded_logits.astype(np.float32)); float64 inputs get "
    "float32-accurate weights"
)
SOFTMAX_F32_LINK = f"{JAX_SRC}#L968-L971"

MASKED_UNIFORM = (
    "masked logits are replaced by a large finite negative (-0.7 * float32 max, "
    "_get_large_negative / _apply_masks), not -inf: a row whose every key is masked by the "
    "boolean mask or a flag has equal logits and gets uniform weights over all S keys (the "
    "mean of V) instead of NaN"
)
MASKED_UNIFORM_LINK = f"{JAX_SRC}#L859-L866"

MASKED_MIXED = (
    "a fully masked row's result depends on how its keys were masked: keys masked by the "
    "boolean mask or a flag get a large finite negative logit (uniform weights), keys masked "
    "by -inf in `bias` stay -inf (a row of only -inf gives NaN); a case mixing an additive "
    "0/-inf mask with fully masked rows gets a per-row mixture no single policy describes"
)
# The same, as the as-written policy (XLA_AS_WRITTEN below) states and checks it.
MASKED_AS_WRITTEN = (
    "a fully masked row's result depends on how its keys were masked: keys masked by the "
    "boolean mask, a flag or a sequence length get -0.7 * float32 max (over any -inf of `bias` "
    "there), keys masked only by -inf in `bias` stay -inf, and the softmax runs in float32: a "
    "row of only -inf gives NaN, a row the boolean mask or a flag empties gives uniform "
    "weights, a row masked partly each way is uniform over the keys the boolean side hides"
)

QUERY_ZEROS = (
    "query_seq_lengths zeroes the output of padded query rows after the softmax "
    "(_get_padding_mask_encoded: encoded *= mask), so those rows are 0 instead of NaN"
)
QUERY_ZEROS_LINK = f"{JAX_SRC}#L973-L976"

# _apply_masks: jnp.where(combined_mask, logits, _get_large_negative(...)) after `bias` was
# added, so a key the boolean mask, a flag or a sequence length hides carries -0.7 * float32
# max (over any -inf of the bias there) and the softmax runs in float32; query_seq_lengths then
# zeroes the padded query rows' output (_get_padding_mask_encoded).
XLA_AS_WRITTEN = AsWritten(
    (
        Fill(BOOLEAN_SOURCES, -0.7 * float(np.finfo(np.float32).max)),
        Fill({"additive-mask"}, "-inf"),
    ),
    precision="float32",
)
SEQ_LENGTHS_AS_WRITTEN = dataclasses.replace(XLA_AS_WRITTEN, zeroed=frozenset({"query-padding"}))
QUERY_ZEROS_AND_UNIFORM = (
    "a fully masked row's result depends on how it was emptied: "
    + QUERY_ZEROS
    + "; a valid query row whose keys are all masked has every logit replaced by the same "
    "large finite negative (-0.7 * float32 max, _apply_masks) and gets uniform weights"
)


TF32 = (
    "on CUDA, JAX's default matmul precision lets XLA run float32 dot products on TF32 tensor "
    "cores (inputs rounded to a 10-bit mantissa, float16's), so float32 results carry "
    "float16-sized errors (measured ~1e-3 on an H100); held to float16 tolerance. Opt out with "
    "jax.default_matmul_precision('float32')"
)
TF32_LINK = "https://docs.jax.dev/en/latest/201/precision.html"


def softmax_float32(reason: str = SOFTMAX_F32) -> Divergence:
    return Divergence(
        id="softmax-float32",
        reason=reason,
        link=SOFTMAX_F32_LINK,
        dtypes=frozenset({"float64"}),
        compute_dtype="float32",
    )


def tf32_on_cuda() -> Divergence:
    return Divergence(
        id="tf32-matmul",
        reason=TF32,
        link=TF32_LINK,
        dtypes=frozenset({"float32"}),
        devices=("cuda",),
        compute_dtype="float16",
    )


def compose(
    masked: list[Divergence], precision: list[Divergence], first: tuple[Divergence, ...] = ()
) -> tuple[Divergence, ...]:
    """The ordered declaration list: the harness verifies the *first* divergence that applies,
    so a case hit by a masked-row convention and a precision one needs an entry saying both.

    Order: `first` (e.g. unverifiable ones), then every masked-row x precision combination,
    then each masked-row entry alone, then each precision entry alone.
    """
    combined = [
        Divergence(
            id=f"{m.id}+{p.id}",
            reason=f"{m.reason}; and {p.reason}",
            link=m.link,
            when=m.when | p.when,
            dtypes=p.dtypes,
            devices=p.devices,
            masked_rows=m.masked_rows,
            compute_dtype=p.compute_dtype,
        )
        for m in masked
        for p in precision
    ]
    return (*first, *combined, *masked, *precision)


def _dpa_divergences(
    query_zeros: bool, precision: list[Divergence], fill: bool = False
) -> tuple[Divergence, ...]:
    masked = []
    if query_zeros:
        masked.append(
            Divergence(
                id="query-padding-zeros",
                reason=QUERY_ZEROS,
                link=QUERY_ZEROS_LINK,
                when=frozenset({"fully-masked-rows", "query-padding"}),
                masked_rows="zeros",
            )
        )
    masked.append(
        Divergence(
            id="masked-rows-uniform",
            reason=MASKED_UNIFORM,
            link=MASKED_UNIFORM_LINK,
            when=frozenset({"fully-masked-rows"}),
            masked_rows="uniform",
        )
    )
    if query_zeros:
        # A case with both row kinds: the padded query rows are 0, the rows the mask empties
        # uniform. Tried after the single policies (the first that explains is reported).
        masked.append(
            Divergence(
                id="query-padding-zeros-and-masked-rows-uniform",
                reason=QUERY_ZEROS_AND_UNIFORM,
                link=MASKED_UNIFORM_LINK,
                when=frozenset({"fully-masked-rows", "query-padding"}),
                masked_rows=SEQ_LENGTHS_AS_WRITTEN,
            )
        )
    if fill:  # issue 14: rows of finite fills are computed as written
        masked.append(FILL_AS_WRITTEN)
        masked.append(
            Divergence(
                id="finite-fill-float64-overflows",
                reason="the float32 softmax (see softmax-float32) rounds a float64 row of "
                "logits + fill to float32: a fill of finfo(float64).min overflows to -inf, so "
                "a row whose every key carries it is NaN, not the uniform average the fill "
                "gives in float64, and a -10000 fill leaves the logits float32's 2**-10 steps",
                link=SOFTMAX_F32_LINK,
                when=frozenset({"finite-fill", "fully-masked-rows"}),
                dtypes=frozenset({"float64"}),
                masked_rows=AsWritten((Fill("*", "case"),), precision="float32"),
            )
        )
    # Formerly declared unverifiable: a case mixing the two ways of masking a key is now
    # computed as written and checked (conformance/cases/written.py). First, as before: it is
    # the policy of any case with an additive mask (the fuzzer's bool-additive property reads
    # the first applicable divergence's policy for each twin).
    mixed = Divergence(
        id="masked-rows-mixed-additive",
        reason=MASKED_AS_WRITTEN,
        link=MASKED_UNIFORM_LINK,
        when=frozenset({"fully-masked-rows", "additive-mask"}),
        masked_rows=SEQ_LENGTHS_AS_WRITTEN if query_zeros else XLA_AS_WRITTEN,
    )
    return compose(masked, precision, first=(mixed,))


CUDNN_SRC = (
    "https://github.com/jax-ml/jax/blob/jax-v0.10.2/jax/_src/cudnn/fused_attention_stablehlo.py"
)


def _cudnn_divergences() -> tuple[Divergence, ...]:
    """cuDNN masks in its own ways; observed on an H100 (jax 0.11.2, cuDNN 9), see the docs."""
    bias_mask = (
        "the cuDNN path turns the boolean mask into an additive bias "
        "(combine_bias_and_mask with get_large_negative_number: -2**15 for float16, -2**41 for "
        "bfloat16, a workaround for a cuDNN subtraction bug) that is added to the logits"
    )
    return (
        Divergence(
            id="masked-rows-mixed-additive",
            reason=MASKED_MIXED,
            link=MASKED_UNIFORM_LINK,
            when=frozenset({"fully-masked-rows", "additive-mask"}),
            unverifiable=True,
        ),
        Divergence(
            id="query-padding-zeros",
            reason="query_seq_lengths select cuDNN's PADDING mask: padded query rows are 0",
            link=f"{JAX_SRC}#L1210-L1227",
            when=frozenset({"fully-masked-rows", "query-padding"}),
            masked_rows="zeros",
        ),
        Divergence(
            id="key-padding-zeros",
            reason="key_value_seq_lengths select cuDNN's PADDING mask: a batch element with no "
            "valid key yields 0 (the kernel's row sum is 0), not NaN",
            link=f"{JAX_SRC}#L1210-L1227",
            when=frozenset({"fully-masked-rows", "key-padding"}),
            masked_rows="zeros",
        ),
        Divergence(
            id="masked-rows-uniform",
            reason=bias_mask + "; at -2**41 the row's own logits vanish in float32, so a row "
            "whose every key is masked gets uniform weights over all S keys",
            link=f"{CUDNN_SRC}#L94-L101",
            when=frozenset({"fully-masked-rows"}),
            dtypes=frozenset({"bfloat16"}),
            masked_rows="uniform",
        ),
        Divergence(
            id="masked-rows-unmasked",
            reason=bias_mask + "; at -2**15 a fully masked row keeps its logits up to a "
            "common shift, so it gets the softmax of its unmasked logits (policy 'unmasked'; "
            "expected from the source, not yet confirmed on a GPU run)",
            link=f"{CUDNN_SRC}#L94-L101",
            when=frozenset({"fully-masked-rows"}),
            dtypes=frozenset({"float16"}),
            masked_rows="unmasked",
        ),
    )


@functools.cache
def _jitted_dpa() -> Any:
    """One jitted wrapper for every variant; flags are static, so each distinct call signature
    compiles once. With `d_out` (gradient cases) the same call also runs jax.vjp of the
    attention w.r.t. q, k and v with `d_out` as the cotangent: the backward belongs to the
    same compiled program and the same path as the forward.
    """
    import jax

    def call(q, k, v, bias, mask, q_len, kv_len, d_out, *, scale, is_causal, window,
             implementation):  # fmt: skip
        def attend(q: Any, k: Any, v: Any) -> Any:
            return jax.nn.dot_product_attention(
                q,
                k,
                v,
                bias,
                mask,
                scale=scale,
                is_causal=is_causal,
                query_seq_lengths=q_len,
                key_value_seq_lengths=kv_len,
                local_window_size=window,
                implementation=implementation,
            )

        if d_out is None:
            return attend(q, k, v), None
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(d_out)

    return jax.jit(call, static_argnames=("scale", "is_causal", "window", "implementation"))


class _JaxDpa(Adapter):
    """Shared body; subclasses choose the implementation and how padding travels."""

    implementation = "xla"
    seq_lengths = False  # padding as query_seq_lengths / key_value_seq_lengths
    gpu_only = False

    def setup(self) -> None:
        setup_jax()

    def devices(self) -> list[str]:
        return jax_device_names(gpu_only=self.gpu_only)

    def versions(self) -> dict[str, str]:
        return jax_versions()

    def arguments(self, case: Case) -> dict[str, Any]:
        """Split the neutral mask into jax's flags and the leftover boolean mask / bias."""
        m = case.mask
        aligned = causal_offset(case) == 0  # the flags are top-left aligned
        strip: dict[str, Any] = {}
        args: dict[str, Any] = {"is_causal": False, "window": None, "q_len": None, "kv_len": None}
        args["scale"] = None if case.scale is None else float(case.scale)
        if m.fill is not None:  # issue 14: the user's float mask as written, as `bias`
            attend, bias = build_mask(case)
            args["mask"] = None
            args["bias"] = combined_additive(attend, bias, np.float64, fill=fill_value(case))
            return args
        if m.causal and aligned:
            args["is_causal"] = True
            strip["causal"] = None
        if m.window is not None and aligned:
            args["window"] = tuple(int(w) for w in m.window)
            strip["window"] = None
        lengths = case.cache.lengths if case.cache is not None else None
        if self.seq_lengths and lengths is not None:  # issue 14: the cache lengths, natively
            args["kv_len"] = np.asarray(lengths, dtype=np.int32)
            if m.is_empty():  # a step with no other mask: the lengths are the whole mask
                args["mask"], args["bias"] = None, None
                return args
            # A causal band ends at each sequence's own length, which no flag can say: it
            # stays in the boolean mask (the lengths there too), key_value_seq_lengths as well.
        if self.seq_lengths and m.padding_side == "right":  # lengths count from the start
            if m.key_padding is not None:
                args["kv_len"] = np.asarray(m.key_padding, dtype=np.int32)
                strip["key_padding"] = None
            if m.query_padding is not None:
                args["q_len"] = np.asarray(m.query_padding, dtype=np.int32)
                strip["query_padding"] = None
        attend, bias = build_mask(strip_mask(case, **strip) if strip else case)
        args["mask"], args["bias"] = attend, bias
        args["scale"] = None if case.scale is None else float(case.scale)
        return args

    def check(self, case: Case, args: dict[str, Any]) -> None:
        """Cases this implementation refuses up front (cuDNN's documented limits)."""

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        release_programs()
        dev = jax_device(device)
        args = self.arguments(case)
        self.check(case, args)
        dt = case.dtype
        q = to_jax(bhtk_to_bthk(inputs.native("q")), dt, dev)
        k = to_jax(bhtk_to_bthk(inputs.native("k")), dt, dev)
        v = to_jax(bhtk_to_bthk(inputs.native("v")), dt, dev)
        bias = None if args["bias"] is None else to_jax(args["bias"], dt, dev)
        mask = None if args["mask"] is None else _device_put(args["mask"], dev)
        q_len = None if args["q_len"] is None else _device_put(args["q_len"], dev)
        kv_len = None if args["kv_len"] is None else _device_put(args["kv_len"], dev)
        # dY in the output's layout (B T N H), in the case dtype like every other input.
        d_out = (
            to_jax(bhtk_to_bthk(inputs.native("grad_output")), dt, dev) if case.gradients else None
        )
        try:
            out, grads = _jitted_dpa()(
                q,
                k,
                v,
                bias,
                mask,
                q_len,
                kv_len,
                d_out,
                scale=args["scale"],
                is_causal=args["is_causal"],
                window=args["window"],
                implementation=self.implementation,
            )
        except NotImplementedError as error:  # cuDNN: shape/dtype outside what it supports
            raise Unsupported(str(error)) from error
        except ValueError as error:
            cpu_f16_refusal(error)
            raise
        result = {"output": bthk_to_bhtk(to_numpy(out))}
        if grads is not None:
            # K/V gradients come back with G heads: JAX's grouped-query path sums each group.
            names = ("grad_q", "grad_k", "grad_v")
            result.update((n, bthk_to_bhtk(to_numpy(g))) for n, g in zip(names, grads, strict=True))
        return result


def _device_put(x: np.ndarray, dev: Any) -> Any:
    import jax

    return jax.device_put(x, dev)


class JaxDpaXla(_JaxDpa):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="jax.dpa.xla",
        summary="jax.nn.dot_product_attention(implementation='xla'); flags is_causal, "
        "local_window_size, bias, scale; other masks as the boolean mask",
        framework="jax",
        features=_XLA_FEATURES,
        requires=("jax",),
        worker="jax",
        env=JAX_ENV,
        divergences=_dpa_divergences(False, [softmax_float32(), tf32_on_cuda()], fill=True),
        unsupported_reasons=_UNSUPPORTED,
        notes="is_causal and local_window_size are top-left aligned (_get_causal_mask is "
        "tril(ones(T, S))); a bottom-right causal mask or window with T != S goes in `mask`.",
    )
    implementation = "xla"


class JaxDpaXlaSeqLengths(_JaxDpa):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="jax.dpa.xla.seq-lengths",
        summary="jax.nn.dot_product_attention(implementation='xla') with key/query padding as "
        "key_value_seq_lengths / query_seq_lengths",
        framework="jax",
        features=_KERNEL_FEATURES,
        requires=("jax",),
        worker="jax",
        env=JAX_ENV,
        divergences=_dpa_divergences(True, [softmax_float32(), tf32_on_cuda()]),
        unsupported_reasons={**_UNSUPPORTED, **_SEQ_LENGTHS_UNSUPPORTED},
        notes="Identical to jax.dpa.xla on cases without key or query padding.",
    )
    implementation = "xla"
    seq_lengths = True


class JaxDpaCudnn(_JaxDpa):
    declaration = Declaration(
        compiles=True,  # one XLA program per signature
        name="jax.dpa.cudnn",
        summary="jax.nn.dot_product_attention(implementation='cudnn') on CUDA GPUs; padding as "
        "sequence lengths",
        framework="jax",
        features=_KERNEL_FEATURES,
        dtypes=frozenset({"float16", "bfloat16"}),
        requires=("jax",),
        worker="jax",
        env=JAX_ENV,
        divergences=_cudnn_divergences(),
        unsupported_reasons={
            **_UNSUPPORTED,
            **_SEQ_LENGTHS_UNSUPPORTED,
            "float32": "cuDNN flash attention takes float16/bfloat16 (and fp8) only",
            "float64": "cuDNN flash attention takes float16/bfloat16 (and fp8) only",
        },
        notes="Lists only CUDA devices: unavailable on a CPU-only machine. Known JAX bug, "
        "reported as fail: local_window_size=(L, 0) without is_causal attends to the whole "
        "future on cuDNN (JAX passes only the left bound; "
        "https://github.com/jax-ml/jax/pull/39576).",
    )
    implementation = "cudnn"
    seq_lengths = True
    gpu_only = True

    def check(self, case: Case, args: dict[str, Any]) -> None:
        if case.shape.key_dim % 8 or case.shape.key_dim > 256:
            raise Unsupported("cuDNN needs a head dim that is a multiple of 8 and <= 256")
        window = args["window"]
        if window is not None and window[1] != 0 and not args["is_causal"]:
            raise Unsupported("cuDNN supports no right window without the causal flag")


class JaxDpaDefault(_JaxDpa):
    """implementation=None: what a user who names no implementation gets.

    JAX picks cuDNN when it can (CUDA GPU, float16/bfloat16, supported shapes) and XLA
    otherwise; this adapter lists CPU only, where the choice is XLA, so it carries the XLA
    variant's declarations. Kept separate from jax.dpa.xla because the selection logic itself
    is code under test (a change in JAX's default would show up here first).
    """

    declaration = Declaration(
        name="jax.dpa.default",
        summary="jax.nn.dot_product_attention(implementation=None): JAX's own choice (XLA on "
        "CPU); same flags and masks as jax.dpa.xla",
        framework="jax",
        features=_XLA_FEATURES,
        requires=("jax",),
        worker="jax",
        env=JAX_ENV,
        divergences=_dpa_divergences(False, [softmax_float32(), tf32_on_cuda()], fill=True),
        unsupported_reasons=_UNSUPPORTED,
        notes="CPU only: on a GPU implementation=None may select cuDNN, whose conventions "
        "differ (see jax.dpa.cudnn); that selection is not exercised here.",
    )
    implementation = None

    def devices(self) -> list[str]:
        return ["cpu"]


ADAPTERS = [JaxDpaXla, JaxDpaXlaSeqLengths, JaxDpaCudnn, JaxDpaDefault]
