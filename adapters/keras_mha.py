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

import dataclasses
from collections import OrderedDict
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
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.layouts import from_einsum_kernel, to_einsum_kernel
from conformance.cases.masks import build_mask

BACKENDS = ("tensorflow", "jax", "torch")
PATHS = ("fused", "explicit")
DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})

# What keras.layers.MultiHeadAttention can express (both paths).
MHA_FEATURES = frozenset(
    {
        "layer",
        "cross-attention",
        "kv-input-dims",
        "value-dim",
        "output-dim",
        "kv-len",
        "causal",
        "causal-top-left",
        "key-padding",
        "query-padding",
        "bool-mask",
        "per-head-mask",
        "window",
        "fully-masked-rows",
        "no-bias",
        "gradients",
        # issue 14: padding masks on either side (valid_tokens) and packed segments as entries
        # of attention_mask [B, T, S]
        "left-padding",
        "segments",
    }
)
EXPLICIT_ONLY = frozenset({"weights", "multi-axis", "dropout", "dropout-training"})
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
# Key, in a layer's per-layer cache (next to its jitted functions), of the weights last set.
WEIGHTS_SET = "weights-set"


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


class KerasMHAAdapter(Adapter):
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
        import keras

        assert_backend(keras, self.backend)
        self.keras = keras
        self.ops = keras.ops
        # Keras attaches masks to tensors this way (Embedding(mask_zero=True), Masking).
        from keras.src.backend.common.masking import set_keras_mask

        self._set_keras_mask = set_keras_mask
        if self.backend == "jax":
            import jax

            from .jax_dpa import enable_compilation_cache

            # XLA compilation dominates (~0.25 s CPU per new shape): JAX's persistent
            # compilation cache in conformance's cache folder (on unless CONFORMANCE_CACHE_DIR
            # is off, e.g. `conformance run --no-cache`) makes later runs load the compiled
            # programs, which compute exactly what a fresh compile would.
            enable_compilation_cache(jax)
            self._jax = jax
            self._jit = jax.jit
        self._layers: OrderedDict[tuple, tuple[Any, dict]] = OrderedDict()
        self._verify_path()

    def devices(self) -> list[str]:
        return backend_devices(self.backend)

    def versions(self) -> dict[str, str]:
        return backend_versions(self.keras, self.backend)

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
        s = case.shape
        kwargs: dict[str, Any] = {}
        if s.output_dim != s.query_dim:
            kwargs["output_shape"] = (s.output_dim,)
        if s.attention_axes:
            kwargs["attention_axes"] = tuple(s.attention_axes)
        if masks.sliding_window is not None:
            kwargs["sliding_window"] = masks.sliding_window
        layer = self.keras.layers.MultiHeadAttention(
            num_heads=s.num_heads,
            key_dim=s.key_dim,
            value_dim=s.value_dim,
            use_bias=case.use_bias,
            dropout=dropout_rate(case),
            dtype=case.dtype,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            **kwargs,
        )
        inner_q = s.query_shape or (s.query_len,)
        inner_kv = s.kv_shape or (s.query_shape if case.self_attention else ()) or (s.kv_len,)
        layer.build(
            (s.batch, *inner_q, s.query_dim),
            (s.batch, *inner_kv, s.value_input_dim),
            (s.batch, *inner_kv, s.key_input_dim),
        )
        return layer

    def _weight_pairs(self, layer: Any, case: Case, inputs: CaseInputs) -> list[tuple[Any, Any]]:
        """(variable, canonical value in the variable's layout) for every weight."""
        w = {name: inputs.native(name) for name in inputs.weights}
        pairs = [
            (layer.query_dense.kernel, to_einsum_kernel(w["wq"])),
            (layer.key_dense.kernel, to_einsum_kernel(w["wk"])),
            (layer.value_dense.kernel, to_einsum_kernel(w["wv"])),
            (layer.output_dense.kernel, w["wo"]),  # [H, V, Do]: canonical already
        ]
        if case.use_bias:
            pairs += [
                (layer.query_dense.bias, w["bq"]),
                (layer.key_dense.bias, w["bk"]),
                (layer.value_dense.bias, w["bv"]),
                (layer.output_dense.bias, w["bo"]),
            ]
        return pairs

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
        for name, (var, _) in zip(PARAMETER_NAMES[: len(pairs)], pairs, strict=True):
            g = to_numpy_float(grads["params"][id(var)], ops)
            # EinsumDense kernels [D, N, K] -> [N, D, K]; biases and the output kernel
            # [H, V, Do] are canonical already.
            out[f"grad_{name}"] = from_einsum_kernel(g) if name in ("wq", "wk", "wv") else g
        return out

    def _masks(self, case: Case) -> KerasMasks:
        return keras_masks(case)


def _declaration(backend: str, path: str) -> Declaration:
    features = MHA_FEATURES | DTYPES | (EXPLICIT_ONLY if path == "explicit" else frozenset())
    reasons = dict(COMMON_UNSUPPORTED)
    if path == "fused":
        reasons.update({k: v.replace("<backend>", backend) for k, v in FUSED_UNSUPPORTED.items()})
    how = (
        "ops.dot_product_attention (no scores, no dropout, 3-D inputs)"
        if path == "fused"
        else "einsum + keras.layers.Softmax(mask) (return_attention_scores=True)"
    )
    return Declaration(
        name=f"keras.{backend}.{path}",
        summary=f"keras.layers.MultiHeadAttention on the {backend} backend, {path} path: {how}",
        framework="keras",
        features=features,
        requires=("keras", backend),
        worker=f"keras-{backend}",
        env={"KERAS_BACKEND": backend},
        compiles=backend == "jax",  # JAX compiles every op per shape, eager calls too
        divergences=keras_divergences(backend, path),
        unsupported_reasons=reasons,
        dropout=KERAS_DROPOUT,
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
