"""`torch.onnx.*`: PyTorch modules exported with torch.onnx.export and run in ONNX Runtime.

The deployment path, exporter and runtime together. Every variant uses the dynamo exporter
(`torch.onnx.export(..., dynamo=True)`, torch.export + onnxscript's torchlib, the default since
torch 2.9; it needs the onnxscript package):

- `torch.onnx.sdpa.opset23`: F.scaled_dot_product_attention at opset 23, where the exporter
  emits the fused ONNX `Attention` op (checked in the exported graph) run by ORT's kernel
  (checked with ORT's profiler).
- `torch.onnx.sdpa.opset18`: the same call at opset 18 (torch's default export opset), which
  has no Attention op: onnxscript decomposes it into MatMul/Softmax/... .
- `torch.onnx.mha.opset18`: nn.MultiheadAttention(batch_first=True) called as users do
  (need_weights=True, the default), at the default opset 18.

An export costs seconds (torch.export, decomposition, translation), so graphs are exported
with dynamic batch/length/head sizes from fixed example shapes, once per configuration
(dtype, mask kind, flags, layer sizes), and kept in memory and in an on-disk cache keyed by
the torch/onnxscript versions (CONFORMANCE_CACHE_DIR, default ~/.cache/attention-conformance;
set it to an empty string to disable). nn.MultiheadAttention's parameters are graph inputs
(torch.func.functional_call), so one export serves every case of a configuration; a deployed
model holds them as initializers, which only lets ORT constant-fold them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    LAYER_INPUTS,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs, make_inputs
from conformance.cases.layouts import to_linear, to_linear_out, to_packed_in_proj
from conformance.cases.masks import build_mask, causal_offset, combined_additive, to_true_masked
from conformance.running import profile

from .ort_runtime import (
    NUMPY_DTYPES,
    OrtAdapter,
    OrtSession,
    open_session,
    provider_for,
    require_dtype,
    require_fused,
    require_kernel,
    write_model,
)

CACHE_VERSION = "1"  # bump when the exported modules change
FULLY_MASKED_LINK = "https://github.com/onnx/onnx/pull/8068"

# --- exporting -----------------------------------------------------------------------------


class Exporter:
    """torch.onnx.export (dynamo) with a per-process torchlib registry and an on-disk cache.

    torch is imported on the first cache miss only: a run served from the cache needs none.
    """

    def __init__(self) -> None:
        from importlib.metadata import version

        self._registries: dict[int, Any] = {}
        self._memory: dict[str, Any] = {}
        self._versions = f"torch={version('torch')};onnxscript={version('onnxscript')}"
        from conformance.running.cache import cache_dir

        self._dir = cache_dir("torch_onnx")

    def _registry(self, opset: int) -> Any:  # noqa: ANN401 - torch's ONNXRegistry
        """torch.onnx.export rebuilds the torchlib registry on every call (~5 s); build it once.

        Private API (what torch.onnx.export calls internally); None falls back to the public
        function, which gives the same graph, only slower.
        """
        if opset not in self._registries:
            try:
                from torch.onnx._internal.exporter import _constants, _registration

                version = max(opset, _constants.TORCHLIB_OPSET)
                self._registries[opset] = _registration.ONNXRegistry.from_torchlib(
                    opset_version=version
                )
            except (ImportError, AttributeError, TypeError):
                self._registries[opset] = None
        return self._registries[opset]

    def export(self, key: str, build: Callable[[], tuple], opset: int):  # noqa: ANN201
        """The ModelProto for key (from memory, disk, or exporting `build()`'s
        (module, args, dynamic_shapes))."""
        import onnx

        digest = hashlib.sha256(f"{CACHE_VERSION};{self._versions};{key}".encode()).hexdigest()
        if digest in self._memory:
            return self._memory[digest]
        path = self._dir / f"{digest[:32]}.onnx" if self._dir else None
        model = None
        started = time.perf_counter()
        if path is not None and path.exists():
            try:
                model = onnx.load(str(path))
                profile.add("cache_hits", 0.0)
            except Exception:  # noqa: BLE001 - a damaged cache entry is re-exported
                model = None
        if model is None:
            model = self._export(*build(), opset)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    onnx.save(model, str(tmp))
                    os.replace(tmp, path)
                except OSError:
                    pass  # an unwritable cache only costs time
        # One program per structure (configuration), whatever the case's sizes: exported, or
        # loaded from the disk cache (then also counted as a cache hit), as JAX's are counted.
        profile.add("compile", time.perf_counter() - started)
        self._memory[digest] = model
        return model

    def _export(self, module, args: tuple, dynamic_shapes: tuple, opset: int):  # noqa: ANN001, ANN202
        import torch

        registry = self._registry(opset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            try:
                if registry is not None:
                    from torch.onnx._internal.exporter import _core

                    program = _core.export(
                        module, args, None, registry=registry, dynamic_shapes=dynamic_shapes,
                        opset_version=opset, optimize=True, verify=False, report=False,
                    )  # fmt: skip
                else:
                    program = torch.onnx.export(
                        module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                        opset_version=opset, optimize=True, verify=False, report=False,
                    )  # fmt: skip
            finally:
                logging.disable(logging.NOTSET)
        return program.model_proto


def torch_dtype(dtype: str):  # noqa: ANN201
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}[dtype]


def _graph_ops(model) -> set[str]:  # noqa: ANN001
    return {node.op_type for node in model.graph.node}


# --- F.scaled_dot_product_attention --------------------------------------------------------


@dataclass(frozen=True)
class SdpaConfig:
    opset: int
    dtype: str
    mask: str = "none"  # "none" | "bool" | "float"
    mask_heads: bool = False  # the mask differs per head: [B, H, T, S] (else [B, 1, T, S])
    causal: bool = False
    scale: float | None = None
    gqa: tuple[int, int] | None = None  # (H, G): static head counts for enable_gqa


class TorchOnnxBase(OrtAdapter):
    def setup(self) -> None:
        super().setup()
        self._exporter = Exporter()

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import onnxscript
        import torch

        return {
            "torch": torch.__version__,
            "onnxscript": onnxscript.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        }

    def _session(self, key: Any, model, device: str, check) -> OrtSession:  # noqa: ANN001, ANN401
        return self._sessions.get((key, device), lambda: open_session(model, device, check))


class TorchOnnxSdpa(TorchOnnxBase):
    OPSET = 23

    def _module(self, cfg: SdpaConfig):  # noqa: ANN202
        import torch

        F = torch.nn.functional

        class Sdpa(torch.nn.Module):
            def forward(self, q, k, v, attn_mask=None):  # noqa: ANN001, ANN202
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, is_causal=cfg.causal, scale=cfg.scale,
                    enable_gqa=cfg.gqa is not None,
                )  # fmt: skip

        return Sdpa()

    def model(self, cfg: SdpaConfig):  # noqa: ANN201
        """Export once per configuration from example tensors with distinct sizes >= 2, every
        dimension dynamic (Dim.AUTO), so the graph serves every case of the configuration."""
        model = self._exporter.export(repr(("sdpa", cfg)), lambda: self._example(cfg), cfg.opset)
        if cfg.opset >= 23 and "Attention" not in _graph_ops(model):
            raise Unsupported(
                f"the exporter did not emit the fused Attention op at opset {cfg.opset} (graph "
                f"ops: {', '.join(sorted(_graph_ops(model)))})"
            )
        return model

    def _example(self, cfg: SdpaConfig) -> tuple:
        import torch

        dt = torch_dtype(cfg.dtype)
        h, g = cfg.gqa or (2, 2)
        args = [torch.randn(3, h, 5, 8, dtype=dt), torch.randn(3, g, 7, 8, dtype=dt)]
        args.append(torch.randn(3, g, 7, 6, dtype=dt))
        auto = torch.export.Dim.AUTO
        # Head counts stay static under enable_gqa: torchlib compares them in Python.
        dims = (0, 2, 3) if cfg.gqa else (0, 1, 2, 3)
        shapes: list = [{i: auto for i in dims} for _ in range(3)]
        if cfg.mask != "none":
            mask_shape = (3, h if cfg.mask_heads else 1, 5, 7)
            mask = torch.ones(mask_shape, dtype=torch.bool)
            if cfg.mask == "float":
                mask = torch.zeros(mask_shape, dtype=dt)
            args.append(mask)
            dynamic_heads = cfg.mask_heads and not cfg.gqa
            shapes.append({0: auto, 2: auto, 3: auto} | ({1: auto} if dynamic_heads else {}))
        return self._module(cfg), tuple(args), tuple(shapes)

    def plan(self, case: Case, inputs: CaseInputs) -> tuple[SdpaConfig, dict[str, np.ndarray]]:
        dtype = require_dtype(case, tuple(NUMPY_DTYPES), "NumPy has no bfloat16 to feed ORT")
        m = case.mask
        causal = False
        if m.causal is not None and causal_offset(case) != 0:
            raise Unsupported("is_causal is top-left only")
        if m.causal is not None and m == dataclasses.replace(Mask(), causal=m.causal):
            # SDPA forbids is_causal together with attn_mask: the flag alone, or causal goes
            # into the explicit mask with the other components.
            causal = True
            attend, bias = None, None
        else:
            attend, bias = build_mask(case)
        feeds = {n: inputs.native(n).astype(dtype, copy=False) for n in ("q", "k", "v")}
        kind = "none"
        if bias is not None:
            kind = "float"
            feeds["attn_mask"] = combined_additive(attend, bias, dtype)
        elif attend is not None:
            kind = "bool"
            feeds["attn_mask"] = np.ascontiguousarray(attend)
        heads = kind != "none" and feeds["attn_mask"].shape[1] > 1
        s = case.shape
        cfg = SdpaConfig(
            opset=self.OPSET,
            dtype=case.dtype,
            mask=kind,
            mask_heads=heads,
            causal=causal,
            scale=case.scale,
            gqa=(s.num_heads, s.num_kv_heads) if s.num_kv_heads != s.num_heads else None,
        )
        return cfg, feeds

    def path_check(self, device: str):  # noqa: ANN201
        provider, _ = provider_for(device)
        return require_fused("Attention", provider) if self.OPSET >= 23 else None

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        if self.OPSET >= 23:  # refuse before paying for an export ORT would not run fused
            require_kernel(case, "Attention", "", device, self.OPSET, "T1")
        cfg, feeds = self.plan(case, inputs)
        model = self.model(cfg)
        session = self._session(cfg, model, device, self.path_check(device))
        names = [i.name for i in model.graph.input]
        result = session.run(dict(zip(names, feeds.values(), strict=True)))
        return {"output": next(iter(result.values()))}

    def save_model(self, case: Case, directory: str | Path) -> list[Path]:
        """Write the exported ONNX model this case runs (and its inputs, .npz)."""
        cfg, feeds = self.plan(case, make_inputs(case))
        model = self.model(cfg)
        names = [i.name for i in model.graph.input]
        stem = f"{self.declaration.name}-{case.id}"
        return write_model(model, directory, stem, dict(zip(names, feeds.values(), strict=True)))


class TorchOnnxSdpa18(TorchOnnxSdpa):
    OPSET = 18


# --- nn.MultiheadAttention -----------------------------------------------------------------


@dataclass(frozen=True)
class MhaConfig:
    opset: int
    dtype: str
    embed: int
    heads: int
    kdim: int
    vdim: int
    bias: bool
    bias_kv: bool
    zero_attn: bool
    padding: bool  # key_padding_mask input (bool, True = pad)
    mask: str  # attn_mask input: "none" | "bool" (True = masked) | "float", [B*H, T, S]
    average: bool  # average_attn_weights


QKV_BIASES = (("wq", "bq"), ("wk", "bk"), ("wv", "bv"))


class TorchOnnxMha(TorchOnnxBase):
    OPSET = 18

    def _module(self, cfg: MhaConfig):  # noqa: ANN202
        import torch

        mha = torch.nn.MultiheadAttention(
            cfg.embed, cfg.heads, bias=cfg.bias, add_bias_kv=cfg.bias_kv,
            add_zero_attn=cfg.zero_attn, kdim=cfg.kdim, vdim=cfg.vdim, batch_first=True,
            dtype=torch_dtype(cfg.dtype),
        ).eval()  # fmt: skip
        names = [name for name, _ in mha.named_parameters()]

        class Layer(torch.nn.Module):
            """Calls the module as users do, its parameters swapped in from graph inputs."""

            def __init__(self) -> None:
                super().__init__()
                self.mha = mha

            def forward(self, query, key, value, params, key_padding_mask=None, attn_mask=None):  # noqa: ANN001, ANN202, E501
                return torch.func.functional_call(
                    self.mha, dict(zip(names, params, strict=True)), (query, key, value),
                    {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask,
                     "need_weights": True, "average_attn_weights": cfg.average},
                )  # fmt: skip

        return Layer(), mha, names

    def model(self, cfg: MhaConfig):  # noqa: ANN201
        return self._exporter.export(repr(("mha", cfg)), lambda: self._example(cfg), cfg.opset)

    def _example(self, cfg: MhaConfig) -> tuple:
        import torch

        dt = torch_dtype(cfg.dtype)
        layer, mha, names = self._module(cfg)
        b, t, s = 3, 5, 7
        args: list = [
            torch.randn(b, t, cfg.embed, dtype=dt),
            torch.randn(b, s, cfg.kdim, dtype=dt),
            torch.randn(b, s, cfg.vdim, dtype=dt),
            tuple(p.detach() for p in mha.parameters()),
        ]
        auto = torch.export.Dim.AUTO
        shapes: list = [{0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}]
        shapes.append(tuple(None for _ in names))
        padding = torch.zeros(b, s, dtype=torch.bool) if cfg.padding else None
        mask = None
        if cfg.mask != "none":
            shape = (b * cfg.heads, t, s)
            mask = torch.zeros(shape, dtype=torch.bool if cfg.mask == "bool" else dt)
        for value in (padding, mask):
            args.append(value)
            shapes.append(None if value is None else {i: auto for i in range(value.dim())})
        return layer, tuple(args), tuple(shapes)

    def plan(self, case: Case, inputs: CaseInputs) -> tuple[MhaConfig, list[np.ndarray]]:
        dtype = require_dtype(case, tuple(NUMPY_DTYPES), "NumPy has no bfloat16 to feed ORT")
        s, m, w = case.shape, case.mask, inputs.weights
        if s.key_dim * s.num_heads != s.query_dim or s.value_dim != s.key_dim:
            raise Unsupported(
                "nn.MultiheadAttention's head dim is embed_dim / num_heads for q, k and v"
            )
        rest = m
        padding = None
        if m.key_padding is not None:
            # True = pad, on the case's side (issue 14: left padding pads the start of the row)
            only = dataclasses.replace(case, mask=Mask(key_padding=m.key_padding,
                                                       padding_side=m.padding_side))  # fmt: skip
            padding = to_true_masked(build_mask(only)[0][:, 0, 0, :])
            side = m.padding_side if m.query_padding is not None else "right"
            rest = dataclasses.replace(rest, key_padding=None, padding_side=side)
        attend, bias = build_mask(dataclasses.replace(case, mask=rest))
        mask, kind = None, "none"
        if attend is not None or bias is not None:
            # torch's 3-D attn_mask is indexed [batch * num_heads + head, T, S]
            heads = s.num_heads
            if bias is not None:
                kind = "float"
                full = combined_additive(attend, bias, dtype)
            else:
                kind = "bool"
                full = to_true_masked(attend)
            full = np.broadcast_to(full, (s.batch, heads, s.query_len, s.kv_len))
            mask = np.ascontiguousarray(full.reshape(s.batch * heads, s.query_len, s.kv_len))
        params = self._params(case, w, dtype)
        cfg = MhaConfig(
            opset=self.OPSET,
            dtype=case.dtype,
            embed=s.query_dim,
            heads=s.num_heads,
            kdim=s.key_input_dim,
            vdim=s.value_input_dim,
            bias=case.use_bias,
            bias_kv=case.add_bias_kv,
            zero_attn=case.add_zero_attn,
            padding=padding is not None,
            mask=kind,
            average="weights_mean" in case.compare,
        )
        arrays = [inputs.native(n).astype(dtype, copy=False) for n in ("query", "key", "value")]
        arrays += params
        arrays += [a for a in (padding, mask) if a is not None]
        return cfg, arrays

    def _params(self, case: Case, w: dict, dtype: np.dtype) -> list[np.ndarray]:
        """Canonical weights in nn.MultiheadAttention's parameter order (named_parameters)."""
        s = case.shape
        bias = case.use_bias
        out: list[np.ndarray] = []
        if s.key_input_dim == s.query_dim and s.value_input_dim == s.query_dim:
            out.append(to_packed_in_proj(w["wq"], w["wk"], w["wv"])[0])  # in_proj_weight
        else:  # q_proj_weight, k_proj_weight, v_proj_weight
            out += [to_linear(w[n])[0] for n in ("wq", "wk", "wv")]
        if bias:  # in_proj_bias: q, k, v biases end to end
            out.append(np.concatenate([to_linear(w[n], w[b])[1] for n, b in QKV_BIASES]))
        if case.add_bias_kv:
            out.append(w["bias_k"].reshape(1, 1, -1))
            out.append(w["bias_v"].reshape(1, 1, -1))
        out.append(to_linear_out(w["wo"]))
        if bias:
            out.append(w["bo"])
        return [np.ascontiguousarray(a.astype(dtype)) for a in out]

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        cfg, arrays = self.plan(case, inputs)
        # average_attn_weights picks per-head or head-mean weights: one call (one exported
        # graph) each when a case compares both, as a user would make them.
        averages = [False] if "weights" in case.compare else []
        averages += [True] if "weights_mean" in case.compare else []
        out: dict[str, np.ndarray] = {}
        for average in averages or [False]:
            call = dataclasses.replace(cfg, average=average)
            model = self.model(call)
            session = self._session(call, model, device, None)
            names = [i.name for i in model.graph.input]
            result = list(session.run(dict(zip(names, arrays, strict=True))).values())
            out.setdefault("output", result[0])
            out["weights_mean" if average else "weights"] = result[1]
        return out

    def save_model(self, case: Case, directory: str | Path) -> list[Path]:
        """Write the exported ONNX model this case runs (and its inputs, .npz)."""
        cfg, arrays = self.plan(case, make_inputs(case))
        model = self.model(cfg)
        names = [i.name for i in model.graph.input]
        stem = f"{self.declaration.name}-{case.id}"
        return write_model(model, directory, stem, dict(zip(names, arrays, strict=True)))


