"""The Adapter classes that call a user's plain function: arrays in the function's kind and
layout, its optional keywords, its outputs (and gradients) back in the canonical layout."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..adapters.arrays import prepare_arrays, to_framework, to_numpy
from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..cases.layouts import bhtk_to_bthk, bthk_to_bhtk, repeat_kv_heads
from .adapter import Adapter, Unsupported
from .conventions import PROJECTIONS, _accepts
from .layer_weights import layer_params
from .mask_forms import _split_mask, mask_for


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
        # Dropout: the rate, the mode and the seed of this draw (conformance.oracle.dropout varies it).
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

    def _mask_and_options(self, case: Case, device: str) -> tuple[np.ndarray | None, dict]:
        """The mask in the function's convention and its keyword options: a function that takes
        `bias` gets the boolean part as the mask and the additive part as `bias`."""
        conv, fn = self.convention, type(self).function
        options = self._options(case, device)
        if conv["mask"] in ("attend", "masked") and _accepts(fn, "bias"):
            mask, bias = _split_mask(case, conv["mask"], conv["broadcast_mask"])
            options["bias"] = self._array(bias, case, device)
        else:
            mask = mask_for(case, conv["mask"], broadcast=conv["broadcast_mask"])
        return mask, options


class KernelFunctionAdapter(FunctionAdapter):
    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        conv = self.convention
        q, k, v = (inputs.native(n) for n in ("q", "k", "v"))
        if conv["kv_heads"] == "repeat" and k.shape[1] != q.shape[1]:
            k, v = repeat_kv_heads(k, q.shape[1]), repeat_kv_heads(v, q.shape[1])
        if conv["layout"] == "BTHK":
            q, k, v = bhtk_to_bthk(q), bhtk_to_bthk(k), bhtk_to_bthk(v)
        fn = type(self).function
        mask, options = self._mask_and_options(case, device)
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
        fn = type(self).function
        mask, options = self._mask_and_options(case, device)
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
        come back in the canonical layout (conformance.oracle.backward names)."""
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
