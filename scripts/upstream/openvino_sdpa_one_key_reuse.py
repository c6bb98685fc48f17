"""OpenVINO CPU plugin: a dynamic-shape ScaledDotProductAttention model first inferred with one
key (S = 1) gives wrong results when it is later inferred with S >= 16. Run: python this_file.py
"""

import numpy as np
import openvino as ov
import openvino.opset13 as ops

q, k, v = (ops.parameter([-1, 4, -1, 4], ov.Type.f32, name=n) for n in "qkv")
model = ov.Model([ops.scaled_dot_product_attention(q, k, v, None, None, causal=False)], [q, k, v])


def reference(x):
    w = x[0].astype(np.float64) @ x[1].transpose(0, 1, 3, 2).astype(np.float64) / 2
    w = np.exp(w - w.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ x[2]


rng = np.random.default_rng(0)
for order in ((16,), (1, 16), (2, 16)):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for s in order:
        x = [rng.standard_normal((2, 4, s, 4)).astype(np.float32) for _ in range(3)]
        err = np.abs(compiled(x)[0] - reference(x)).max()
    print(f"fresh model, S sequence {order}: max abs error at S = {order[-1]}: {err:.2e}")
print("openvino", ov.get_version())