# --- declarations ---------------------------------------------------------------------------

SDPA_FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | (EVERY_BOOLEAN_MASK - {"causal-bottom-right"})  # see SDPA_UNSUPPORTED
    | ADDITIVE_MASKS
    | {"scale"}
    # issue 14: packed segments and left padding are entries of the exported graph's
    # attn_mask (and key_padding_mask) inputs, like any other mask
    | SEGMENTS_AND_LEFT_PADDING
)
MHA_FEATURES = (
    LAYER_INPUTS
    | {"kv-len", "no-bias", "bias-kv", "zero-attn", "weights", "weights-mean"}
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    # issue 14: as in SDPA_FEATURES
    | SEGMENTS_AND_LEFT_PADDING
)
SDPA_UNSUPPORTED = {
    "causal-bottom-right": "is_causal is top-left (torch's causal_lower_right bias is not "
    "an exportable tensor argument)",
    "decode": "F.scaled_dot_product_attention has no key/value cache",
    "weights": "F.scaled_dot_product_attention returns no weights",
    "weights-mean": "F.scaled_dot_product_attention returns no weights",
    "bfloat16": "NumPy has no bfloat16 to feed ONNX Runtime",
}
MHA_UNSUPPORTED = {
    "grouped-query": "nn.MultiheadAttention has one head count for q, k and v",
    "multi-query": "nn.MultiheadAttention has one head count for q, k and v",
    "value-dim": "nn.MultiheadAttention's head dim is embed_dim / num_heads for q, k and v",
    "output-dim": "nn.MultiheadAttention's output dim is embed_dim",
    "scale": "nn.MultiheadAttention always scales by 1/sqrt(head dim)",
    "decode": "nn.MultiheadAttention has no key/value cache",
    "multi-axis": "sequence inputs only",
    "bfloat16": "NumPy has no bfloat16 to feed ONNX Runtime",
}
SCALE_LINK = (
    "https://github.com/microsoft/onnxscript/blob/main/onnxscript/function_libs/torch_lib/ops/nn.py"
)
SCALE_FLOAT32 = Divergence(
    id="torchlib-float32-scale",
    reason="onnxscript's torchlib turns SDPA's Python-float scale into a float32 constant "
    "(op.CastLike(scale, query)), so a float64 graph scales by the float32-rounded value "
    "(relative error ~1e-8 in the logits)",
    link=SCALE_LINK,
    when=frozenset({"scale"}),
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)
MHA_SCALE_FLOAT32 = Divergence(
    id="torch-export-float32-scale-constant",
    reason="multi_head_attention_forward scales q by the Python float sqrt(1/head_dim); the "
    "export stores it as a float32 scalar_tensor constant cast to the graph's dtype, so a "
    "float64 graph scales by the float32-rounded value (exact only when head_dim is a power "
    "of 4); eager torch keeps the double",
    link="https://github.com/pytorch/pytorch/blob/v2.13.0/torch/nn/functional.py#L7025",
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)
FULLY_MASKED = Divergence(
    id="torch-onnx-fully-masked-rows-zero",
    reason="the exported model is the fused ONNX Attention op, which defines a fully masked "
    "row as a zero row (as torch's own SDPA gives), not softmax's NaN",
    link=FULLY_MASKED_LINK,
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)


