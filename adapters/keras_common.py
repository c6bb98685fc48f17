"""What the Keras adapters (`keras.<backend>.*`, `keras.gqa.*`, `tf_keras.mha`,
`keras.ops.dpa.*`) share.

MultiHeadAttention (Keras 3 and Keras 2) and GroupQueryAttention take the same masks, the same
EinsumDense weight layout and the same refusals; the fused layer path and
keras.ops.dot_product_attention reach the same backend code, so the same divergences. This
module holds those pieces once: feature tags and refusals, the declared divergences, the
neutral mask as Keras arguments, the weight and gradient layouts, and a Keras 3 adapter's
setup, devices and versions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from conformance.adapter_api.adapter import (
    Adapter,
    Declaration,
    Divergence,
    DropoutBehavior,
    Unsupported,
)
from conformance.adapter_api.feature_sets import (
    BOOLEAN_MASKS,
    DROPOUT,
    LAYER_INPUTS,
    PADDING,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.layouts import from_einsum_kernel, to_einsum_kernel
from conformance.cases.masks import build_mask

# What MultiHeadAttention and GroupQueryAttention both express (both paths).
LAYER_FEATURES = (
    LAYER_INPUTS
    | PADDING
    | BOOLEAN_MASKS
    | {
        "kv-len",
        "causal",
        "causal-top-left",
        "window",
        "fully-masked-rows",
        "no-bias",
        "gradients",
    }
    # issue 14: padding masks on either side (valid_tokens) and packed segments as entries
    # of attention_mask [B, T, S]
    | SEGMENTS_AND_LEFT_PADDING
)
# What keras.layers.MultiHeadAttention can express (both paths).
MHA_FEATURES = LAYER_FEATURES | {"value-dim", "output-dim"}
# What only the explicit path (einsum + keras.layers.Softmax) takes: the fused path never
# returns scores, never applies dropout and attends over one axis.
EXPLICIT_ONLY = frozenset({"weights", "multi-axis"}) | DROPOUT
# keras.layers.Dropout on the softmax output [B, H, T, S], one independent draw per element;
# `_compute_attention` returns the scores from before the dropout.
KERAS_DROPOUT = DropoutBehavior(target="weights", shared=(), returned_weights="undropped")

COMMON_UNSUPPORTED = {
    "kernel": "layer only: the scaled dot-product core alone is keras.ops.dot_product_attention, "
    "not covered by this adapter",
    "scale": "MultiHeadAttention always scales by 1/sqrt(key_dim); it has no scale argument",
    "additive-mask": "Keras masks are boolean (1 = attend); there is no additive float mask",
    "attn-bias": "Keras masks are boolean; there is no additive bias argument",
    "causal-bottom-right": "use_causal_mask is aligned at the top-left when T != S",
    "grouped-query": "MultiHeadAttention has one key/value head per query head (see keras.gqa)",
    "multi-query": "MultiHeadAttention has one key/value head per query head (see keras.gqa)",
    "bias-kv": "no add_bias_kv in Keras (a torch nn.MultiheadAttention feature)",
    "zero-attn": "no add_zero_attn in Keras (a torch nn.MultiheadAttention feature)",
    "decode": "MultiHeadAttention has no key/value cache",
    "weights-mean": "Keras returns per-head scores only, never a head average",
}
FUSED_UNSUPPORTED = {
    "weights": "asking for scores switches Keras to the explicit path "
    "(see keras.<backend>.explicit)",
    "multi-axis": "several attention axes give 5-D+ projections, which Keras never fuses: such a "
    "call runs the explicit path (see keras.<backend>.explicit)",
    "dropout": "a dropout rate switches Keras to the explicit path, even in inference mode "
    "(see keras.<backend>.explicit)",
    "dropout-training": "a dropout rate switches Keras to the explicit path "
    "(see keras.<backend>.explicit)",
}

# --- links for declared divergences --------------------------------------------------------

KERAS_SOFTMAX_ZEROS = "https://github.com/keras-team/keras/pull/21149"
KERAS_TORCH_FLOAT64 = "https://github.com/keras-team/keras/issues/23704"
JAX_X64 = "https://github.com/jax-ml/jax/issues/1333"
KERAS_SRC = "https://github.com/keras-team/keras/blob/master/keras/src/backend/{}/nn.py"


def keras_divergences(backend: str, path: str) -> tuple[Divergence, ...]:
    """Divergences of keras.<backend>.<path>, most specific first (the first match applies)."""
    # Fully masked rows, per path. Explicit: keras.layers.Softmax sets masked logits to a large
    # finite negative, then multiplies the result by the mask, so an all-masked row is zeros.
    # Fused: the backend SDPA replaces (tf, jax: where) or offsets (torch: additive) masked
    # logits by -0.7 * float max; a replaced row is all-equal logits -> uniform weights.
    if path == "explicit":
        rows = {
            None: (
                "zeros",
                "keras.layers.Softmax zeroes masked positions after the softmax (it multiplies "
                "by the mask), so a query row with every key masked gets all-zero weights and "
                "its heads output zeros (the output is the output-projection bias)",
                KERAS_SOFTMAX_ZEROS,
            )
        }
    elif backend in ("tensorflow", "jax"):
        sdpa = "tf einsum + where" if backend == "tensorflow" else "jax.nn.dot_product_attention"
        rows = {
            None: (
                "uniform",
                f"the fused path ({sdpa}) "
                "replaces masked logits by the finite -0.7 * float max, so a row with every key "
                "masked has all-equal logits: uniform weights, the plain mean of the values "
                "(Keras's own explicit path returns zeros for the same row)",
                KERAS_SRC.format(backend),
            )
        }
    else:
        uniform = (
            "uniform",
            "the fused path turns the boolean mask into an additive one with -0.7 * float max "
            "and calls torch SDPA; the logits vanish next to that offset, so a row with every "
            "key masked is uniform (Keras's own explicit path returns zeros)",
            KERAS_SRC.format("torch"),
        )
        rows = {
            # float16: the offset is -0.7 * 65504 = -45850, and torch's CPU SDPA computes half
            # in float32, where the logits survive next to -45850: the row's own softmax.
            "float16": (
                "unmasked",
                "for float16 the fused path's additive mask is -0.7 * 65504 = -45850; torch's "
                "SDPA accumulates half precision in float32, where the logits survive next to "
                "that offset, so a row with every key masked comes out as its unmasked softmax",
                KERAS_SRC.format("torch"),
            ),
            None: uniform,
        }

    # float64: which backends compute the attention in float32 for a float64 layer.
    low = None
    if backend == "jax":
        low = (
            "JAX truncates float64 to float32 unless jax_enable_x64 is set (Keras does not set "
            "it): a dtype='float64' layer keeps float64 variable metadata but computes and "
            "returns float32",
            JAX_X64,
        )
    elif backend == "torch" and path == "fused":
        low = (
            "keras.backend.result_type maps float64 to float32 on every backend but "
            "TensorFlow, and the torch dot_product_attention casts q, k, v to that type: the "
            "attention core of a float64 layer runs in float32 (the projections stay float64)",
            KERAS_TORCH_FLOAT64,
        )

    out: list[Divergence] = []
    masked = frozenset({"fully-masked-rows"})
    if low is not None:
        policy, why, link = rows.get("float64", rows[None])
        out.append(
            Divergence(
                id="float64-as-float32-fully-masked",
                reason=f"{low[0]}; and {why}",
                link=low[1],
                when=masked,
                dtypes=frozenset({"float64"}),
                masked_rows=policy,
                compute_dtype="float32",
            )
        )
    for dtype, (policy, why, link) in rows.items():
        if dtype is None:
            continue
        out.append(
            Divergence(
                id=f"fully-masked-rows-{policy}-{dtype}",
                reason=why,
                link=link,
                when=masked,
                dtypes=frozenset({dtype}),
                masked_rows=policy,
            )
        )
    policy, why, link = rows[None]
    out.append(
        Divergence(
            id=f"fully-masked-rows-{policy}", reason=why, link=link, when=masked, masked_rows=policy
        )
    )
    if low is not None:
        out.append(
            Divergence(
                id="float64-as-float32",
                reason=low[0],
                link=low[1],
                dtypes=frozenset({"float64"}),
                compute_dtype="float32",
            )
        )
    return tuple(out)


# The order of _weight_pairs (kernels, then biases when the case has them).
PARAMETER_NAMES = ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")


# --- masks: neutral -> Keras arguments -----------------------------------------------------


@dataclass
class KerasMasks:
    """The Keras call/constructor arguments that together express a case's mask."""

    use_causal_mask: bool = False
    sliding_window: int | None = None
    key_valid: np.ndarray | None = None  # [B, S] bool: value_mask / key_mask
    query_valid: np.ndarray | None = None  # [B, T] bool: the query's Keras mask
    attention_mask: np.ndarray | None = None  # [B, T, S] or [B, H, T, S] bool, 1 = attend


