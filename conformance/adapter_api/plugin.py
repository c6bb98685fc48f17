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

import numpy as np

from ..adapters.arrays import ARRAY_KINDS, prepare_arrays, to_framework, to_numpy
from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..cases.layouts import (
    bhtk_to_bthk,
    bthk_to_bhtk,
    repeat_kv_heads,
    to_einsum_kernel,
    to_linear,
    to_linear_out,
    to_packed_in_proj,
)
from ..cases.masks import build_mask, combined_additive, fill_value, to_true_masked, visible
from .adapter import (
    FILL_AS_WRITTEN,
    Adapter,
    Declaration,
    Divergence,
    DropoutBehavior,
    ToleranceOverride,
    Unsupported,
)

MASK_FORMS = ("additive", "attend", "masked", "none")
KERNEL_LAYOUTS = ("BHTK", "BTHK")
WEIGHT_LAYOUTS = ("canonical", "linear", "packed", "einsum", "fused")
PROJECTIONS = ("q", "k", "v", "o")
KV_HEADS = ("native", "repeat", "equal")

# What a boolean mask can carry; an additive one carries a finite bias too.
BOOL_MASK_FEATURES = frozenset({
    "causal", "causal-top-left", "causal-bottom-right", "key-padding", "query-padding",
    "bool-mask", "per-head-mask", "additive-mask", "window", "fully-masked-rows",
    "segments", "left-padding",  # issue 14: any mask, so packed rows and left padding too
})  # fmt: skip
# issue 14: an additive mask can carry a finite fill (-1e9, -10000, finfo.min) as users write it
ADDITIVE_MASK_FEATURES = BOOL_MASK_FEATURES | {"attn-bias", "finite-fill"}
GQA_FEATURES = frozenset({"grouped-query", "multi-query"})

_FRAMEWORK_OF = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


# --- arrays in, arrays out -----------------------------------------------------------------


# --- masks ---------------------------------------------------------------------------------