def _decl(name: str, summary: str, features: frozenset, **kw: Any) -> Declaration:
    return Declaration(
        name=name,
        summary=summary,
        framework="torch",
        features=features,
        dtypes=frozenset(NUMPY_DTYPES),
        requires=("torch", "onnxscript", "onnx", "onnxruntime"),
        worker="onnx",
        compiles=True,  # one torch.onnx export per structure
        **kw,
    )


TorchOnnxSdpa.declaration = _decl(
    "torch.onnx.sdpa.opset23",
    "F.scaled_dot_product_attention exported by torch.onnx.export(dynamo=True, "
    "opset_version=23) to the fused ONNX Attention op, run in ONNX Runtime",
    SDPA_FEATURES,
    divergences=(FULLY_MASKED,),
    unsupported_reasons=SDPA_UNSUPPORTED,
)
TorchOnnxSdpa18.declaration = _decl(
    "torch.onnx.sdpa.opset18",
    "F.scaled_dot_product_attention exported by torch.onnx.export(dynamo=True, "
    "opset_version=18): decomposed by onnxscript, run in ONNX Runtime",
    SDPA_FEATURES,
    # No fully-masked-row divergence: a -inf float mask gives NaN like the reference, and a
    # boolean one gives the mean of V (a fail, see docs/adapters/onnx.md).
    divergences=(SCALE_FLOAT32,),
    unsupported_reasons=SDPA_UNSUPPORTED,
)
TorchOnnxMha.declaration = _decl(
    "torch.onnx.mha.opset18",
    "nn.MultiheadAttention(batch_first=True, need_weights=True) exported by "
    "torch.onnx.export(dynamo=True, opset_version=18), run in ONNX Runtime",
    MHA_FEATURES,
    divergences=(MHA_SCALE_FLOAT32,),
    unsupported_reasons=MHA_UNSUPPORTED,
)

ADAPTERS = [TorchOnnxSdpa, TorchOnnxSdpa18, TorchOnnxMha]