def valid_tokens(n: int, lengths: tuple[int, ...], side: str) -> np.ndarray:
    """[B, n] bool, True = a real token: the first lengths[b] of the row (right padding) or the
    last (left padding, issue 14: how generation batches are padded)."""
    positions = np.arange(n)[None, :]
    counts = np.asarray(lengths)[:, None]
    return positions >= n - counts if side == "left" else positions < counts


def keras_masks(case: Case, sliding_window: bool = True) -> KerasMasks:
    """Map each neutral mask component to the Keras argument that expresses it natively.

    Components without a native argument (random, per-head, explicit fully masked rows) go to
    `attention_mask`, built by conformance.masks.build_mask on the case with the natively
    expressed components removed (the random draws are keyed on the case, not on the mask).
    """
    s, m = case.shape, case.mask
    if m.additive_density is not None or m.bias_scale is not None:
        raise Unsupported("Keras masks are boolean; additive masks and biases have no argument")
    if s.attention_axes and not m.is_empty():
        raise Unsupported("masks with several attention axes are not mapped by this adapter")
    out = KerasMasks()
    if m.causal is not None:
        if m.causal == "bottom-right" and s.query_len != s.kv_len:
            raise Unsupported("use_causal_mask is top-left aligned")
        out.use_causal_mask = True
    if m.window is not None:
        left, right = m.window
        if m.causal == "bottom-right" and s.query_len != s.kv_len:
            raise Unsupported("sliding_window is aligned at the top-left")
        if not sliding_window:
            raise Unsupported("this layer has no sliding_window argument")
        # sliding_window=w keeps |t - s| < w; with use_causal_mask (the composition Keras
        # documents for Mistral-style causal windows) it keeps t - w < s <= t. So a symmetric
        # band maps to w alone, and a band ending at the diagonal (right = 0, or any right >= 0
        # under a causal mask) to w plus use_causal_mask.
        upper = min(right, 0) if out.use_causal_mask else right
        if upper == 0 and left >= 0:
            out.use_causal_mask = True
            out.sliding_window = left + 1
        elif left == upper and left >= 0:
            out.sliding_window = left + 1
        else:
            raise Unsupported(
                f"window {m.window} is neither symmetric nor causal: Keras's sliding_window "
                "keeps |t - s| < w (optionally with use_causal_mask)"
            )
    rest = dataclasses.replace(m, causal=None, window=None, key_padding=None, query_padding=None)
    attend = None if rest.is_empty() else build_mask(dataclasses.replace(case, mask=rest))[0]
    if attend is not None and attend.shape[1] > 1:
        # A per-head attention_mask [B, H, T, S] goes beyond the [B, T, S] that Keras
        # documents, and Keras ANDs it with the padding masks as they come ([B, T, 1] query,
        # [B, 1, S] key): right-aligned broadcasting meets B with H, which crashes (B != H,
        # neither 1) or, when B == H, silently masks head b by batch element b's padding. So
        # the padding travels inside the per-head mask here (the random draws are keyed on
        # the case, not on the mask); causal and window masks are [1, T, S] in Keras and
        # broadcast correctly, so they stay native.
        rest = dataclasses.replace(rest, key_padding=m.key_padding, query_padding=m.query_padding)
        attend = build_mask(dataclasses.replace(case, mask=rest))[0]
    else:
        if m.key_padding is not None:
            out.key_valid = valid_tokens(s.kv_len, m.key_padding, m.padding_side)
        if m.query_padding is not None:
            out.query_valid = valid_tokens(s.query_len, m.query_padding, m.padding_side)
    if attend is not None:
        out.attention_mask = attend[:, 0] if attend.shape[1] == 1 else attend
    return out


