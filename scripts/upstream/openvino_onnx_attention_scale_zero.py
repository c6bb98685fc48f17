"""OpenVINO ONNX frontend: an explicit scale=0.0 on the ONNX Attention operator (opset 23) is
ignored and the default 1/sqrt(head_size) is used; onnx.reference honours it (uniform weights).
Run: python this_file.py
"""

import numpy as np
import onnx
import openvino as ov
import openvino.opset13 as ops
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator


def attention_model(**attrs):
    dims = {"Q": ["B", 1, "T", 4], "K": ["B", 1, "S", 4], "V": ["B", 1, "S", 4]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in dims.items()]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], **attrs)
    graph = helper.make_graph([node], "attention", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def reference(q, k, v, scale):
    w = scale * (q.astype(np.float64) @ k.transpose(0, 1, 3, 2).astype(np.float64))
    w = np.exp(w - w.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 1, s, 4)).astype(np.float32) for s in (2, 3, 3))
core = ov.Core()
config = {"INFERENCE_PRECISION_HINT": "f32"}
got = {}
for scale in (None, 0.5, 0.0):  # None: no attribute, the default 1/sqrt(4) = 0.5
    model = attention_model() if scale is None else attention_model(scale=scale)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
    got[scale] = compiled([q, k, v])[0]
    want = reference(q, k, v, 0.5 if scale is None else scale)
    onnx_ref = ReferenceEvaluator(model).run(None, {"Q": q, "K": k, "V": v})[0]
    print(
        f"ONNX Attention scale={scale}: max abs error {np.abs(got[scale] - want).max():.2e} "
        f"(onnx.reference: {np.abs(onnx_ref - want).max():.2e})"
    )
print(
    "OpenVINO's scale=0.0 output equals its no-scale output:", np.array_equal(got[0.0], got[None])
)

# The op itself honours scale 0: ScaledDotProductAttention built directly.
p = [ops.parameter([-1, 1, -1, 4], ov.Type.f32, name=n) for n in "qkv"]
zero = ops.constant(np.float32(0.0))
sdpa = ov.Model([ops.scaled_dot_product_attention(*p, zero, zero, causal=False)], p)
out = core.compile_model(sdpa, "CPU", config)([q, k, v])[0]
print(
    f"opset13 ScaledDotProductAttention scale=0: max abs error "
    f"{np.abs(out - reference(q, k, v, 0.0)).max():.2e}"
)
print("openvino", ov.get_version(), "onnx", onnx.__version__)