def mask_for(case: Case, form: str, *, broadcast: bool = True) -> np.ndarray | None:
    """The case's mask in one of MASK_FORMS, [B, H, T, S] (or [B, 1|H, T, S] unbroadcast).

    additive: float in the case dtype's storage form, 0 / -inf plus any finite bias
    attend:   bool, True = the query may attend to the key (SDPA, JAX, Keras, Flax, ONNX)
    masked:   bool, True = masked out (torch nn.MultiheadAttention)
    None when the case has no mask.
    """
    if form not in MASK_FORMS:
        raise ValueError(f"mask must be one of {MASK_FORMS}, got {form!r}")
    if case.mask.is_empty() or form == "none":
        return None
    from ..cases.dtypes import STORAGE

    attend, bias = build_mask(case)
    if form == "additive":
        mask = combined_additive(attend, bias, STORAGE[case.dtype], fill=fill_value(case))
    else:
        if bias is not None and np.any(np.isfinite(bias) & (bias != 0)):
            raise Unsupported("a finite attention bias cannot travel as a boolean mask")
        seen = visible(case)
        mask = seen if form == "attend" else to_true_masked(seen)
    if broadcast and mask is not None:
        s = case.shape
        mask = np.ascontiguousarray(
            np.broadcast_to(mask, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return mask


def bias_for(case: Case, *, broadcast: bool = True) -> np.ndarray | None:
    """The finite additive bias of a case, [B, H, T, S] in the storage dtype (masked positions
    hold 0: the boolean mask removes them), or None when the case has no finite bias. With a
    boolean mask this is the pair "bool mask + separate bias" (e.g. SDPA-like kernels taking
    attn_mask and a relative-position bias apart)."""
    from ..cases.dtypes import STORAGE

    _, bias = build_mask(case)
    if bias is None or not np.any(np.isfinite(bias) & (bias != 0)):
        return None
    out = np.where(np.isfinite(bias), bias, 0.0).astype(STORAGE[case.dtype])
    if broadcast:
        s = case.shape
        out = np.ascontiguousarray(
            np.broadcast_to(out, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return out


def _split_mask(case: Case, form: str, broadcast: bool) -> tuple[np.ndarray | None, Any]:
    """(boolean mask in `form` without the bias check, finite bias or None)."""
    if case.mask.is_empty():
        return None, None
    seen = visible(case)
    mask = None if seen is None else (seen if form == "attend" else to_true_masked(seen))
    if broadcast and mask is not None:
        s = case.shape
        mask = np.ascontiguousarray(
            np.broadcast_to(mask, (s.batch, s.num_heads, s.query_len, s.kv_len))
        )
    return mask, bias_for(case, broadcast=broadcast)


# --- declarations --------------------------------------------------------------------------


def _with_fill(divergences: tuple, features: frozenset[str]) -> tuple:
    """Issue 14: an adapter taking finite fills computes fully masked rows as written."""
    if "finite-fill" in features and FILL_AS_WRITTEN.id not in {d.id for d in divergences}:
        return (*divergences, FILL_AS_WRITTEN)
    return divergences


def _accepts(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _features(
    mode: str,
    fn: Callable,
    mask: str,
    returns_weights: bool,
    kv_heads: str,
    weights: str | None,
    features: Iterable[str] | None,
    add: Iterable[str],
    drop: Iterable[str],
    gradients: str | None = None,
) -> frozenset[str]:
    if features is not None:
        tags = set(features) | {mode}
    else:
        tags = {mode, "kv-len", "value-dim"}
        if mode == "layer":
            tags |= {"cross-attention", "kv-input-dims", "output-dim", "no-bias"}
        tags |= {"additive": ADDITIVE_MASK_FEATURES, "none": set()}.get(mask, BOOL_MASK_FEATURES)
        if kv_heads != "equal":
            tags |= GQA_FEATURES
        if _accepts(fn, "scale"):
            tags.add("scale")
        if returns_weights:
            tags |= {"weights", "weights-mean"}
        if mask in ("attend", "masked") and _accepts(fn, "bias"):
            tags.add("attn-bias")  # the finite bias travels apart from the boolean mask
        if gradients == "autodiff" or _accepts(fn, "grad_output"):
            tags.add("gradients")
        if all(_accepts(fn, p) for p in ("dropout_p", "training", "seed")):
            tags |= {"dropout", "dropout-training"}
        if weights == "fused":  # one qkv matrix applied to one input: self-attention only
            tags -= {"cross-attention", "kv-input-dims"}
        if weights == "packed":  # torch's packed in_proj: one E for q, k, v and the output
            tags -= {"kv-input-dims", "value-dim", "output-dim"} | GQA_FEATURES
    return frozenset((tags | set(add)) - set(drop))


def _notes(kv_heads: str, returns_weights: bool, notes: str) -> str:
    parts = [notes] if notes else []
    if kv_heads == "repeat":
        parts.append(
            "grouped/multi-query cases run with the key/value heads repeated by the helper "
            "(conformance.layouts.repeat_kv_heads), not by the implementation"
        )
    if returns_weights:
        parts.append("weights_mean is the mean over heads of the returned per-head weights")
    return "; ".join(parts)


class FunctionAdapter(Adapter):
    """Base of the classes `kernel_adapter` / `layer_adapter` build. `function` is the user's."""

    function: Callable[..., Any]
    convention: Mapping[str, Any]  # how the function is called (read by the reproducer too)
    _setup_hook: Callable[[], None] | None = None
    _devices: tuple[str, ...] = ("cpu",)

    def setup(self) -> None:
        prepare_arrays(self.convention["arrays"])
        if self._setup_hook is not None:
            self._setup_hook()

    def devices(self) -> list[str]:
        return list(self._devices)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for dist in {self.declaration.framework, "numpy"}:
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                pass
        return out

    def _options(self, case: Case, device: str) -> dict[str, Any]:
        fn = type(self).function
        kwargs: dict[str, Any] = {}
        if _accepts(fn, "scale"):
            kwargs["scale"] = case.effective_scale
        if _accepts(fn, "case"):
            kwargs["case"] = case
        if _accepts(fn, "device"):
            kwargs["device"] = device
        # Dropout: the rate, the mode and the seed of this draw (conformance.dropout varies it).
        if _accepts(fn, "dropout_p"):
            kwargs["dropout_p"] = case.dropout.rate if case.dropout else 0.0
        if _accepts(fn, "training"):
            kwargs["training"] = bool(case.dropout and case.dropout.training)
        if _accepts(fn, "seed"):
            kwargs["seed"] = (case.dropout.seed or 0) if case.dropout else 0
        return kwargs

    def _array(self, array: np.ndarray | None, case: Case, device: str) -> Any:
        if array is None:
            return None
        return to_framework(array, case.dtype, self.convention["arrays"], device)

    def _outputs(self, result: Any, case: Case, layout: str) -> dict[str, np.ndarray]:
        if isinstance(result, Mapping):
            out = {name: to_numpy(value) for name, value in result.items() if value is not None}
        elif isinstance(result, tuple):
            if len(result) != 2:
                raise TypeError("return the output, or (output, weights)")
            out = {"output": to_numpy(result[0])}
            if result[1] is not None:
                out["weights"] = to_numpy(result[1])
        else:
            out = {"output": to_numpy(result)}
        if layout == "BTHK" and out["output"].ndim == 4:
            out["output"] = bthk_to_bhtk(out["output"])
        if "weights" in out and "weights_mean" not in out:
            out["weights_mean"] = out["weights"].mean(axis=1)
        return out


class KernelFunctionAdapter(FunctionAdapter):
    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        conv = self.convention
        q, k, v = (inputs.native(n) for n in ("q", "k", "v"))
        if conv["kv_heads"] == "repeat" and k.shape[1] != q.shape[1]:
            k, v = repeat_kv_heads(k, q.shape[1]), repeat_kv_heads(v, q.shape[1])
        if conv["layout"] == "BTHK":
            q, k, v = bhtk_to_bthk(q), bhtk_to_bthk(k), bhtk_to_bthk(v)
        fn, options = type(self).function, self._options(case, device)
        if conv["mask"] in ("attend", "masked") and _accepts(fn, "bias"):
            mask, bias = _split_mask(case, conv["mask"], conv["broadcast_mask"])
            options["bias"] = self._array(bias, case, device)
        else:
            mask = mask_for(case, conv["mask"], broadcast=conv["broadcast_mask"])
        if conv.get("qkv") == "packed":
            return self._run_packed(case, q, k, v, mask, options, device)
        args = [self._array(a, case, device) for a in (q, k, v, mask)]
        d_out = None
        if case.gradients:  # dY in the function's layout and array kind
            d_y = np.array(inputs.native("grad_output"))  # writable: frameworks may write
            d_out = self._array(
                bhtk_to_bthk(d_y) if conv["layout"] == "BTHK" else d_y, case, device
            )
        if _accepts(fn, "grad_output"):
            options["grad_output"] = d_out  # None outside gradient cases
        if case.gradients and conv.get("gradients") == "autodiff":
            from ..adapters.autodiff import vjp

            result, grads = vjp(
                conv["arrays"],
                lambda q, k, v: fn(q, k, v, args[3], **options),
                tuple(args[:3]),
                d_out,
            )
            if isinstance(result, tuple):
                if len(result) != 2:
                    raise TypeError("return the output, or (output, weights)")
                result = {"output": result[0], "weights": result[1]}
            elif not isinstance(result, Mapping):
                result = {"output": result}
            result = {**result, **dict(zip(("grad_q", "grad_k", "grad_v"), grads, strict=True))}
        else:
            result = fn(*args, **options)
        outputs = self._outputs(result, case, conv.get("out_layout") or conv["layout"])
        return _kernel_gradients_back(outputs, case, conv)

    def _run_packed(self, case, q, k, v, mask, options, device):  # noqa: ANN001, ANN202
        """fn(qkv [B,T,3,H,K], mask, ...) -> out [B,T,H,K] (flash_attn_qkvpacked_func style):
        self-attention with T = S, H = G and K = V only."""
        conv, s = self.convention, case.shape
        if not (
            s.query_len == s.kv_len and s.num_heads == s.num_kv_heads and s.key_dim == s.value_dim
        ):
            raise Unsupported("packed QKV needs T = S, H = G and K = V")
        if conv["layout"] != "BTHK":
            q, k, v = bhtk_to_bthk(q), bhtk_to_bthk(k), bhtk_to_bthk(v)
        qkv = np.ascontiguousarray(np.stack([q, k, v], axis=2))  # [B,T,3,H,K]
        result = type(self).function(
            self._array(qkv, case, device), self._array(mask, case, device), **options
        )
        return self._outputs(result, case, conv.get("out_layout") or "BTHK")


def _kernel_gradients_back(outputs: dict, case: Case, conv: Mapping[str, Any]) -> dict:
    """Returned gradients to the canonical layout: BTHK transposed back; with kv_heads="repeat"
    a key/value head's gradient is the sum over the query heads it was repeated to."""
    g = case.shape.num_kv_heads
    for name in ("grad_q", "grad_k", "grad_v"):
        if name not in outputs or outputs[name].ndim != 4:
            continue
        grad = outputs[name]
        if conv["layout"] == "BTHK":
            grad = bthk_to_bhtk(grad)
        if name != "grad_q" and conv["kv_heads"] == "repeat" and grad.shape[1] != g:
            b, h, s_len, d = grad.shape
            grad = grad.reshape(b, g, h // g, s_len, d).sum(axis=2)
        outputs[name] = grad
    return outputs


def layer_params(case: Case, inputs: CaseInputs, layout: str) -> dict[str, np.ndarray | None]:
    """Canonical weights (conformance.inputs) in `layout`; biases are None without bias.

    canonical: wq [H,Dq,K] bq [H,K] wk [G,Dk,K] bk wv [G,Dv,V] bv wo [H,V,Do] bo [Do]
    linear:    q_weight [H*K,Dq] q_bias [H*K] k_weight [G*K,Dk] ... out_weight [Do,H*V] out_bias
    packed:    in_proj_weight [3E,E] in_proj_bias [3E] out_weight [E,E] out_bias [E]
               (torch nn.MultiheadAttention; needs H = G, Dq = Dk = Dv = Do = H*K, K = V)
    einsum:    q_kernel [Dq,H,K] q_bias [H,K] ... out_kernel [H,V,Do] out_bias [Do]
               (Keras EinsumDense, Flax DenseGeneral)
    fused:     qkv_weight [H*K+G*K+G*V, D] (rows q, then k, then v) qkv_bias, out_weight
               [Do,H*V] out_bias (one Wqkv matrix, as in many LLM blocks; self-attention)
    add_bias_kv cases add bias_k [G,K] and bias_v [G,V] in every layout.
    """
    w = {name: inputs.native(name) for name in inputs.weights}
    bias = case.use_bias
    if layout == "canonical":
        out = {name: w[name] for name in ("wq", "wk", "wv", "wo")}
        out.update({n: (w[n] if bias else None) for n in ("bq", "bk", "bv", "bo")})
    elif layout == "linear":
        out = {}
        for p in "qkv":
            weight, b = to_linear(w[f"w{p}"], w[f"b{p}"])
            out[f"{p}_weight"], out[f"{p}_bias"] = weight, (b if bias else None)
        out["out_weight"], out["out_bias"] = to_linear_out(w["wo"]), (w["bo"] if bias else None)
    elif layout == "packed":
        s = case.shape
        e = s.num_heads * s.key_dim
        if not (
            s.num_kv_heads == s.num_heads
            and s.key_dim == s.value_dim
            and s.query_dim == s.key_input_dim == s.value_input_dim == s.output_dim == e
        ):
            raise Unsupported(
                "a packed in_proj needs H = G, K = V and every model dim equal to H*K"
            )
        weight, b = to_packed_in_proj(w["wq"], w["wk"], w["wv"], w["bq"], w["bk"], w["bv"])
        out = {"in_proj_weight": weight, "in_proj_bias": b if bias else None}
        out["out_weight"], out["out_bias"] = to_linear_out(w["wo"]), (w["bo"] if bias else None)
    elif layout == "einsum":
        out = {}
        for p in "qkv":
            out[f"{p}_kernel"] = to_einsum_kernel(w[f"w{p}"])
            out[f"{p}_bias"] = w[f"b{p}"] if bias else None
        out["out_kernel"], out["out_bias"] = w["wo"], (w["bo"] if bias else None)
    elif layout == "fused":
        s = case.shape
        if not (case.self_attention and s.query_dim == s.key_input_dim == s.value_input_dim):
            raise Unsupported("a fused qkv projection needs self-attention (one input)")
        parts = [to_linear(w[f"w{p}"], w[f"b{p}"]) for p in "qkv"]
        out = {
            "qkv_weight": np.concatenate([weight for weight, _ in parts], axis=0),
            "qkv_bias": np.concatenate([b for _, b in parts], axis=0) if bias else None,
            "out_weight": to_linear_out(w["wo"]),
            "out_bias": w["bo"] if bias else None,
        }
    else:
        raise ValueError(f"weights must be one of {WEIGHT_LAYOUTS}, got {layout!r}")
    if case.add_bias_kv:
        out["bias_k"], out["bias_v"] = w["bias_k"], w["bias_v"]
    return out


class LayerFunctionAdapter(FunctionAdapter):
    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        conv = self.convention
        query = self._array(inputs.native("query"), case, device)
        if case.self_attention:  # the same object, as a self-attention call passes it
            key = value = query
        else:
            key = self._array(inputs.native("key"), case, device)
            value = self._array(inputs.native("value"), case, device)
        bias_on = conv.get("bias_on") or PROJECTIONS
        if case.use_bias and set(bias_on) != set(PROJECTIONS):
            missing = ", ".join(p for p in PROJECTIONS if p not in bias_on)
            raise Unsupported(
                f"no bias on the {missing} projection(s); this case has biases on all"
            )
        params = {
            name: self._array(a, case, device)
            for name, a in layer_params(case, inputs, conv["weights"]).items()
        }
        fn, options = type(self).function, self._options(case, device)
        if conv["mask"] in ("attend", "masked") and _accepts(fn, "bias"):
            mask, bias = _split_mask(case, conv["mask"], conv["broadcast_mask"])
            options["bias"] = self._array(bias, case, device)
        else:
            mask = mask_for(case, conv["mask"], broadcast=conv["broadcast_mask"])
        mask = self._array(mask, case, device)
        if case.gradients and conv.get("gradients") == "autodiff":
            return self._run_autodiff(
                case, inputs, device, query, key, value, params, mask, options
            )
        if case.gradients and _accepts(fn, "grad_output"):
            options["grad_output"] = self._array(
                np.array(inputs.native("grad_output")), case, device
            )
        elif _accepts(fn, "grad_output"):
            options["grad_output"] = None
        result = fn(query, key, value, params, mask, **options)
        return self._outputs(result, case, "BHTK")

    def _run_autodiff(self, case, inputs, device, query, key, value, params, mask, options):  # noqa: ANN001, ANN202, PLR0913
        """Differentiate the layer w.r.t. its inputs and every weight it received; gradients
        come back in the canonical layout (conformance.backward names)."""
        from ..adapters.autodiff import vjp
        from ..cases.layouts import from_linear, from_linear_out

        conv, fn, s = self.convention, type(self).function, case.shape
        if conv["weights"] not in ("canonical", "linear"):
            raise Unsupported(f"gradients with weights='{conv['weights']}' are not supported yet")
        names = ["query"] + ([] if case.self_attention else ["key", "value"])
        names += [n for n, a in params.items() if a is not None]
        primals = [query] + ([] if case.self_attention else [key, value])
        primals += [a for a in params.values() if a is not None]

        def call(*xs: Any) -> Any:
            d = dict(zip(names, xs, strict=True))
            q = d["query"]  # self-attention: one tensor used three times, its gradient summed
            p = {n: d.get(n, a) for n, a in params.items()}
            return fn(q, d.get("key", q), d.get("value", q), p, mask, **options)

        d_out = self._array(np.array(inputs.native("grad_output")), case, device)
        result, grads = vjp(conv["arrays"], call, tuple(primals), d_out)
        g = {n: to_numpy(x) for n, x in zip(names, grads, strict=True)}
        outputs = self._outputs(result, case, "BHTK")
        outputs["grad_query"] = g["query"]
        if not case.self_attention:
            outputs["grad_key"], outputs["grad_value"] = g["key"], g["value"]
        if conv["weights"] == "canonical":
            for n in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "bias_k", "bias_v"):
                if n in g:
                    outputs[f"grad_{n}"] = g[n]
        else:
            heads = {"q": s.num_heads, "k": s.num_kv_heads, "v": s.num_kv_heads}
            for p, n in heads.items():
                w, b = from_linear(g[f"{p}_weight"], g.get(f"{p}_bias"), n)
                outputs[f"grad_w{p}"] = w
                if b is not None:
                    outputs[f"grad_b{p}"] = b
            outputs["grad_wo"] = from_linear_out(g["out_weight"], s.num_heads)
            if "out_bias" in g:
                outputs["grad_bo"] = g["out_bias"]
            for n in ("bias_k", "bias_v"):
                if n in g:
                    outputs[f"grad_{n}"] = g[n]
        return outputs


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
    dict with the gradients under conformance.backward's names, in the canonical layout.
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