# --- tensors -------------------------------------------------------------------------------


def to_numpy_float(x: Any, ops: Any) -> np.ndarray:
    """A backend tensor as a NumPy float array (bfloat16, which NumPy lacks, as float32)."""
    arr = np.asarray(ops.convert_to_numpy(x))
    if arr.dtype.name == "bfloat16" or not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)  # exact: every bfloat16 value is a float32
    return arr


def scores_to_canonical(scores: np.ndarray, case: Case) -> np.ndarray:
    """Keras scores [B, *outer, H, *T axes, *S axes] -> [B * outer, H, T, S] (the reference's)."""
    s = case.shape
    return scores.reshape(-1, s.num_heads, s.query_len, s.kv_len)


def device_scope_name(device: str, backend: str = "tensorflow") -> str:
    """Our device names ("cpu", "cuda:0") -> keras.device() names ("cpu:0", "gpu:0").

    torch gets plain "cpu": under keras.device("cpu:0") the torch backend's Variable moves its
    Parameter with .to("cpu:0"), which copies it into a plain tensor, and a layer with an
    integer variable (Dropout's seed state) then fails to build ("Only Tensors of floating
    point and complex dtype can require gradients").
    """
    if device == "cpu":
        return "cpu" if backend == "torch" else "cpu:0"
    if device.startswith("cuda"):
        return "gpu:" + (device.split(":", 1)[1] if ":" in device else "0")
    raise Unsupported(f"unknown device {device!r}")


