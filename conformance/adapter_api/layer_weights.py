"""The canonical projection weights in the layout a layer function asks for (`layer_params`)."""

from __future__ import annotations

import numpy as np

from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..cases.layouts import to_einsum_kernel, to_linear, to_linear_out, to_packed_in_proj
from .adapter import Unsupported
from .conventions import WEIGHT_LAYOUTS


def layer_params(case: Case, inputs: CaseInputs, layout: str) -> dict[str, np.ndarray | None]:
    """Canonical weights (conformance.cases.inputs) in `layout`; biases are None without bias.

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
