"""`openvino.torch.onnx.mha.<hint>`: the ONNX graph torch.onnx exports for nn.MultiheadAttention,
read by OpenVINO's ONNX frontend and run by its CPU plugin.

The graph is exactly the one `torch.onnx.mha.opset18` hands ONNX Runtime (adapters/torch_onnx.py:
nn.MultiheadAttention(batch_first=True) called with need_weights=True, exported by
torch.onnx.export(dynamo=True, opset_version=18) with dynamic batch and lengths, its parameters
as graph inputs, one export per configuration, kept in memory and in the same on-disk cache), so
the two adapters differ only in the runtime. `core.read_model(model bytes)` goes through
OpenVINO's ONNX frontend; the compiled model runs on the CPU plugin.

The precision hint is part of the adapter identity, as for openvino.sdpa.*:

- `openvino.torch.onnx.mha.f32`      compile_model(..., {"INFERENCE_PRECISION_HINT": "f32"})
- `openvino.torch.onnx.mha.default`  compile_model(...) with no hint: the plugin's default
                                     (bf16 on CPUs with native bfloat16, f32 elsewhere)

Path proof: the exported graph is opset 18 with MatMul and Softmax nodes (the decomposition
torch.export + onnxscript write for multi_head_attention_forward; no fused Attention op); the
model OpenVINO read holds Softmax and MatMul ops; the compiled model reports the asked-for
precision hint. torch (for a cache miss), onnx and openvino are imported lazily.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .openvino_sdpa import DEFAULT_BF16, F64_AS_F32, OV_HINT_DOC
from .ort_runtime import SessionCache
from .torch_onnx import MHA_FEATURES, MHA_UNSUPPORTED, Exporter, TorchOnnxMha, _graph_ops

REQUIRES = ("openvino", "torch", "onnxscript", "onnx")


class HintedOvSession:
    """A compiled OpenVINO model (ONNX frontend, CPU) answering run(feeds) like OrtSession."""

    def __init__(self, core: Any, model: Any, hint: str | None) -> None:  # noqa: ANN401
        ops = _graph_ops(model)
        if "Attention" in ops or not {"MatMul", "Softmax"} <= ops:
            raise RuntimeError(f"the exported graph is not the decomposed MHA: {sorted(ops)}")
        read = core.read_model(model.SerializeToString(), b"")
        types = {op.get_type_name() for op in read.get_ops()}
        if not {"MatMul", "Softmax"} <= types:
            raise RuntimeError(f"OpenVINO's ONNX frontend read no MatMul/Softmax: {sorted(types)}")
        config = {} if hint is None else {"INFERENCE_PRECISION_HINT": hint}
        self.compiled = core.compile_model(read, "CPU", config)
        got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if hint is not None and hint not in got and got != "<Type: 'float32'>":
            raise RuntimeError(f"compiled with precision {got}, not {hint}")
        self.precision = got
        self.names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.compiled(feeds)
        return {name: np.asarray(result[i]) for i, name in enumerate(self.names)}


class OpenvinoTorchOnnxMha(TorchOnnxMha):
    hint: ClassVar[str | None] = "f32"

    def setup(self) -> None:
        import onnx  # noqa: F401
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self._sessions = SessionCache()
        self._exporter = Exporter()

    def devices(self) -> list[str]:
        return ["cpu"]

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        hint = self.core.get_property("CPU", "INFERENCE_PRECISION_HINT")
        return {
            "openvino": self.ov.__version__,
            "cpu-default-precision-hint": str(hint),
            **{name: version(name) for name in ("torch", "onnxscript", "onnx")},
        }

    def _session(self, key: Any, model: Any, device: str, check: Any) -> HintedOvSession:  # noqa: ANN401
        return self._sessions.get(
            (key, device), lambda: HintedOvSession(self.core, model, self.hint)
        )

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        return super().run(case, inputs, device)


def _make(hint: str | None, divergences: tuple[Divergence, ...]) -> type[OpenvinoTorchOnnxMha]:
    label = hint or "default"
    name = f"OpenvinoTorchOnnxMha{label.capitalize()}"
    declaration = Declaration(
        name=f"openvino.torch.onnx.mha.{label}",
        summary="nn.MultiheadAttention(batch_first=True, need_weights=True) exported by "
        "torch.onnx.export(dynamo=True, opset_version=18), read by OpenVINO's ONNX frontend, "
        "CPU plugin, " + (f"INFERENCE_PRECISION_HINT={hint}" if hint else "default precision hint"),
        framework="openvino",
        features=MHA_FEATURES,
        dtypes=frozenset({"float32", "float64", "float16"}),
        requires=REQUIRES,
        worker="openvino",
        divergences=divergences,
        unsupported_reasons={**MHA_UNSUPPORTED, "bfloat16": "NumPy has no bfloat16 to feed"},
        compiles=True,  # one torch.onnx export per structure (shared cache with torch.onnx.mha)
        notes="The same exported graph, inputs and export cache as torch.onnx.mha.opset18; only "
        "the runtime differs. Path: decomposed opset-18 graph (MatMul/Softmax, no Attention op), "
        "read by OpenVINO's ONNX frontend, compiled precision hint checked.",
    )
    return type(
        name,
        (OpenvinoTorchOnnxMha,),
        {"hint": hint, "declaration": declaration, "__module__": __name__, "__qualname__": name},
    )


def _rows_float64(compute_dtype: str) -> Divergence:
    """Measured (OpenVINO 2026.4.1 CPU): a fully masked row of the float64 graph comes out as
    the mean of the values, while the float32/float16 graphs give softmax's NaN like eager torch.
    The exported mask is -inf (torch's _canonical_mask) in the graph's dtype; OpenVINO converts
    the f64 model to f32 at compile time, and the row ends up finite and uniform."""
    return Divergence(
        id=f"openvino-torch-onnx-mha-masked-rows-uniform-float64-{compute_dtype}",
        reason="in float64 a query row whose every key is masked comes out as the mean of the "
        "values (uniform weights), not the NaN the float32 graph gives; the f64 model is "
        f"converted to f32 when compiled, and computed in {compute_dtype}",
        link=OV_HINT_DOC,
        when=frozenset({"fully-masked-rows"}),
        dtypes=frozenset({"float64"}),
        masked_rows="uniform",
        compute_dtype=compute_dtype,
    )


OpenvinoTorchOnnxMhaF32 = _make("f32", (_rows_float64("float32"), F64_AS_F32))
OpenvinoTorchOnnxMhaDefault = _make(None, (_rows_float64("bfloat16"), DEFAULT_BF16))

ADAPTERS = [OpenvinoTorchOnnxMhaF32, OpenvinoTorchOnnxMhaDefault]
