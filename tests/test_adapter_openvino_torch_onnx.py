"""openvino.torch.onnx.mha.*: the graph torch.onnx exports for nn.MultiheadAttention, read by
OpenVINO's ONNX frontend. Real verdicts on shipped cases, the export shared with
torch.onnx.mha.opset18 (one export, one cache), the path checks.

The default-hint adapter's verdict depends on the CPU (bf16 only where the CPU has native
bfloat16), so only the f32 adapter's verdicts are asserted; the default one must not error.
"""

from __future__ import annotations

import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
pytest.importorskip("torch")

from conformance.cases.case import Case  # noqa: E402
from conformance.spec import load_spec, shipped_specs_dir  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

CACHE = ReferenceCache()


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    specs = shipped_specs_dir()
    return {c.id: c for name in ("basic", "masks") for c in load_spec(specs / f"{name}.yaml")}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CONFORMANCE_CACHE_DIR")
    os.environ["CONFORMANCE_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("CONFORMANCE_CACHE_DIR")
    else:
        os.environ["CONFORMANCE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def adapters(cache_root):
    from conformance.adapters.openvino_torch_onnx import (
        OpenvinoTorchOnnxMhaDefault,
        OpenvinoTorchOnnxMhaF32,
    )

    found = {"f32": OpenvinoTorchOnnxMhaF32(), "default": OpenvinoTorchOnnxMhaDefault()}
    for adapter in found.values():
        adapter.setup()
    return found


def test_f32_passes_float32_layer_cases(adapters, cases) -> None:
    for case_id in (
        "basic/layer[T=6,H=4,float32]",
        "masks/causal-bottom-right-layer[T=5,S=7,float32]",
    ):
        record = evaluate(adapters["f32"], cases[case_id], "cpu", CACHE)
        assert record["verdict"] == "pass", record.get("message")
        assert evaluate(adapters["default"], cases[case_id], "cpu", CACHE)["verdict"] != "error"


def test_float64_fully_masked_rows_are_uniform(adapters, cases) -> None:
    record = evaluate(adapters["f32"], cases["masks/query-padding-layer[float64]"], "cpu", CACHE)
    assert record["verdict"] == "diverges", record.get("message")
    assert record["divergence"]["id"].startswith("openvino-torch-onnx-mha-masked-rows-uniform")


def test_export_is_shared_with_torch_onnx_mha(adapters, cases, cache_root) -> None:
    """One export per configuration for both runtimes: the ORT adapter's export of the same
    configuration is a disk-cache hit written by the OpenVINO adapter's run (or vice versa)."""
    from conformance.adapters.torch_onnx import TorchOnnxMha

    from conformance.cases.inputs import make_inputs

    case = cases["basic/layer[T=6,H=4,float64]"]
    evaluate(adapters["f32"], case, "cpu", CACHE)
    exported = sorted((cache_root / "torch_onnx").glob("*.onnx"))
    assert exported
    ort = TorchOnnxMha()
    ort.setup()
    cfg, _ = ort.plan(case, make_inputs(case))
    ort.model(cfg)
    assert sorted((cache_root / "torch_onnx").glob("*.onnx")) == exported


def test_path_check_refuses_a_fused_graph() -> None:
    from conformance.adapters.openvino_torch_onnx import HintedOvSession
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    with pytest.raises(RuntimeError, match="not the decomposed MHA"):
        HintedOvSession(None, helper.make_model(graph), "f32")
