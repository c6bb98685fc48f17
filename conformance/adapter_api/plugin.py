"""Turn a plain attention function into an adapter: the five-minute path for your own code.

Kernel mode: a function `(q, k, v, mask, **optional) -> out` computing scaled dot-product
attention on per-head tensors:

    from conformance.plugin import kernel_adapter

    @kernel_adapter(name="mylib.attention", mask="additive", arrays="torch")
    def my_attention(q, k, v, mask, *, scale):
        ...                                   # q [B,H,T,K], k [B,G,S,K], v [B,G,S,V]
        return out                            # [B,H,T,V]

    conformance run --adapter mymodule:my_attention

Layer mode: a function `(query, key, value, params, mask, **optional) -> out` with the
projection weights in the layout you ask for (`weights=`: "canonical", "linear", "packed",
"einsum"), see `layer_adapter`.

The decorator replaces the function by an `Adapter` subclass of the same name (the original
stays callable as `.function`). Its `Declaration` is derived from what the calling convention
can express: the mask form you accept, whether you accept `scale`, whether you return the
attention weights, how you handle fewer key/value heads. Narrow it with `drop=` (features your
code does not support: those cases become `unsupported`, not failures) or replace it with
`features=`; widen it with `add=`.

Optional keyword arguments are passed only when the function's signature names them:
`scale` (the logit scale; without it the function must use 1/sqrt(K) and `scale` cases are
unsupported), `case` (the whole `conformance.Case`), `device` ("cpu", "cuda:0", ...).

`arrays=` picks how arrays reach the function: "numpy" (the case dtype's storage form;
bfloat16 travels as float32), "torch", "jax" or "tensorflow" (tensors of the case dtype,
bfloat16 included, on the device). Outputs may be any of these; they come back as NumPy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..adapters.arrays import ARRAY_KINDS, prepare_arrays, to_framework, to_numpy
from .adapter import (
    Adapter,
    Declaration,
    Divergence,
    DropoutBehavior,
    ToleranceOverride,
    Unsupported,
)
from .conventions import (
    _FRAMEWORK_OF,
    ADDITIVE_MASK_FEATURES,
    BOOL_MASK_FEATURES,
    GQA_FEATURES,
    KERNEL_LAYOUTS,
    KV_HEADS,
    MASK_FORMS,
    PROJECTIONS,
    WEIGHT_LAYOUTS,
    _accepts,
    _features,
    _notes,
    _with_fill,
)
from .function_adapter import (
    FunctionAdapter,
    KernelFunctionAdapter,
    LayerFunctionAdapter,
    _kernel_gradients_back,
)
from .layer_weights import layer_params
from .mask_forms import _split_mask, bias_for, mask_for

# Every name this module offered before it was split (issue 20): the calling conventions
# (conventions.py), mask_for (mask_forms.py), layer_params (layer_weights.py) and the adapter
# classes (function_adapter.py) are imported from here by users' code and docs/plugins.md.
__all__ = [
    "ADDITIVE_MASK_FEATURES",
    "ARRAY_KINDS",
    "BOOL_MASK_FEATURES",
    "GQA_FEATURES",
    "KERNEL_LAYOUTS",
    "KV_HEADS",
    "MASK_FORMS",
    "PROJECTIONS",
    "WEIGHT_LAYOUTS",
    "_DECLARED",
    "_FRAMEWORK_OF",
    "Adapter",
    "Declaration",
    "Divergence",
    "DropoutBehavior",
    "FunctionAdapter",
    "KernelFunctionAdapter",
    "LayerFunctionAdapter",
    "ToleranceOverride",
    "Unsupported",
    "_accepts",
    "_build",
    "_decorate",
    "_features",
    "_kernel_gradients_back",
    "_notes",
    "_split_mask",
    "_with_fill",
    "bias_for",
    "describe_convention",
    "kernel_adapter",
    "layer_adapter",
    "layer_params",
    "mask_for",
    "prepare_arrays",
    "to_framework",
    "to_numpy",
]


def _build(
    base: type[FunctionAdapter],
    fn: Callable[..., Any],
    convention: dict[str, Any],
    *,
    name: str,
    summary: str | None,
    framework: str | None,
    features: frozenset[str],
    dtypes: Iterable[str],
    requires: Iterable[str] | None,
    worker: str | None,
    env: Mapping[str, str] | None,
    divergences: Iterable[Divergence],
    tolerances: Iterable[ToleranceOverride],
    unsupported_reasons: Mapping[str, str] | None,
    notes: str,
    devices: Iterable[str],
    setup: Callable[[], None] | None,
    class_name: str | None,
    dropout: DropoutBehavior | None = None,
) -> type[FunctionAdapter]:
    kind = convention["arrays"]
    if kind not in ARRAY_KINDS:
        raise ValueError(f"arrays must be one of {ARRAY_KINDS}, got {kind!r}")
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    declaration = Declaration(
        name=name,
        summary=summary or (doc[0] if doc else f"{fn.__module__}.{fn.__qualname__}"),
        framework=framework or _FRAMEWORK_OF[kind],
        features=features,
        dtypes=frozenset(dtypes),
        requires=tuple(requires) if requires is not None else (() if kind == "numpy" else (kind,)),
        worker=worker or f"plugin:{name}",  # own process: a user's crash costs only its cases
        env=dict(env or {}),
        divergences=_with_fill(tuple(divergences), features),
        tolerances=tuple(tolerances),
        unsupported_reasons=dict(unsupported_reasons or {}),
        notes=_notes(convention.get("kv_heads", "native"), convention["returns_weights"], notes),
        dropout=dropout,
    )
    qualname = class_name or fn.__qualname__
    cls = type(
        qualname.rsplit(".", 1)[-1],
        (base,),
        {
            "declaration": declaration,
            "function": staticmethod(fn),
            "convention": dict(convention),
            "_setup_hook": staticmethod(setup) if setup else None,
            "_devices": tuple(devices),
            "__module__": fn.__module__,
            "__doc__": fn.__doc__,
        },
    )
    cls.__qualname__ = qualname  # the registry imports it back as module:qualname
    return cls


# The decorators' keyword arguments that go to the Declaration as they are (_build).
_DECLARED = (
    "name", "summary", "framework", "dtypes", "requires", "worker", "env", "divergences",
    "tolerances", "unsupported_reasons", "notes", "devices", "setup", "class_name", "dropout",
)  # fmt: skip


def _decorate(
    fn: Callable[..., Any] | None,
    base: type[FunctionAdapter],
    convention: dict[str, Any],
    tags: tuple[Iterable[str] | None, Iterable[str], Iterable[str], frozenset[str]],
    declared: dict[str, Any],
) -> Any:
    """The core both decorators share: derive the feature tags from the calling convention
    (`tags` = features=, add=, drop= and the tags the convention cannot express), then build
    the adapter class; a decorator when `fn` is None, the class otherwise."""
    features, add, drop, without = tags

    def wrap(function: Callable[..., Any]) -> type[FunctionAdapter]:
        derived = _features(
            convention["mode"], function, convention["mask"], convention["returns_weights"],
            convention["kv_heads"], convention.get("weights"), features, add, drop,
            convention["gradients"],
        )  # fmt: skip
        return _build(base, function, convention, features=derived - without, **declared)

    return wrap(fn) if fn is not None else wrap


def kernel_adapter(
    fn: Callable[..., Any] | None = None,
    *,
    name: str,
    mask: str = "additive",
    arrays: str = "numpy",
    layout: str = "BHTK",
    kv_heads: str = "native",
    returns_weights: bool = False,
    broadcast_mask: bool = True,
    features: Iterable[str] | None = None,
    add: Iterable[str] = (),
    drop: Iterable[str] = (),
    dtypes: Iterable[str] = ("float64", "float32"),
    summary: str | None = None,
    framework: str | None = None,
    requires: Iterable[str] | None = None,
    worker: str | None = None,
    env: Mapping[str, str] | None = None,
    divergences: Iterable[Divergence] = (),
    tolerances: Iterable[ToleranceOverride] = (),
    unsupported_reasons: Mapping[str, str] | None = None,
    notes: str = "",
    devices: Iterable[str] = ("cpu",),
    setup: Callable[[], None] | None = None,
    class_name: str | None = None,
    gradients: str | None = None,
    dropout: DropoutBehavior | None = None,
    out_layout: str | None = None,
    qkv: str = "separate",
) -> Any:
    """Decorator (or function) making a kernel-mode adapter from `fn(q, k, v, mask, ...)`.

    fn gets q [B,H,T,K], k [B,G,S,K], v [B,G,S,V] (layout "BTHK": [B,T,H,K] etc.) and `mask`
    in the form named by `mask` (see `mask_for`; None when the case has none), and returns
    out [B,H,T,V] (same layout as its inputs), or (out, weights [B,H,T,S]) when
    returns_weights, or a dict with "output" / "weights" / "weights_mean".

    kv_heads: "native" (fn handles G < H itself: head h uses key/value head h // (H/G)),
    "repeat" (the helper repeats key/value heads first; say so in the adapter's name),
    "equal" (grouped/multi-query cases are unsupported).

    Gradient cases: gradients="autodiff" (arrays torch/jax/tensorflow) differentiates fn's
    output for the case's upstream gradient with the framework (conformance.adapters.autodiff); or fn
    accepts `grad_output` (dY, the output's layout; None outside gradient cases) and returns a
    dict with "output", "grad_q", "grad_k", "grad_v" (the inputs' layouts).
    Dropout cases: fn accepts `dropout_p`, `training` and `seed` (one seed per training draw);
    `dropout=` describes where it applies dropout (conformance.DropoutBehavior).

    Other calling conventions: with mask="attend"/"masked", a keyword `bias` receives the
    finite additive bias [B,H,T,S] apart from the boolean mask (None without one);
    out_layout= when the output's layout differs from the inputs' (default: layout);
    qkv="packed": fn(qkv [B,T,3,H,K], mask, ...) (self-attention with T = S, H = G, K = V).
    """
    declared = {k: v for k, v in locals().items() if k in _DECLARED}
    if out_layout not in (None, *KERNEL_LAYOUTS):
        raise ValueError(f"out_layout must be one of {KERNEL_LAYOUTS}, got {out_layout!r}")
    if qkv not in ("separate", "packed"):
        raise ValueError(f"qkv must be 'separate' or 'packed', got {qkv!r}")
    if qkv == "packed" and gradients:
        raise ValueError("gradients are not supported with qkv='packed' yet")
    if gradients not in (None, "autodiff"):
        raise ValueError(f"gradients must be None or 'autodiff', got {gradients!r}")
    for value, allowed, what in (
        (mask, MASK_FORMS, "mask"), (layout, KERNEL_LAYOUTS, "layout"), (kv_heads, KV_HEADS, "kv_heads"),
    ):  # fmt: skip
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")

    convention = {
        "mode": "kernel", "mask": mask, "arrays": arrays, "layout": layout,
        "kv_heads": kv_heads, "returns_weights": returns_weights,
        "broadcast_mask": broadcast_mask, "gradients": gradients,
        "out_layout": out_layout, "qkv": qkv,
    }  # fmt: skip
    # One packed tensor: no separate key/value sequence or heads.
    without = GQA_FEATURES | {"kv-len", "value-dim"} if qkv == "packed" else frozenset()
    return _decorate(
        fn, KernelFunctionAdapter, convention, (features, add, drop, without), declared
    )


def layer_adapter(
    fn: Callable[..., Any] | None = None,
    *,
    name: str,
    weights: str = "canonical",
    mask: str = "additive",
    arrays: str = "numpy",
    kv_heads: str = "native",
    returns_weights: bool = False,
    broadcast_mask: bool = True,
    features: Iterable[str] | None = None,
    add: Iterable[str] = (),
    drop: Iterable[str] = (),
    dtypes: Iterable[str] = ("float64", "float32"),
    summary: str | None = None,
    framework: str | None = None,
    requires: Iterable[str] | None = None,
    worker: str | None = None,
    env: Mapping[str, str] | None = None,
    divergences: Iterable[Divergence] = (),
    tolerances: Iterable[ToleranceOverride] = (),
    unsupported_reasons: Mapping[str, str] | None = None,
    notes: str = "",
    devices: Iterable[str] = ("cpu",),
    setup: Callable[[], None] | None = None,
    class_name: str | None = None,
    bias_on: Iterable[str] = PROJECTIONS,
    gradients: str | None = None,
) -> Any:
    """Decorator (or function) making a layer-mode adapter from
    `fn(query, key, value, params, mask, ...)`.

    query [B,T,Dq], key [B,S,Dk], value [B,S,Dv] (for self-attention cases key and value are
    the query object itself); params: the projection weights in `weights` layout (see
    `layer_params`; biases None when the case has none); mask as in `kernel_adapter`. Returns
    the output [B,T,Do], or (output, weights [B,H,T,S]) when returns_weights, or a dict.

    kv_heads: "native" (G < H handled by fn) or "equal" (grouped/multi-query unsupported).
    bias_on: the projections that have a bias (default all); with fewer, cases with biases
    are unsupported (the reference has a bias on every projection), bias-free cases run.
    A keyword `bias` with a boolean mask receives the finite bias apart, as in kernel_adapter.
    Gradient cases: gradients="autodiff" (weights canonical or linear) differentiates with
    respect to the inputs and every weight; or fn accepts `grad_output` [B,T,Do] and returns a
    dict with the gradients under conformance.oracle.backward's names, in the canonical layout.
    Defaults leave out bias-kv, zero-attn, decode and multi-axis: `add=` them if you handle
    them (accept `case` to see case.decode, case.add_bias_kv, ...).
    """
    declared = {k: v for k, v in locals().items() if k in _DECLARED}
    if weights not in WEIGHT_LAYOUTS:
        raise ValueError(f"weights must be one of {WEIGHT_LAYOUTS}, got {weights!r}")
    if mask not in MASK_FORMS:
        raise ValueError(f"mask must be one of {MASK_FORMS}, got {mask!r}")
    if kv_heads not in ("native", "equal"):
        raise ValueError("kv_heads must be 'native' or 'equal' for a layer")
    if gradients not in (None, "autodiff"):
        raise ValueError(f"gradients must be None or 'autodiff', got {gradients!r}")
    bias_on = tuple(bias_on)
    if set(bias_on) - set(PROJECTIONS):
        raise ValueError(f"bias_on takes projections among {PROJECTIONS}, got {bias_on!r}")

    convention = {
        "mode": "layer", "mask": mask, "arrays": arrays, "weights": weights,
        "kv_heads": kv_heads, "returns_weights": returns_weights,
        "broadcast_mask": broadcast_mask, "bias_on": bias_on, "gradients": gradients,
    }  # fmt: skip
    tags = (features, add, drop, frozenset())
    return _decorate(fn, LayerFunctionAdapter, convention, tags, declared)


def describe_convention(cls: type[FunctionAdapter]) -> str:
    """One line saying how the function is called (for reproducers and error messages)."""
    c = cls.convention
    fn = cls.function
    extra = [f"{p}=..." for p in ("scale", "case", "device") if _accepts(fn, p)]
    extra += [
        f"{p}=..."
        for p in ("bias", "grad_output", "dropout_p", "training", "seed")
        if _accepts(fn, p)
    ]
    if c["mode"] == "kernel":
        mask = f"mask_{c['mask']}" if c["mask"] != "none" else "None"
        inputs = ["qkv[B,T,3,H,K]"] if c.get("qkv") == "packed" else ["q", "k", "v"]
        args = [*inputs, mask, *extra]
    else:
        args = ["query", "key", "value", f"params[{c['weights']}]", f"mask_{c['mask']}", *extra]
    return f"{fn.__module__}.{fn.__qualname__}({', '.join(args)})  # arrays: {c['arrays']}"