def backend_devices(backend: str) -> list[str]:
    """CPU plus the GPUs the backend itself sees."""
    devices = ["cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        devices += [f"cuda:{i}" for i in range(len(gpus))]
    elif backend == "jax":
        import jax

        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        devices += [f"cuda:{i}" for i in range(len(gpus))]
    elif backend == "torch":
        import torch

        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def backend_versions(keras: Any, backend: str) -> dict[str, str]:
    import importlib

    versions = {"keras": keras.__version__}
    module = importlib.import_module(backend)
    versions[backend] = getattr(module, "__version__", "?")
    return versions


class DotProductAttentionCounter:
    """Counts calls to keras.ops.dot_product_attention while installed (path verification).

    MultiHeadAttention calls it as `ops.dot_product_attention` on the `keras.src.ops` module,
    so replacing that attribute for the duration of a probe call sees every fused call.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __enter__(self) -> DotProductAttentionCounter:
        import keras.src.ops as kops

        self._module = kops
        self._original = kops.dot_product_attention

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self._original(*args, **kwargs)

        kops.dot_product_attention = counting
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.dot_product_attention = self._original


def dropout_rate(case: Case) -> float:
    """The case's attention dropout rate (0 without one)."""
    dropout = getattr(case, "dropout", None)
    return float(dropout.rate) if dropout is not None else 0.0


def assert_backend(keras: Any, backend: str) -> None:
    actual = keras.backend.backend()
    if actual != backend:
        raise RuntimeError(
            f"Keras runs the {actual!r} backend in this process, not {backend!r}: "
            "KERAS_BACKEND must be set before keras is imported (the worker env does this)"
        )


# --- declarations --------------------------------------------------------------------------


def fused_refusals(variant: str, tags: frozenset[str] = EXPLICIT_ONLY) -> dict[str, str]:
    """Why a fused variant refuses `tags` (the explicit path takes them); `variant` completes
    the name of the explicit adapter the messages point to (keras.<variant>.explicit)."""
    return {k: v.replace("<backend>", variant) for k, v in FUSED_UNSUPPORTED.items() if k in tags}


def backend_worker(backend: str) -> dict[str, Any]:
    """The Declaration fields that run an adapter on Keras 3's `backend`: Keras fixes its
    backend at import, so every Keras adapter of one backend shares one worker process."""
    return {
        "requires": ("keras", backend),
        "worker": f"keras-{backend}",
        "env": {"KERAS_BACKEND": backend},
    }


def layer_declaration(
    name: str,
    summary: str,
    backend: str,
    path: str,
    features: frozenset[str],
    unsupported_reasons: dict[str, str],
    notes: str,
) -> Declaration:
    """A Keras 3 attention layer on `backend`, taking `path` ("fused" or "explicit"): the
    worker, divergences and dropout every such layer shares."""
    return Declaration(
        name=name,
        summary=summary,
        framework="keras",
        features=features,
        **backend_worker(backend),
        compiles=backend == "jax",  # JAX compiles every op per shape, eager calls too
        divergences=keras_divergences(backend, path),
        unsupported_reasons=unsupported_reasons,
        dropout=KERAS_DROPOUT,
        notes=notes,
    )


# --- MultiHeadAttention (Keras 3 and Keras 2) ----------------------------------------------


def mha_arguments(case: Case) -> dict[str, Any]:
    """MultiHeadAttention's constructor arguments for a case, the same in Keras 3 and Keras 2.
    The kernels start at zero: the case's weights replace them before every call."""
    s = case.shape
    kwargs: dict[str, Any] = {
        "num_heads": s.num_heads,
        "key_dim": s.key_dim,
        "value_dim": s.value_dim,
        "use_bias": case.use_bias,
        "dropout": dropout_rate(case),
        "dtype": case.dtype,
        "kernel_initializer": "zeros",
    }
    if s.output_dim != s.query_dim:
        kwargs["output_shape"] = (s.output_dim,)
    if s.attention_axes:
        kwargs["attention_axes"] = tuple(s.attention_axes)
    return kwargs


def mha_input_shapes(case: Case, batch: int) -> tuple[tuple[int, ...], ...]:
    """The (query, value, key) shapes MultiHeadAttention is built for, `batch` rows each: the
    attention axes (several for multi-axis cases) between the batch and the features."""
    s = case.shape
    inner_q = s.query_shape or (s.query_len,)
    inner_kv = s.kv_shape or (s.query_shape if case.self_attention else ()) or (s.kv_len,)
    return (
        (batch, *inner_q, s.query_dim),
        (batch, *inner_kv, s.value_input_dim),
        (batch, *inner_kv, s.key_input_dim),
    )


# --- weights and gradients -----------------------------------------------------------------


def einsum_weight_pairs(
    denses: Sequence[Any], case: Case, inputs: CaseInputs
) -> list[tuple[Any, Any]]:
    """(variable, canonical value in the variable's layout) for every weight, in
    PARAMETER_NAMES order, of a layer whose projections are the EinsumDense layers `denses`
    (query, key, value, output)."""
    query, key, value, output = denses
    w = {name: inputs.native(name) for name in inputs.weights}
    pairs = [
        (query.kernel, to_einsum_kernel(w["wq"])),  # [Dq, H, K]
        (key.kernel, to_einsum_kernel(w["wk"])),  # [Dk, H (or G), K]
        (value.kernel, to_einsum_kernel(w["wv"])),  # [Dv, H (or G), V]
        (output.kernel, w["wo"]),  # [H, V, Do]: canonical already
    ]
    if case.use_bias:
        pairs += [
            (query.bias, w["bq"]),
            (key.bias, w["bk"]),
            (value.bias, w["bv"]),
            (output.bias, w["bo"]),
        ]
    return pairs


def parameter_gradients(grads: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Gradients of the weights, in einsum_weight_pairs order, as canonical `grad_*` outputs."""
    out = {}
    for name, g in zip(PARAMETER_NAMES[: len(grads)], grads, strict=True):
        # EinsumDense kernels [D, N, K] -> [N, D, K]; biases and the output kernel
        # [H, V, Do] are canonical already.
        out[f"grad_{name}"] = from_einsum_kernel(g) if name in ("wq", "wk", "wv") else g
    return out


# --- the adapter ---------------------------------------------------------------------------


class KerasAdapter(Adapter):
    """Setup, devices and versions of an adapter that runs Keras 3 on one backend."""

    backend: ClassVar[str]

    def setup(self) -> None:
        import keras

        assert_backend(keras, self.backend)
        self.keras = keras
        self.ops = keras.ops
        if self.backend == "jax":
            import jax

            from .jax_runtime import enable_compilation_cache

            # XLA compilation dominates (~0.25 s CPU per new shape; an eager
            # keras.ops.dot_product_attention compiles one small program per primitive and
            # shape, ~1,600 on the shipped specs): JAX's persistent compilation cache in
            # conformance's cache folder (on unless CONFORMANCE_CACHE_DIR is off, e.g.
            # `conformance run --no-cache`) makes later runs load the compiled programs, which
            # compute exactly what a fresh compile would. Every adapter of the worker enables
            # it (run alone, keras.ops.dpa.jax recompiled everything: 78 s instead of ~27 s
            # warm, measured).
            enable_compilation_cache(jax)

    def release_compiled(self) -> None:
        """On JAX, drop the compiled programs every few hundred compilations (between cases;
        jax_runtime.release_programs): Keras on JAX compiles per primitive and shape, and one
        worker held 3.3 GiB of programs at the end of the default run."""
        if self.backend == "jax":
            from .jax_runtime import release_programs

            release_programs()

    def devices(self) -> list[str]:
        return backend_devices(self.backend)

    def versions(self) -> dict[str, str]:
        return backend_versions(self.keras, self.backend)
