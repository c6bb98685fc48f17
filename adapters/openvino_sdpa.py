"""`openvino.sdpa.<hint>`: OpenVINO's ScaledDotProductAttention op (opset13), built directly.

What runs: an ov.Model with one `opset13.scaled_dot_product_attention(query, key, value,
attention_mask, scale, causal)` node, compiled for the CPU plugin and inferred. Query
[B, H, T, K], key/value [B, G, S, K|V]; G = 1 broadcasts over the heads (the op broadcasts
key/value against the query), other grouped-query shapes are not expressible.

The precision hint is part of the adapter identity (the CPU plugin may compute in a lower type
than the model's):

- `openvino.sdpa.f32`      compile_model(..., {"INFERENCE_PRECISION_HINT": "f32"})
- `openvino.sdpa.default`  compile_model(...) with no hint: the plugin's default, which is
                           bfloat16 on CPUs with native bf16 (AVX512_BF16/AMX) and f32
                           otherwise; the adapter records which it got.

Masks: only-top-left-causal -> causal=True (the op's causal mask is top-left); a boolean mask
(True = attend, verified) goes in as boolean; additive/bias parts as one float mask.
Path proof: the model holds exactly one SDPA op (built here); the compiled precision hint is
read back and checked. The plugin lowers the op itself (measured: into its snippets "Subgraph"
kernel for these sizes), which is the path under test.
openvino is imported lazily in setup().
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration, Divergence
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    EVERY_BOOLEAN_MASK,
    KERNEL_SHAPES,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, combined_additive
from conformance.running import profile

from .torch_sdpa import only_causal

OV_SPEC = (
    "https://docs.openvino.ai/2026/documentation/openvino-ir-format/operation-sets/"
    "operation-specs/sequence/scaled-dot-product-attention.html"
)
OV_HINT_DOC = (
    "https://docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/"
    "precision-control.html"
)

FEATURES = (
    KERNEL_SHAPES
    | {"multi-query", "scale"}
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    # issue 14: packed segments and left padding are entries of the op's attention_mask
    | SEGMENTS_AND_LEFT_PADDING
)

UNSUPPORTED = {
    "layer": "the SDPA op is the kernel only",
    "grouped-query": "the op broadcasts key/value heads; only G = 1 (multi-query) broadcasts",
    "weights": "the op returns the output only",
    "weights-mean": "the op returns the output only",
    "decode": "no cache in the op (stateful models are not built here)",
    "multi-axis": "one sequence axis",
    "bias-kv": "MultiheadAttention (torch) only",
    "zero-attn": "MultiheadAttention (torch) only",
    "dropout": "the op has no dropout",
    "dropout-training": "the op has no dropout",
    "gradients": "inference runtime: no gradients",
    "bfloat16": "NumPy has no bfloat16 to feed a bf16 model input (not wired here)",
}

_TYPES = {"float64": "f64", "float32": "f32", "float16": "f16"}
_NUMPY = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


class OpenvinoSdpaAdapter(Adapter):
    hint: ClassVar[str | None] = None  # None: the plugin's default
    cache_size = 64

    def setup(self) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()

    def versions(self) -> dict[str, str]:
        hint = self.core.get_property("CPU", "INFERENCE_PRECISION_HINT")
        return {"openvino": self.ov.__version__, "cpu-default-precision-hint": str(hint)}

    def _model(self, case: Case, mask_kind: str | None, causal: bool) -> Any:
        import openvino.opset13 as ops

        s, ov = case.shape, self.ov
        et = getattr(ov.Type, _TYPES[case.dtype])
        q = ops.parameter([s.batch, s.num_heads, s.query_len, s.key_dim], et, name="q")
        k = ops.parameter([s.batch, s.num_kv_heads, s.kv_len, s.key_dim], et, name="k")
        v = ops.parameter([s.batch, s.num_kv_heads, s.kv_len, s.value_dim], et, name="v")
        params = [q, k, v]
        mask = None
        if mask_kind is not None:
            heads = s.num_heads if case.mask.per_head else 1
            mtype = ov.Type.boolean if mask_kind == "bool" else et
            mask = ops.parameter([s.batch, heads, s.query_len, s.kv_len], mtype, name="mask")
            params.append(mask)
        scale = None
        if case.scale is not None:  # left out otherwise: the op's default 1/sqrt(K) is tested
            scale = ops.constant(np.array(case.scale, dtype=_NUMPY[case.dtype]))
        out = ops.scaled_dot_product_attention(q, k, v, mask, scale, causal=causal)
        return ov.Model([out], params, "sdpa")

    def _compile(self, case: Case, mask_kind: str | None, causal: bool) -> Any:
        s = case.shape
        key = (s, case.dtype, mask_kind, causal, case.scale, case.mask.per_head)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        config = {} if self.hint is None else {"INFERENCE_PRECISION_HINT": self.hint}
        started = time.perf_counter()
        compiled = self.core.compile_model(self._model(case, mask_kind, causal), "CPU", config)
        # One program per static signature: counted like JAX's XLA programs (conformance.profile)
        profile.add("compile", time.perf_counter() - started)
        self._check_path(compiled)
        self._compiled[key] = compiled
        if len(self._compiled) > self.cache_size:
            self._compiled.popitem(last=False)
        return compiled

    def _check_path(self, compiled: Any) -> None:
        """The compiled model must come from our one-op model with the asked-for hint.

        The CPU plugin decides how the op runs: measured here, it lowers small SDPA nodes
        into a fused "Subgraph" (its snippets MatMul/Softmax kernel) rather than keeping a
        ScaledDotProductAttention layer, so the layer type is not required; the input model
        has exactly one node besides parameters/results: the SDPA op.
        """
        ops = compiled.get_runtime_model().get_ops()
        if not ops:
            raise RuntimeError("the compiled model has no layers")
        if self.hint is not None:
            got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
            if self.hint not in got and got != "<Type: 'float32'>":
                raise RuntimeError(f"compiled with precision {got}, not {self.hint}")

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        causal = only_causal(case.mask) and case.mask.causal == "top-left"
        feeds = [self._array(inputs.native(n), case.dtype) for n in ("q", "k", "v")]
        mask_kind = None
        if not causal:
            attend, bias = build_mask(case)
            if bias is None and attend is not None:
                mask_kind = "bool"
                feeds.append(np.ascontiguousarray(attend))
            elif bias is not None:
                mask_kind = "float"
                feeds.append(self._array(combined_additive(attend, bias), case.dtype))
        compiled = self._compile(case, mask_kind, causal)
        out = compiled(feeds)[0]
        if out.dtype != _NUMPY[case.dtype]:
            raise RuntimeError(f"output type {out.dtype} is not the model's {case.dtype}")
        return {"output": np.asarray(out)}

    def _array(self, x: np.ndarray, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=_NUMPY[dtype])


# Measured here (OpenVINO 2026.4.1, a CPU with AVX512_BF16): the default CPU hint is bf16,
# so a float32 model computes its SDPA in bfloat16 (max abs error ~1e-2 on N(0,1) inputs).
DEFAULT_BF16 = Divergence(
    id="openvino-default-hint-bf16",
    reason="the CPU plugin's default INFERENCE_PRECISION_HINT is bf16 on CPUs with native "
    "bfloat16 (f32 elsewhere): a float32/float64 model computes in bfloat16 unless the caller "
    "sets the hint to f32",
    link=OV_HINT_DOC,
    dtypes=frozenset({"float64", "float32", "float16"}),
    compute_dtype="bfloat16",
)

# The CPU plugin has no float64 kernels: an f64 model is converted to f32 when compiled.
F64_AS_F32 = Divergence(
    id="openvino-float64-as-float32",
    reason="the CPU plugin converts an f64 model to f32 at compile time: float64 attention is "
    "float32-accurate",
    link=OV_HINT_DOC,
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)

ROWS_REASON = (
    "a query row whose every key is masked comes out as the plain mean of the values "
    "(uniform weights), not NaN: the CPU kernel's masking keeps such rows finite"
)


def _rows(compute_dtype: str | None, dtypes: frozenset[str] | None, suffix: str) -> Divergence:
    return Divergence(
        id="openvino-masked-rows-uniform" + suffix,
        reason=ROWS_REASON + ("" if compute_dtype is None else f"; computed in {compute_dtype}"),
        link=OV_SPEC,
        when=frozenset({"fully-masked-rows"}),
        dtypes=dtypes,
        masked_rows="uniform",
        compute_dtype=compute_dtype,
    )


DECLARED: dict[str | None, tuple[Divergence, ...]] = {
    None: (
        _rows("bfloat16", DEFAULT_BF16.dtypes, "-bf16"),
        _rows(None, None, ""),
        DEFAULT_BF16,
    ),
    "f32": (
        _rows("float32", frozenset({"float64"}), "-float64"),
        _rows(None, None, ""),
        F64_AS_F32,
    ),
}


def _make(hint: str | None) -> type[OpenvinoSdpaAdapter]:
    label = hint or "default"
    name = f"OpenvinoSdpa{label.capitalize()}"
    declaration = Declaration(
        name=f"openvino.sdpa.{label}",
        summary="OpenVINO opset13 ScaledDotProductAttention built directly, CPU plugin, "
        + (f"INFERENCE_PRECISION_HINT={hint}" if hint else "default precision hint"),
        framework="openvino",
        features=FEATURES,
        dtypes=frozenset(_NUMPY),
        requires=("openvino",),
        worker="openvino",
        divergences=DECLARED[hint],
        unsupported_reasons=UNSUPPORTED,
        notes="causal=True for a mask that is only top-left causal; boolean masks as boolean "
        "(True = attend), additive parts as one float mask; multi-query by broadcasting.",
    )
    return type(
        name,
        (OpenvinoSdpaAdapter,),
        {"hint": hint, "declaration": declaration, "__module__": __name__, "__qualname__": name},
    )


OpenvinoSdpaF32 = _make("f32")
OpenvinoSdpaDefault = _make(None)

ADAPTERS = [OpenvinoSdpaF32, OpenvinoSdpaDefault]
